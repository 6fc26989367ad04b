// FP8 E4M3 per-tensor encode/decode in ModelOpt's "FP8" layout (see fp8.h):
//
//   weight        F8_E4M3 [rows, cols]
//   weight_scale  F32     []  (shape [1] also accepted by decode)
//
// E4M3 conversion is round-to-nearest-even with saturation to ±448 (lib/numeric/codecs.h).
// Scale: amax / 448; an all-zero tensor (or one whose amax / 448 underflows to 0) stores 1.
#include "lib/quant/fp8.h"

#include <cmath>

#include "lib/common/error.h"
#include "lib/numeric/codecs.h"
#include "lib/quant/quant_common.h"

namespace mpq {

using namespace quant_detail;  // lib/quant/quant_common.h

constexpr const char* kFormat = "fp8";

float fp8_tensor_scale(float amax) {
  const float scale = amax / kE4M3Max;
  return scale > 0.0f ? scale : 1.0f;
}

const FormatInfo& Fp8Quantizer::info() const { return format_info(kFormat); }

std::vector<PackedPart> Fp8Quantizer::layout(int64_t rows, int64_t cols) const {
  check_shape(kFormat, rows, cols);
  return {{"weight", DType::F8_E4M3, {rows, cols}, {}},
          {"weight_scale", DType::F32, {}, {}}};
}

PackedTensor Fp8Quantizer::encode(const std::string& name, const float* w, int64_t rows,
                                  int64_t cols) const {
  return encode_with_amax(name, w, rows, cols, checked_amax(name, w, rows, cols));
}

PackedTensor Fp8Quantizer::encode_with_amax(const std::string& name, const float* w, int64_t rows,
                                            int64_t cols, float tensor_amax) const {
  check_tensor_amax(name, checked_amax(name, w, rows, cols), tensor_amax);
  const float scale = fp8_tensor_scale(tensor_amax);

  PackedTensor out = packed_from_layout(kFormat, rows, cols, layout(rows, cols));
  PackedPart& wq = out.parts[0];  // weight
  PackedPart& st = out.parts[1];  // weight_scale
  store_f32_le(scale, st.bytes.data());

  uint8_t* q = wq.bytes.data();
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) q[r * cols + c] = fp32_to_e4m3(w[r * cols + c] / scale);
  return out;
}

void Fp8Quantizer::decode(const PackedTensor& p, float* out) const {
  const std::vector<const PackedPart*> parts = checked_parts(*this, p);
  const PackedPart& wq = *parts[0];  // weight        [rows, cols]
  const PackedPart& st = *parts[1];  // weight_scale  [] or [1]
  const int64_t rows = p.rows;
  const int64_t cols = p.cols;
  const float scale = load_f32_le(st.bytes.data());
  if (!std::isfinite(scale) || scale < 0.0f)
    throw Error(ExitCode::kInput, std::string(kFormat) + " tensor [" + std::to_string(rows) +
                                      " x " + std::to_string(cols) + "]: weight_scale is " +
                                      std::to_string(scale) + ", expected a finite value >= 0");
  const uint8_t* q = wq.bytes.data();
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = e4m3_to_fp32(q[r * cols + c]) * scale;
}

}  // namespace mpq
