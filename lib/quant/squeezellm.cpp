// SqueezeLLM dense-and-sparse encode/decode; the method and byte layout are documented in
// squeezellm.h.
#include "lib/quant/squeezellm.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "lib/common/error.h"
#include "lib/numeric/codecs.h"
#include "lib/quant/kmeans1d.h"
#include "lib/quant/quant_common.h"

namespace mpq {

using namespace quant_detail;  // lib/quant/quant_common.h

namespace {

constexpr const char* kFormat = "squeezellm";  // the on-disk format of both grid modes
constexpr float kMaxAbs = 32752.0f;            // half of fp16's max: residuals stay finite

int64_t pct_count(double pct, int64_t n) {
  const int64_t k = std::llround(pct / 100.0 * static_cast<double>(n));
  return std::min(std::max<int64_t>(k, 0), n);
}

// Marks in `mask` the `count` entries of v[0..n) with the largest values (ties at the
// threshold in index order). v must be finite.
void mark_top(const float* v, int64_t n, int64_t count, std::vector<uint8_t>& mask) {
  if (count <= 0) return;
  if (count >= n) {
    std::fill(mask.begin(), mask.end(), uint8_t{1});
    return;
  }
  std::vector<float> tmp(v, v + n);
  std::nth_element(tmp.begin(), tmp.begin() + (count - 1), tmp.end(), std::greater<float>());
  const float t = tmp[static_cast<std::size_t>(count - 1)];
  int64_t left = count;
  for (int64_t i = 0; i < n; ++i)
    if (v[i] > t) {
      mask[static_cast<std::size_t>(i)] = 1;
      --left;
    }
  for (int64_t i = 0; i < n && left > 0; ++i)
    if (v[i] == t) {
      mask[static_cast<std::size_t>(i)] = 1;
      --left;
    }
}

int64_t load_col(const uint8_t* col, DType dt, int64_t i) {
  if (dt == DType::I16) return static_cast<int16_t>(load_u16_le(col + 2 * i));
  return load_i32_le(col + 4 * i);
}

}  // namespace

int squeezellm_bits_for_lut(int64_t entries) {
  switch (entries) {
    case 4: return 2;
    case 8: return 3;
    case 16: return 4;
    default: return 0;
  }
}

std::vector<PackedPart> squeezellm_sparse_layout(int64_t cols, int64_t nnz) {
  return {{"sparse_col", squeezellm_col_dtype(cols), {nnz}, {}},
          {"sparse_val", DType::F16, {nnz}, {}}};
}

std::string squeezellm_check_sparse(int64_t rows, int64_t cols, const uint8_t* rowptr,
                                    const uint8_t* col, DType col_dtype, int64_t nnz,
                                    std::string* field) {
  *field = "sparse_rowptr";
  if (load_i32_le(rowptr) != 0)
    return "rowptr[0] = " + std::to_string(load_i32_le(rowptr)) + ", expected 0";
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t a = load_i32_le(rowptr + 4 * r), b = load_i32_le(rowptr + 4 * (r + 1));
    if (b < a)
      return "rowptr decreases at row " + std::to_string(r) + " (" + std::to_string(a) + " -> " +
             std::to_string(b) + ")";
    if (b > nnz)
      return "rowptr[" + std::to_string(r + 1) + "] = " + std::to_string(b) + " exceeds nnz " +
             std::to_string(nnz);
  }
  if (load_i32_le(rowptr + 4 * rows) != nnz)
    return "rowptr[" + std::to_string(rows) + "] = " + std::to_string(load_i32_le(rowptr + 4 * rows)) +
           ", expected nnz " + std::to_string(nnz);
  *field = "sparse_col";
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t a = load_i32_le(rowptr + 4 * r), b = load_i32_le(rowptr + 4 * (r + 1));
    int64_t prev = -1;
    for (int64_t i = a; i < b; ++i) {
      const int64_t c = load_col(col, col_dtype, i);
      if (c < 0 || c >= cols)
        return "entry " + std::to_string(i) + " (row " + std::to_string(r) + ") has column " +
               std::to_string(c) + " outside [0, " + std::to_string(cols) + ")";
      if (c <= prev)
        return "entry " + std::to_string(i) + " (row " + std::to_string(r) + ") has column " +
               std::to_string(c) + ", not above the previous " + std::to_string(prev);
      prev = c;
    }
  }
  field->clear();
  return "";
}

