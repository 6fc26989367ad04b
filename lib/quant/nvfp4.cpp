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
#include <cstring>
#include <limits>

#include "lib/common/error.h"
#include "lib/numeric/codecs.h"

namespace mpq {
namespace {

constexpr const char* kFormat = "nvfp4";

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

/// Throws Error(kInput) unless rows, cols >= 0 and the packed sizes fit in int64/size_t.
void check_shape(const std::string& what, int64_t rows, int64_t cols) {
  // The largest buffer is the fp32 tensor itself: rows * cols * 4 bytes.
  const int64_t limit = std::numeric_limits<int64_t>::max() / 8;
  if (rows < 0 || cols < 0 || (rows > 0 && cols > limit / rows))
    throw Error(ExitCode::kInput, what + ": invalid shape [" + std::to_string(rows) + ", " +
                                      std::to_string(cols) + "]");
}

/// Throws Error(kInput) "<name>: NaN at index (r, c)" for the first non-finite element.
void check_finite(const std::string& name, const float* w, int64_t rows, int64_t cols) {
  int64_t first_bad = std::numeric_limits<int64_t>::max();
#pragma omp parallel for schedule(static) reduction(min : first_bad)
  for (int64_t r = 0; r < rows; ++r) {
    const float* wr = w + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      if (!std::isfinite(wr[c])) {
        first_bad = std::min(first_bad, r * cols + c);
        break;
      }
    }
  }
  if (first_bad == std::numeric_limits<int64_t>::max()) return;
  const float v = w[first_bad];
  throw Error(ExitCode::kInput, name + ": " + (std::isnan(v) ? "NaN" : "Inf") + " at index (" +
                                    std::to_string(first_bad / cols) + ", " +
                                    std::to_string(first_bad % cols) + ")");
}

void store_f32_le(float v, uint8_t* dst) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  for (int i = 0; i < 4; ++i) dst[i] = static_cast<uint8_t>(u >> (8 * i));
}

float load_f32_le(const uint8_t* src) {
  uint32_t u = 0;
  for (int i = 0; i < 4; ++i) u |= static_cast<uint32_t>(src[i]) << (8 * i);
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}

/// Checks a part's dtype, shape (one of `shapes`) and byte count; throws Error(kInput).
const PackedPart& checked_part(const PackedTensor& p, const std::string& suffix, DType dtype,
                               const std::vector<std::vector<int64_t>>& shapes) {
  const std::string what = std::string(kFormat) + " tensor [" + std::to_string(p.rows) + " x " +
                           std::to_string(p.cols) + "]: part '" + suffix + "'";
  const PackedPart& part = p.part(suffix);
  if (part.dtype != dtype)
    throw Error(ExitCode::kInput, what + " has dtype " + dtype_name(part.dtype) + ", expected " +
                                      dtype_name(dtype));
  if (std::find(shapes.begin(), shapes.end(), part.shape) == shapes.end())
    throw Error(ExitCode::kInput,
                what + " has shape " + shape_str(part.shape) + ", expected " + shape_str(shapes[0]));
  std::size_t n = dtype_size(dtype);
  for (int64_t d : shapes[0]) n *= static_cast<std::size_t>(d);
  if (part.bytes.size() != n)
    throw Error(ExitCode::kInput, what + " holds " + std::to_string(part.bytes.size()) +
                                      " bytes, expected " + std::to_string(n));
  return part;
}

}  // namespace

const FormatInfo& Nvfp4Quantizer::info() const {
  for (const FormatInfo& f : format_table())
    if (std::strcmp(f.name, kFormat) == 0) return f;
  MPQ_ASSERT(!"nvfp4 missing from format_table()");
  std::abort();
}

std::size_t Nvfp4Quantizer::bytes(int64_t rows, int64_t cols) const {
  check_shape(kFormat, rows, cols);
  const auto nb = static_cast<std::size_t>((cols + kNvfp4BlockSize - 1) / kNvfp4BlockSize);
  const auto r = static_cast<std::size_t>(rows);
  return r * nb * (kNvfp4BlockSize / 2) + r * nb + sizeof(float);
}

PackedTensor Nvfp4Quantizer::encode(const std::string& name, const float* w, int64_t rows,
                                    int64_t cols) const {
  check_shape(name, rows, cols);
  check_finite(name, w, rows, cols);
  const int64_t nb = (cols + kNvfp4BlockSize - 1) / kNvfp4BlockSize;
  const int64_t row_bytes = nb * (kNvfp4BlockSize / 2);

  float amax = 0.0f;
#pragma omp parallel for schedule(static) reduction(max : amax)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));

  const float s2 = amax / (6.0f * kE4M3Max);
  const float denom = 6.0f * s2;  // block scale = block_amax / (6 * s2), as ModelOpt computes it

  PackedTensor out;
  out.format = kFormat;
  out.rows = rows;
  out.cols = cols;
  out.parts.resize(3);
  PackedPart& wq = out.parts[0];
  PackedPart& sc = out.parts[1];
  PackedPart& st = out.parts[2];
  wq = {"weight", DType::U8, {rows, row_bytes},
        std::vector<uint8_t>(static_cast<std::size_t>(rows * row_bytes), 0)};
  sc = {"weight_scale", DType::F8_E4M3, {rows, nb},
        std::vector<uint8_t>(static_cast<std::size_t>(rows * nb), 0)};
  st = {"weight_scale_2", DType::F32, {}, std::vector<uint8_t>(sizeof(float), 0)};
  store_f32_le(s2, st.bytes.data());

  uint8_t* q = wq.bytes.data();
  uint8_t* s = sc.bytes.data();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* wr = w + r * cols;
    uint8_t* qr = q + r * row_bytes;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t c0 = b * kNvfp4BlockSize;
      const int64_t c1 = std::min(cols, c0 + kNvfp4BlockSize);
      float bamax = 0.0f;
      for (int64_t c = c0; c < c1; ++c) bamax = std::max(bamax, std::fabs(wr[c]));
      const uint8_t sb = denom > 0.0f ? fp32_to_e4m3(bamax / denom) : uint8_t{0};
      s[r * nb + b] = sb;
      const float scale = e4m3_to_fp32(sb) * s2;
      if (!(scale > 0.0f)) continue;  // zero scale: all codes stay 0 (decode gives 0)
      for (int64_t c = c0; c < c1; ++c) {
        const uint8_t code = fp32_to_e2m1(wr[c] / scale);
        qr[c >> 1] |= static_cast<uint8_t>(code << ((c & 1) * 4));
      }
    }
  }
  return out;
}

void Nvfp4Quantizer::decode(const PackedTensor& p, float* out) const {
  if (p.format != kFormat)
    throw Error(ExitCode::kInput, "nvfp4 decoder given a '" + p.format + "' tensor");
  check_shape(std::string(kFormat) + " tensor", p.rows, p.cols);
  const int64_t rows = p.rows;
  const int64_t cols = p.cols;
  const int64_t nb = (cols + kNvfp4BlockSize - 1) / kNvfp4BlockSize;
  const int64_t row_bytes = nb * (kNvfp4BlockSize / 2);
  const PackedPart& wq = checked_part(p, "weight", DType::U8, {{rows, row_bytes}});
  const PackedPart& sc = checked_part(p, "weight_scale", DType::F8_E4M3, {{rows, nb}});
  const PackedPart& st = checked_part(p, "weight_scale_2", DType::F32, {{}, {1}});
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
#pragma omp parallel for schedule(static)
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
