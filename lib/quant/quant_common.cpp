// Internal helpers shared by the quantizers (see quant_common.h).
#include "lib/quant/quant_common.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "lib/common/error.h"

namespace mpq {
namespace quant_detail {

void check_shape(const std::string& what, int64_t rows, int64_t cols) {
  const int64_t limit = std::numeric_limits<int64_t>::max() / 8;
  if (rows < 0 || cols < 0 || (rows > 0 && cols > limit / rows))
    throw Error(ExitCode::kInput, what + ": invalid shape [" + std::to_string(rows) + ", " +
                                      std::to_string(cols) + "]");
}

void check_finite(const std::string& name, const float* w, int64_t rows, int64_t cols) {
  int64_t first_bad = std::numeric_limits<int64_t>::max();
#pragma omp parallel for schedule(static) reduction(min : first_bad) if (rows * cols >= kParallelMin)
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

float checked_amax(const std::string& name, const float* w, int64_t rows, int64_t cols) {
  check_shape(name, rows, cols);
  check_finite(name, w, rows, cols);
  float amax = 0.0f;
#pragma omp parallel for schedule(static) reduction(max : amax) if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
  return amax;
}

void check_sensitivity(const std::string& name, const float* fisher, int64_t rows, int64_t cols) {
  if (!fisher) return;
  const int64_t n = rows * cols;
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(fisher[i]) || fisher[i] < 0.0f)
      throw Error(ExitCode::kInput, name + ": Fisher sensitivity " + std::to_string(fisher[i]) +
                                        " at index (" + std::to_string(i / cols) + ", " +
                                        std::to_string(i % cols) + "), expected finite >= 0");
}

void check_tensor_amax(const std::string& name, float amax, float tensor_amax) {
  if (!std::isfinite(tensor_amax) || tensor_amax < amax)
    throw Error(ExitCode::kInternal, name + ": shared tensor amax " + std::to_string(tensor_amax) +
                                         " below the tensor's own amax " + std::to_string(amax));
}

uint64_t splitmix64_next(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

const FormatInfo& format_info(const char* format) {
  for (const FormatInfo& f : format_table())
    if (std::strcmp(f.name, format) == 0) return f;
  MPQ_ASSERT(!"a quantizer's format is missing from format_table()");
  std::abort();
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

std::size_t part_bytes(const PackedPart& part) {
  std::size_t n = dtype_size(part.dtype);
  for (int64_t d : part.shape) n *= static_cast<std::size_t>(d);
  return n;
}

std::size_t layout_bytes(const std::vector<PackedPart>& layout) {
  std::size_t n = 0;
  for (const PackedPart& part : layout) n += part_bytes(part);
  return n;
}

PackedTensor packed_from_layout(const char* format, int64_t rows, int64_t cols,
                                std::vector<PackedPart> layout) {
  PackedTensor out;
  out.format = format;
  out.rows = rows;
  out.cols = cols;
  out.parts = std::move(layout);
  for (PackedPart& part : out.parts) part.bytes.assign(part_bytes(part), 0);
  return out;
}

const PackedPart& checked_part(const char* format, const PackedTensor& p,
                               const PackedPart& expect) {
  const std::string what = std::string(format) + " tensor [" + std::to_string(p.rows) + " x " +
                           std::to_string(p.cols) + "]: part '" + expect.suffix + "'";
  const PackedPart& part = p.part(expect.suffix);
  if (part.dtype != expect.dtype)
    throw Error(ExitCode::kInput, what + " has dtype " + dtype_name(part.dtype) + ", expected " +
                                      dtype_name(expect.dtype));
  // A scalar may be stored as [] or [1] (both occur in ModelOpt exports).
  const bool scalar_ok = expect.shape.empty() && part.shape == std::vector<int64_t>{1};
  if (part.shape != expect.shape && !scalar_ok)
    throw Error(ExitCode::kInput, what + " has shape " + shape_str(part.shape) + ", expected " +
                                      shape_str(expect.shape));
  const std::size_t n = part_bytes(expect);
  if (part.bytes.size() != n)
    throw Error(ExitCode::kInput, what + " holds " + std::to_string(part.bytes.size()) +
                                      " bytes, expected " + std::to_string(n));
  return part;
}

std::vector<const PackedPart*> checked_parts(const Quantizer& q, const PackedTensor& p) {
  const char* format = q.info().name;
  if (p.format != format)
    throw Error(ExitCode::kInput,
                std::string(format) + " decoder given a '" + p.format + "' tensor");
  check_shape(std::string(format) + " tensor", p.rows, p.cols);
  std::vector<const PackedPart*> parts;
  for (const PackedPart& expect : q.layout(p.rows, p.cols))
    parts.push_back(&checked_part(format, p, expect));
  return parts;
}

}  // namespace quant_detail
}  // namespace mpq