SqueezeLLMQuantizer::SqueezeLLMQuantizer(int bits, double outlier_pct, double sensitive_pct, Grid grid)
    : bits_(bits), outlier_pct_(outlier_pct), sensitive_pct_(sensitive_pct), grid_(grid) {
  if (bits < 2 || bits > 4)
    throw Error(ExitCode::kUsage, "squeezellm: bits " + std::to_string(bits) + " not in {2, 3, 4}");
  for (const auto& [name, v] : {std::pair<const char*, double>{"outlier_pct", outlier_pct},
                                {"sensitive_pct", sensitive_pct}})
    if (!(v >= 0.0 && v <= 100.0))
      throw Error(ExitCode::kUsage, std::string("squeezellm: ") + name + " " + std::to_string(v) +
                                        " not in [0, 100]");
}

const FormatInfo& SqueezeLLMQuantizer::info() const {
  return format_info(grid_ == Grid::kUniform ? "uniform" : kFormat);
}

std::vector<PackedPart> SqueezeLLMQuantizer::layout(int64_t rows, int64_t cols) const {
  check_shape(info().name, rows, cols);
  std::vector<PackedPart> l = {{"qweight", DType::U8, {rows, squeezellm_row_bytes(cols, bits_)}, {}},
                               {"lookup_table", DType::F16, {rows, int64_t{1} << bits_}, {}},
                               {"sparse_rowptr", DType::I32, {rows + 1}, {}}};
  for (PackedPart& part : squeezellm_sparse_layout(cols, pct_count(outlier_pct_, rows * cols)))
    l.push_back(std::move(part));
  return l;
}

PackedTensor SqueezeLLMQuantizer::encode(const std::string& name, const float* w, int64_t rows,
                                         int64_t cols) const {
  return encode_weighted(name, w, nullptr, rows, cols);
}

