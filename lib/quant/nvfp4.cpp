// NVFP4 encode/decode in ModelOpt's layout; the byte layout is documented in nvfp4.h.
//
//   weight          U8      [rows, ceil(cols/16) * 8]  element 2k -> low nibble of byte k
//   weight_scale    F8_E4M3 [rows, ceil(cols/16)]      one E4M3 scale per 16 elements
//   weight_scale_2  F32     []  (shape [1] also accepted by decode)
//
// Rounding: E4M3 and E2M1 conversions are round-to-nearest-even with saturation
// (lib/numeric/codecs.h), as ModelOpt's fp8 cast and its E2M1 thresholds
// (<=0.25, <0.75, <=1.25, <1.75, <=2.5, <3.5, <=5 -> 0, .5, 1, 1.5, 2, 3, 4, else 6) do.
// Negative weights that round to zero keep their sign (nibble 0x8 = -0).
#include "lib/quant/nvfp4.h"

#include <algorithm>
#include <cmath>

#include "lib/common/error.h"
#include "lib/numeric/codecs.h"
#include "lib/quant/quant_common.h"

namespace mpq {

using namespace quant_detail;  // lib/quant/quant_common.h

constexpr const char* kFormat = "nvfp4";

float nvfp4_scale_2(float amax) { return amax / (6.0f * kE4M3Max); }

uint8_t nvfp4_block_scale(float block_amax, float s2) {
  const float denom = 6.0f * s2;  // block scale = block_amax / (6 * s2), as ModelOpt computes it
  return denom > 0.0f ? fp32_to_e4m3(block_amax / denom) : uint8_t{0};
}

void nvfp4_encode_block(const float* w, int64_t n, float scale, uint8_t* dst) {
  std::fill(dst, dst + kNvfp4BlockSize / 2, uint8_t{0});
  if (!(scale > 0.0f)) return;  // zero scale: all codes stay 0 (decode gives 0)
  for (int64_t c = 0; c < n; ++c) {
    const uint8_t code = fp32_to_e2m1(w[c] / scale);
    dst[c >> 1] |= static_cast<uint8_t>(code << ((c & 1) * 4));
  }
}

const FormatInfo& Nvfp4Quantizer::info() const { return format_info(kFormat); }

std::vector<PackedPart> Nvfp4Quantizer::layout(int64_t rows, int64_t cols) const {
  check_shape(kFormat, rows, cols);
  const int64_t nb = (cols + kNvfp4BlockSize - 1) / kNvfp4BlockSize;  // blocks per row
  const int64_t row_bytes = nb * (kNvfp4BlockSize / 2);               // two codes per byte
  return {{"weight", DType::U8, {rows, row_bytes}, {}},
          {"weight_scale", DType::F8_E4M3, {rows, nb}, {}},
          {"weight_scale_2", DType::F32, {}, {}}};
}

PackedTensor Nvfp4Quantizer::encode(const std::string& name, const float* w, int64_t rows,
                                    int64_t cols) const {
  return encode_with_amax(name, w, rows, cols, checked_amax(name, w, rows, cols));
}

PackedTensor Nvfp4Quantizer::encode_with_amax(const std::string& name, const float* w, int64_t rows,
                                              int64_t cols, float tensor_amax) const {
  check_tensor_amax(name, checked_amax(name, w, rows, cols), tensor_amax);
  const float s2 = nvfp4_scale_2(tensor_amax);

  PackedTensor out = packed_from_layout(kFormat, rows, cols, layout(rows, cols));
  PackedPart& wq = out.parts[0];  // weight          [rows, row_bytes]
  PackedPart& sc = out.parts[1];  // weight_scale    [rows, nb]
  PackedPart& st = out.parts[2];  // weight_scale_2  []
  const int64_t row_bytes = wq.shape[1];
  const int64_t nb = sc.shape[1];
  store_f32_le(s2, st.bytes.data());

  uint8_t* q = wq.bytes.data();
  uint8_t* s = sc.bytes.data();
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const float* wr = w + r * cols;
    uint8_t* qr = q + r * row_bytes;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t c0 = b * kNvfp4BlockSize;
      const int64_t c1 = std::min(cols, c0 + kNvfp4BlockSize);
      float bamax = 0.0f;
      for (int64_t c = c0; c < c1; ++c) bamax = std::max(bamax, std::fabs(wr[c]));
      const uint8_t sb = nvfp4_block_scale(bamax, s2);
      s[r * nb + b] = sb;
      nvfp4_encode_block(wr + c0, c1 - c0, e4m3_to_fp32(sb) * s2, qr + b * (kNvfp4BlockSize / 2));
    }
  }
  return out;
}

void Nvfp4Quantizer::decode(const PackedTensor& p, float* out) const {
  const std::vector<const PackedPart*> parts = checked_parts(*this, p);
  const PackedPart& wq = *parts[0];  // weight          [rows, row_bytes]
  const PackedPart& sc = *parts[1];  // weight_scale    [rows, nb]
  const PackedPart& st = *parts[2];  // weight_scale_2  [] or [1]
  const int64_t rows = p.rows;
  const int64_t cols = p.cols;
  const int64_t row_bytes = wq.shape[1];
  const int64_t nb = sc.shape[1];
  const float s2 = load_f32_le(st.bytes.data());
  const std::string what = std::string(kFormat) + " tensor [" + std::to_string(rows) + " x " +
                           std::to_string(cols) + "]";
  if (!std::isfinite(s2) || s2 < 0.0f)
    throw Error(ExitCode::kInput, what + ": weight_scale_2 is " + std::to_string(s2) +
                                      ", expected a finite value >= 0");
  const uint8_t* q = wq.bytes.data();
  const uint8_t* s = sc.bytes.data();
  for (std::size_t i = 0; i < sc.bytes.size(); ++i)
    if ((s[i] & 0x7F) == 0x7F)
      throw Error(ExitCode::kInput, what + ": weight_scale holds NaN at flat index " +
                                        std::to_string(i));
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* qr = q + r * row_bytes;
    float* orow = out + r * cols;
    for (int64_t b = 0; b < nb; ++b) {
      const float sb = e4m3_to_fp32(s[r * nb + b]);
      const int64_t c1 = std::min(cols, (b + 1) * kNvfp4BlockSize);
      for (int64_t c = b * kNvfp4BlockSize; c < c1; ++c) {
        const uint8_t code = static_cast<uint8_t>((qr[c >> 1] >> ((c & 1) * 4)) & 0xF);
        orow[c] = e2m1_to_fp32(code) * sb * s2;  // e2m1 * sb is exact; one rounding at * s2
      }
    }
  }
}

}  // namespace mpq
