// Group-wise integer quantization (see intg.h).
#include "lib/quant/intg.h"

#include <algorithm>
#include <cmath>

#include "lib/common/error.h"
#include "lib/numeric/codecs.h"
#include "lib/quant/quant_common.h"

namespace mpq {

using namespace quant_detail;  // lib/quant/quant_common.h

namespace {

constexpr const char* kFormat = "int";

bool valid_bits(int b) { return b == 2 || b == 3 || b == 4 || b == 8; }
bool valid_group(int64_t g) { return std::find(std::begin(kIntGroupSizes), std::end(kIntGroupSizes), g) != std::end(kIntGroupSizes); }

int64_t groups_per_row(int64_t cols, int64_t g) { return g > 0 ? (cols + g - 1) / g : (cols > 0 ? 1 : 0); }

}  // namespace

IntGroupParams int_group_params(const float* w, int64_t n, int bits) {
  float lo = 0.0f, hi = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    lo = std::min(lo, w[i]);
    hi = std::max(hi, w[i]);
  }
  const int maxq = (1 << bits) - 1;
  IntGroupParams p;
  if (!(hi > lo)) return p;  // all zero: s = 1, z = 0
  // The scale as stored (fp16); the codes are computed with it, so decode is exact.
  float s = fp16_to_fp32(fp32_to_fp16((hi - lo) / static_cast<float>(maxq)));
  if (!(s > 0.0f)) s = fp16_to_fp32(1);  // the smallest fp16 subnormal
  p.scale = s;
  p.zero = std::clamp(static_cast<int>(std::nearbyint(-lo / s)), 0, maxq);
  return p;
}

int int_group_code(float w, const IntGroupParams& p, int bits) {
  const int maxq = (1 << bits) - 1;
  const float q = std::nearbyint(w / p.scale) + static_cast<float>(p.zero);
  return static_cast<int>(std::clamp(q, 0.0f, static_cast<float>(maxq)));
}

IntGroupQuantizer::IntGroupQuantizer(int bits, int64_t group_size) : bits_(bits), group_size_(group_size) {
  if (!valid_bits(bits))
    throw Error(ExitCode::kUsage, "int: bits " + std::to_string(bits) + " not in {2, 3, 4, 8}");
  if (group_size != 0 && !valid_group(group_size))
    throw Error(ExitCode::kUsage, "int: group size " + std::to_string(group_size) + " not in {16, 32, 64, 128}");
}

const FormatInfo& IntGroupQuantizer::info() const { return format_info(kFormat); }

std::vector<PackedPart> IntGroupQuantizer::layout(int64_t rows, int64_t cols) const {
  check_shape(kFormat, rows, cols);
  const int64_t ng = groups_per_row(cols, group_size_);
  return {{"qweight", DType::U8, {rows, (cols + 7) / 8 * bits_}, {}},
          {"scales", DType::F16, {rows, ng}, {}},
          {"zeros", DType::U8, {rows, ng}, {}}};
}

PackedTensor IntGroupQuantizer::encode(const std::string& name, const float* w, int64_t rows, int64_t cols) const {
  checked_amax(name, w, rows, cols);
  PackedTensor out = packed_from_layout(kFormat, rows, cols, layout(rows, cols));
  uint8_t* q = out.parts[0].bytes.data();
  uint8_t* sc = out.parts[1].bytes.data();
  uint8_t* zp = out.parts[2].bytes.data();
  const int64_t rb = out.parts[0].shape[1], ng = out.parts[1].shape[1], g = group_cols(cols);
  std::string overflow;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < ng; ++k) {
      const int64_t c0 = k * g, c1 = std::min(cols, c0 + g);
      const IntGroupParams p = int_group_params(w + r * cols + c0, c1 - c0, bits_);
      if (!std::isfinite(p.scale)) {
#pragma omp critical(mpq_int_overflow)
        overflow = name + ": group " + std::to_string(k) + " of row " + std::to_string(r) +
                   ": the scale overflows fp16 (weights beyond +-" + std::to_string(65504.0 * ((1 << bits_) - 1) / 2) + ")";
        continue;
      }
      store_u16_le(fp32_to_fp16(p.scale), sc + 2 * (r * ng + k));
      zp[r * ng + k] = static_cast<uint8_t>(p.zero);
      for (int64_t c = c0; c < c1; ++c)
        pack_code(q + r * rb, c, bits_, static_cast<uint32_t>(int_group_code(w[r * cols + c], p, bits_)));
    }
  if (!overflow.empty()) throw Error(ExitCode::kInput, overflow);
  return out;
}