PackedTensor SqueezeLLMQuantizer::encode_weighted(const std::string& name, const float* w,
                                                  const float* fisher, int64_t rows,
                                                  int64_t cols) const {
  const float amax = checked_amax(name, w, rows, cols);
  if (amax > kMaxAbs)
    throw Error(ExitCode::kInput, name + ": |w| = " + std::to_string(amax) + " exceeds " +
                                      std::to_string(kMaxAbs) + " (fp16 lookup/residual range)");
  const int64_t n = rows * cols;
  const std::size_t un = static_cast<std::size_t>(n);
  check_sensitivity(name, fisher, rows, cols);
  const int k = 1 << bits_;

  // 1. The sparse set.
  std::vector<uint8_t> sparse(un, 0);
  {
    std::vector<float> a(un);
    for (std::size_t i = 0; i < un; ++i) a[i] = std::fabs(w[i]);
    mark_top(a.data(), n, pct_count(outlier_pct_, n), sparse);
  }
  if (fisher) mark_top(fisher, n, pct_count(sensitive_pct_, n), sparse);

  // 2. The dense fit, per row: float centroids (ascending) in cent[r*k ...].
  std::vector<float> cent(static_cast<std::size_t>(rows * k), 0.0f);
  if (grid_ == Grid::kKMeans) {
    std::vector<float> sw(un);
    for (int64_t r = 0; r < rows; ++r) {
      bool any = false;
      for (int64_t c = 0; c < cols; ++c) {
        const std::size_t i = static_cast<std::size_t>(r * cols + c);
        sw[i] = sparse[i] ? 0.0f : (fisher ? fisher[i] : 1.0f);
        any = any || sw[i] > 0.0f;
      }
      if (!any)  // all dense weights 0: fit the dense positions unweighted
        for (int64_t c = 0; c < cols; ++c) {
          const std::size_t i = static_cast<std::size_t>(r * cols + c);
          if (!sparse[i]) sw[i] = 1.0f;
        }
    }
    std::vector<uint8_t> codes(un);
    kmeans_rows(w, sw.data(), rows, cols, k, cent.data(), codes.data(), nullptr);
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      float lo = 0.0f, hi = 0.0f;
      bool first = true;
      for (int64_t c = 0; c < cols; ++c) {
        const std::size_t i = static_cast<std::size_t>(r * cols + c);
        if (sparse[i]) continue;
        lo = first ? w[i] : std::min(lo, w[i]);
        hi = first ? w[i] : std::max(hi, w[i]);
        first = false;
      }
      const double step = (static_cast<double>(hi) - lo) / (k - 1);
      for (int j = 0; j < k; ++j)
        cent[static_cast<std::size_t>(r * k + j)] =
            j == k - 1 ? hi : static_cast<float>(lo + step * j);
    }
  }

  // 3. fp16 tables, indices, packing, sparse residuals.
  std::vector<PackedPart> dense_layout = layout(rows, cols);
  dense_layout.resize(3);  // the sparse parts are sized below, from the actual nnz
  PackedTensor out = packed_from_layout(kFormat, rows, cols, std::move(dense_layout));
  PackedPart& qw = out.parts[0];
  PackedPart& lt = out.parts[1];
  PackedPart& rp = out.parts[2];
  const int64_t rb = qw.shape[1];
  std::vector<float> lutf(static_cast<std::size_t>(rows * k));
  std::vector<uint8_t> idx(un);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    float* lr = lutf.data() + r * k;
    for (int j = 0; j < k; ++j) {
      const uint16_t h = fp32_to_fp16(cent[static_cast<std::size_t>(r * k + j)]);
      store_u16_le(h, lt.bytes.data() + 2 * (r * k + j));
      lr[j] = fp16_to_fp32(h);
    }
    const std::vector<uint8_t> a = assign_to_lut(w + r * cols, cols, lr, k);
    uint8_t* qr = qw.bytes.data() + r * rb;
    for (int64_t c = 0; c < cols; ++c) {
      idx[static_cast<std::size_t>(r * cols + c)] = a[static_cast<std::size_t>(c)];
      pack_code(qr, c, bits_, a[static_cast<std::size_t>(c)]);
    }
  }
  int64_t nnz = 0;
  for (std::size_t i = 0; i < un; ++i) nnz += sparse[i];
  std::vector<PackedPart> sp = squeezellm_sparse_layout(cols, nnz);
  for (PackedPart& part : sp) part.bytes.assign(part_bytes(part), 0);
  const std::size_t col_size = dtype_size(sp[0].dtype);
  int64_t e = 0;
  for (int64_t r = 0; r < rows; ++r) {
    store_i32_le(static_cast<int32_t>(e), rp.bytes.data() + 4 * r);
    for (int64_t c = 0; c < cols; ++c) {
      const std::size_t i = static_cast<std::size_t>(r * cols + c);
      if (!sparse[i]) continue;
      const float res = w[i] - lutf[static_cast<std::size_t>(r * k + idx[i])];
      uint8_t* cp = sp[0].bytes.data() + col_size * static_cast<std::size_t>(e);
      if (col_size == 2) store_u16_le(static_cast<uint16_t>(c), cp);
      else store_i32_le(static_cast<int32_t>(c), cp);
      store_u16_le(fp32_to_fp16(res), sp[1].bytes.data() + 2 * e);
      ++e;
    }
  }
  store_i32_le(static_cast<int32_t>(e), rp.bytes.data() + 4 * rows);
  for (PackedPart& part : sp) out.parts.push_back(std::move(part));
  return out;
}

