// FP8 E4M3 per-tensor encode/decode in ModelOpt's "FP8" layout (see fp8.h):
//
//   weight        F8_E4M3 [rows, cols]
//   weight_scale  F32     []  (shape [1] also accepted by decode)
//
// E4M3 conversion is round-to-nearest-even with saturation to ±448 (lib/numeric/codecs.h).
// Scale: amax / 448; an all-zero tensor (or one whose amax / 448 underflows to 0) stores 1.
#include "lib/quant/fp8.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "lib/common/error.h"
#include "lib/numeric/codecs.h"

namespace mpq {
namespace {

constexpr const char* kFormat = "fp8";

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

/// Throws Error(kInput) unless rows, cols >= 0 and rows * cols * 8 fits in int64.
void check_shape(const std::string& what, int64_t rows, int64_t cols) {
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

const FormatInfo& Fp8Quantizer::info() const {
  for (const FormatInfo& f : format_table())
    if (std::strcmp(f.name, kFormat) == 0) return f;
  MPQ_ASSERT(!"fp8 missing from format_table()");
  std::abort();
}

std::size_t Fp8Quantizer::bytes(int64_t rows, int64_t cols) const {
  check_shape(kFormat, rows, cols);
  return static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols) + sizeof(float);
}

PackedTensor Fp8Quantizer::encode(const std::string& name, const float* w, int64_t rows,
                                  int64_t cols) const {
  check_shape(name, rows, cols);
  check_finite(name, w, rows, cols);

  float amax = 0.0f;
#pragma omp parallel for schedule(static) reduction(max : amax)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
  float scale = amax / kE4M3Max;
  if (!(scale > 0.0f)) scale = 1.0f;

  PackedTensor out;
  out.format = kFormat;
  out.rows = rows;
  out.cols = cols;
  out.parts.resize(2);
  PackedPart& wq = out.parts[0];
  PackedPart& st = out.parts[1];
  wq = {"weight", DType::F8_E4M3, {rows, cols},
        std::vector<uint8_t>(static_cast<std::size_t>(rows * cols), 0)};
  st = {"weight_scale", DType::F32, {}, std::vector<uint8_t>(sizeof(float), 0)};
  store_f32_le(scale, st.bytes.data());

  uint8_t* q = wq.bytes.data();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) q[r * cols + c] = fp32_to_e4m3(w[r * cols + c] / scale);
  return out;
}

void Fp8Quantizer::decode(const PackedTensor& p, float* out) const {
  if (p.format != kFormat)
    throw Error(ExitCode::kInput, "fp8 decoder given a '" + p.format + "' tensor");
  check_shape(std::string(kFormat) + " tensor", p.rows, p.cols);
  const int64_t rows = p.rows;
  const int64_t cols = p.cols;
  const PackedPart& wq = checked_part(p, "weight", DType::F8_E4M3, {{rows, cols}});
  const PackedPart& st = checked_part(p, "weight_scale", DType::F32, {{}, {1}});
  const float scale = load_f32_le(st.bytes.data());
  if (!std::isfinite(scale) || scale < 0.0f)
    throw Error(ExitCode::kInput, std::string(kFormat) + " tensor [" + std::to_string(rows) +
                                      " x " + std::to_string(cols) + "]: weight_scale is " +
                                      std::to_string(scale) + ", expected a finite value >= 0");
  const uint8_t* q = wq.bytes.data();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = e4m3_to_fp32(q[r * cols + c]) * scale;
}

}  // namespace mpq