void int_tensor_geometry(const PackedTensor& p, int* bits, int64_t* group_cols) {
  const std::string what = std::string(kFormat) + " tensor [" + std::to_string(p.rows) + " x " + std::to_string(p.cols) + "]";
  check_shape(what, p.rows, p.cols);
  const PackedPart& qw = p.part("qweight");
  const PackedPart& sc = p.part("scales");
  const int64_t groups8 = (p.cols + 7) / 8;
  *bits = qw.shape.size() == 2 && groups8 > 0 && qw.shape[1] % groups8 == 0 ? static_cast<int>(qw.shape[1] / groups8) : 0;
  if (!valid_bits(*bits))
    throw Error(ExitCode::kInput, what + ": part 'qweight' has shape " + shape_str(qw.shape) + ", expected [" +
                                      std::to_string(p.rows) + ", b * " + std::to_string(groups8) + "] with b in {2, 3, 4, 8}");
  const int64_t ng = sc.shape.size() == 2 ? sc.shape[1] : 0;
  *group_cols = 0;
  if (ng == 1) *group_cols = p.cols;
  for (int64_t g : kIntGroupSizes)
    if (ng > 1 && groups_per_row(p.cols, g) == ng) *group_cols = g;
  if (*group_cols == 0)
    throw Error(ExitCode::kInput, what + ": part 'scales' has shape " + shape_str(sc.shape) +
                                      ": its width is not ceil(cols / G) for a group size G in {16, 32, 64, 128}, nor 1");
}

IntWeightView int_weight_view(const PackedTensor& p) {
  IntWeightView v;
  int_tensor_geometry(p, &v.bits, &v.group);
  v.rows = p.rows;
  v.cols = p.cols;
  v.groups = p.part("scales").shape[1];
  v.row_bytes = p.part("qweight").shape[1];
  v.qweight = p.part("qweight").bytes.data();
  v.scales = reinterpret_cast<const uint16_t*>(p.part("scales").bytes.data());
  v.zeros = p.part("zeros").bytes.data();
  return v;
}

void IntGroupQuantizer::decode(const PackedTensor& p, float* out) const {
  if (p.format != kFormat)
    throw Error(ExitCode::kInput, std::string(kFormat) + " decoder given a '" + p.format + "' tensor");
  int bits = 0;
  int64_t g = 0;
  int_tensor_geometry(p, &bits, &g);
  const bool per_row = p.part("scales").shape[1] == 1;  // int_tensor_geometry() checked the shape
  const std::vector<PackedPart> lay = IntGroupQuantizer(bits, per_row ? 0 : g).layout(p.rows, p.cols);
  const PackedPart& qw = checked_part(kFormat, p, lay[0]);
  const PackedPart& sc = checked_part(kFormat, p, lay[1]);
  const PackedPart& zp = checked_part(kFormat, p, lay[2]);
  const int64_t rows = p.rows, cols = p.cols, rb = lay[0].shape[1], ng = lay[1].shape[1];
  const std::string what = std::string(kFormat) + " tensor [" + std::to_string(rows) + " x " + std::to_string(cols) + "]";
  const int maxq = (1 << bits) - 1;
  for (int64_t i = 0; i < rows * ng; ++i) {
    const float s = fp16_to_fp32(load_u16_le(sc.bytes.data() + 2 * i));
    if (!std::isfinite(s))
      throw Error(ExitCode::kInput, what + ": part 'scales' holds " + std::to_string(s) + " at flat index " + std::to_string(i));
    if (zp.bytes[static_cast<std::size_t>(i)] > maxq)
      throw Error(ExitCode::kInput, what + ": part 'zeros' holds " + std::to_string(zp.bytes[static_cast<std::size_t>(i)]) +
                                        " at flat index " + std::to_string(i) + ", above 2^" + std::to_string(bits) + " - 1");
  }
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < ng; ++k) {
      const float s = fp16_to_fp32(load_u16_le(sc.bytes.data() + 2 * (r * ng + k)));
      const int z = zp.bytes[static_cast<std::size_t>(r * ng + k)];
      const int64_t c1 = std::min(cols, (k + 1) * g);
      for (int64_t c = k * g; c < c1; ++c)
        out[r * cols + c] = s * static_cast<float>(static_cast<int>(unpack_code(qw.bytes.data() + r * rb, c, bits)) - z);
    }
}

}  // namespace mpq