void SqueezeLLMQuantizer::decode(const PackedTensor& p, float* out) const {
  if (p.format != kFormat)
    throw Error(ExitCode::kInput, std::string(kFormat) + " decoder given a '" + p.format + "' tensor");
  check_shape(std::string(kFormat) + " tensor", p.rows, p.cols);
  const int64_t rows = p.rows, cols = p.cols;
  const std::string what = std::string(kFormat) + " tensor [" + std::to_string(rows) + " x " +
                           std::to_string(cols) + "]";
  const PackedPart& lt0 = p.part("lookup_table");
  const int bits = lt0.shape.size() == 2 ? squeezellm_bits_for_lut(lt0.shape[1]) : 0;
  if (bits == 0)
    throw Error(ExitCode::kInput, what + ": part 'lookup_table' has shape " + shape_str(lt0.shape) +
                                      ", expected [" + std::to_string(rows) + ", 4|8|16]");
  const SqueezeLLMQuantizer qb(bits, 0.0, 0.0);
  const std::vector<PackedPart> lay = qb.layout(rows, cols);
  const PackedPart& qw = checked_part(kFormat, p, lay[0]);
  const PackedPart& lt = checked_part(kFormat, p, lay[1]);
  const PackedPart& rp = checked_part(kFormat, p, lay[2]);
  const int64_t nnz = load_i32_le(rp.bytes.data() + 4 * rows);
  if (nnz < 0 || nnz > rows * cols)
    throw Error(ExitCode::kInput, what + ": part 'sparse_rowptr' ends at nnz " + std::to_string(nnz) +
                                      ", outside [0, " + std::to_string(rows * cols) + "]");
  const std::vector<PackedPart> sl = squeezellm_sparse_layout(cols, nnz);
  const PackedPart& sc = checked_part(kFormat, p, sl[0]);
  const PackedPart& sv = checked_part(kFormat, p, sl[1]);
  std::string field;
  const std::string msg =
      squeezellm_check_sparse(rows, cols, rp.bytes.data(), sc.bytes.data(), sc.dtype, nnz, &field);
  if (!msg.empty()) throw Error(ExitCode::kInput, what + ": part '" + field + "': " + msg);
  const int k = 1 << bits;
  std::vector<float> lut(static_cast<std::size_t>(rows * k));
  for (std::size_t i = 0; i < lut.size(); ++i) {
    lut[i] = fp16_to_fp32(load_u16_le(lt.bytes.data() + 2 * i));
    if (!std::isfinite(lut[i]))
      throw Error(ExitCode::kInput, what + ": part 'lookup_table' holds " + std::to_string(lut[i]) +
                                        " at flat index " + std::to_string(i));
  }
  const int64_t rb = qw.shape[1];
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* qr = qw.bytes.data() + r * rb;
    const float* lr = lut.data() + r * k;
    float* orow = out + r * cols;
    for (int64_t c = 0; c < cols; ++c) orow[c] = lr[unpack_code(qr, c, bits)];
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t a = load_i32_le(rp.bytes.data() + 4 * r), b = load_i32_le(rp.bytes.data() + 4 * (r + 1));
    for (int64_t i = a; i < b; ++i) {
      const float v = fp16_to_fp32(load_u16_le(sv.bytes.data() + 2 * i));
      if (!std::isfinite(v))
        throw Error(ExitCode::kInput, what + ": part 'sparse_val' holds " + std::to_string(v) +
                                          " at entry " + std::to_string(i));
      out[r * cols + load_col(sc.bytes.data(), sc.dtype, i)] += v;
    }
  }
}

LutWeightView squeezellm_weight_view(const PackedTensor& p) {
  const PackedPart& lt = p.part("lookup_table");
  const PackedPart& col = p.part("sparse_col");
  const PackedPart& val = p.part("sparse_val");
  LutWeightView v;
  v.bits = lt.shape.size() == 2 ? squeezellm_bits_for_lut(lt.shape[1]) : 0;
  if (v.bits == 0)
    throw Error(ExitCode::kInput, "squeezellm lookup_table of shape " + shape_str(lt.shape) +
                                      ": expected 4, 8 or 16 entries per row");
  v.rows = p.rows;
  v.cols = p.cols;
  v.qweight = p.part("qweight").bytes.data();
  v.lut_f16 = reinterpret_cast<const uint16_t*>(lt.bytes.data());
  // With no entries the kernels skip the CSR part entirely.
  const bool has_sparse = !val.bytes.empty();
  v.rowptr = has_sparse ? reinterpret_cast<const int32_t*>(p.part("sparse_rowptr").bytes.data()) : nullptr;
  v.col = has_sparse ? static_cast<const void*>(col.bytes.data()) : nullptr;
  v.col_is_i16 = col.dtype == DType::I16;
  v.val_f16 = has_sparse ? reinterpret_cast<const uint16_t*>(val.bytes.data()) : nullptr;
  return v;
}

}  // namespace mpq
