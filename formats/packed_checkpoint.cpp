#include "formats/packed_checkpoint.h"

#include <algorithm>

#include "lib/common/error.h"
#include "lib/quant/fgmp.h"
#include "lib/quant/quant_common.h"
#include "lib/quant/squeezellm.h"

namespace mpq {

std::string detect_linear_format(const TensorStore& store, const std::string& prefix) {
  // squeezellm has no "<prefix>.weight" (its parts are qweight, lookup_table, sparse_*).
  if (store.has(prefix + ".lookup_table")) return "squeezellm";
  // Neither has fgmp (weight_block_map, weight_fp4, weight_fp8, ...).
  if (store.has(prefix + ".weight_block_map")) return "fgmp";
  const std::string wname = prefix + ".weight";
  const TensorView& w = store.get(wname);  // throws "missing tensor"
  if (store.has(prefix + ".weight_scale_2")) return "nvfp4";
  if (w.dtype == DType::F8_E4M3 && store.has(prefix + ".weight_scale")) return "fp8";
  switch (w.dtype) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    default:
      throw_input(w.file, "tensor '" + wname + "': dtype " + dtype_name(w.dtype) +
                              " is not a dense float and no known quantization layout matches");
  }
}

namespace {

// Copies a store tensor into a part after checking it against its layout entry `e`.
PackedPart checked_store_part(const TensorStore& store, const std::string& prefix,
                              const PackedPart& e, const std::string& format, int64_t rows,
                              int64_t cols) {
  const std::string name = prefix + "." + e.suffix;
  const TensorView& t = store.get(name);
  if (t.dtype != e.dtype)
    throw_input(t.file, "tensor '" + name + "': dtype " + dtype_name(t.dtype) + ", expected " +
                            dtype_name(e.dtype) + " for " + format);
  // A scalar scale may be stored as [] or [1] (both occur in ModelOpt exports).
  const bool scalar_ok = e.shape.empty() && t.numel() == 1;
  if (t.shape != e.shape && !scalar_ok)
    throw_input(t.file, "tensor '" + name + "': shape " + shape_str(t.shape) + ", expected " +
                            shape_str(e.shape) + " for " + format + " of logical shape " +
                            shape_str({rows, cols}));
  return PackedPart{e.suffix, e.dtype, e.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)};
}

// squeezellm: the bit width comes from the lookup_table's width, nnz from sparse_rowptr's
// last entry; the CSR structure is validated here so errors name the file and tensor.
PackedTensor read_squeezellm(const TensorStore& store, const std::string& prefix, int64_t rows,
                             int64_t cols) {
  const std::string format = "squeezellm";
  const std::string lname = prefix + ".lookup_table";
  const TensorView& lt = store.get(lname);
  const int bits = lt.shape.size() == 2 ? squeezellm_bits_for_lut(lt.shape[1]) : 0;
  if (bits == 0 || lt.shape[0] != rows)
    throw_input(lt.file, "tensor '" + lname + "': shape " + shape_str(lt.shape) + ", expected [" +
                             std::to_string(rows) + ", 4|8|16] for squeezellm of logical shape " +
                             shape_str({rows, cols}));
  PackedTensor p;
  p.format = format;
  p.rows = rows;
  p.cols = cols;
  std::vector<PackedPart> lay = SqueezeLLMQuantizer(bits, 0.0, 0.0).layout(rows, cols);
  lay.resize(3);  // qweight, lookup_table, sparse_rowptr; the sparse shapes come from nnz
  for (const PackedPart& e : lay)
    p.parts.push_back(checked_store_part(store, prefix, e, format, rows, cols));
  const std::vector<uint8_t>& rp = p.parts[2].bytes;  // sparse_rowptr I32 [rows + 1]
  const std::size_t last = static_cast<std::size_t>(4 * rows);
  const int64_t nnz = static_cast<int32_t>(static_cast<uint32_t>(rp[last]) | static_cast<uint32_t>(rp[last + 1]) << 8 |
                                           static_cast<uint32_t>(rp[last + 2]) << 16 |
                                           static_cast<uint32_t>(rp[last + 3]) << 24);
  const TensorView& rpt = store.get(prefix + ".sparse_rowptr");
  if (nnz < 0 || nnz > rows * cols)
    throw_input(rpt.file, "tensor '" + rpt.name + "': last entry (nnz) " + std::to_string(nnz) +
                              " outside [0, " + std::to_string(rows * cols) + "]");
  for (const PackedPart& e : squeezellm_sparse_layout(cols, nnz))
    p.parts.push_back(checked_store_part(store, prefix, e, format, rows, cols));
  std::string field;
  const std::string msg = squeezellm_check_sparse(rows, cols, rp.data(), p.parts[3].bytes.data(),
                                                  p.parts[3].dtype, nnz, &field);
  if (!msg.empty()) {
    const TensorView& t = store.get(prefix + "." + field);
    throw_input(t.file, "tensor '" + t.name + "': " + msg);
  }
  return p;
}

// fgmp: N8 comes from weight_fp8's first dimension, N4 = R * NB - N8 from it; the block
// map, row offsets and scales are validated here so errors name the file and tensor.
PackedTensor read_fgmp(const TensorStore& store, const std::string& prefix, int64_t rows,
                       int64_t cols) {
  const std::string format = "fgmp";
  const TensorView& f8 = store.get(prefix + ".weight_fp8");
  const int64_t total = rows * ((cols + 15) / 16);
  fgmp_layout(rows, cols, 0);  // the shape and block-count limits
  if (f8.shape.size() != 2 || f8.shape[1] != 16 || f8.shape[0] < 0 || f8.shape[0] > total)
    throw_input(f8.file, "tensor '" + f8.name + "': shape " + shape_str(f8.shape) + ", expected [N8, 16] with 0 <= N8 <= " +
                             std::to_string(total) + " for fgmp of logical shape " + shape_str({rows, cols}));
  PackedTensor p;
  p.format = format;
  p.rows = rows;
  p.cols = cols;
  for (const PackedPart& e : fgmp_layout(rows, cols, f8.shape[0]))
    p.parts.push_back(checked_store_part(store, prefix, e, format, rows, cols));
  std::string field;
  const std::string msg = fgmp_check(p, &field);
  if (!msg.empty()) {
    const TensorView& t = store.get(prefix + "." + field);
    throw_input(t.file, "tensor '" + t.name + "': " + msg);
  }
  return p;
}

}  // namespace

PackedTensor read_packed(const TensorStore& store, const std::string& prefix,
                         const std::string& format, int64_t rows, int64_t cols) {
  if (format == "squeezellm") {
    quant_detail::check_shape(prefix, rows, cols);
    return read_squeezellm(store, prefix, rows, cols);
  }
  if (format == "fgmp") {
    quant_detail::check_shape(prefix, rows, cols);
    return read_fgmp(store, prefix, rows, cols);
  }
  const Quantizer& q = quantizer_for(format);
  // The expected part names, dtypes and shapes come from the quantizer's layout(), the one
  // source of truth that encode() also builds from. Checking the shape first keeps an
  // invalid one reported as "<prefix>: invalid shape [rows, cols]" (layout() names the format).
  quant_detail::check_shape(prefix, rows, cols);
  PackedTensor p;
  p.format = format;
  p.rows = rows;
  p.cols = cols;
  for (const PackedPart& e : q.layout(rows, cols))
    p.parts.push_back(checked_store_part(store, prefix, e, format, rows, cols));
  return p;
}

std::vector<float> read_linear_f32(const TensorStore& store, const std::string& prefix,
                                   int64_t rows, int64_t cols, std::string* format,
                                   std::size_t* stored_bytes) {
  const std::string fmt = detect_linear_format(store, prefix);
  if (format) *format = fmt;
  if (fmt == "f32" || fmt == "f16" || fmt == "bf16") {
    const TensorView& w = store.get(prefix + ".weight");
    if (w.shape != std::vector<int64_t>{rows, cols})
      throw_input(w.file, "tensor '" + w.name + "': shape " + shape_str(w.shape) +
                              " disagrees with config.json " + shape_str({rows, cols}));
    if (stored_bytes) *stored_bytes = w.nbytes;
    return to_f32(w);
  }
  const PackedTensor p = read_packed(store, prefix, fmt, rows, cols);
  if (stored_bytes) *stored_bytes = p.bytes();
  std::vector<float> out(static_cast<std::size_t>(rows * cols));
  quantizer_for(fmt).decode(p, out.data());
  return out;
}

void add_packed(SafetensorsWriter& w, const std::string& prefix, const PackedTensor& p) {
  for (const PackedPart& part : p.parts) w.add(prefix + "." + part.suffix, part.dtype, part.shape, part.bytes);
}

void add_packed(ShardedSafetensorsWriter& w, const std::string& prefix, const PackedTensor& p) {
  for (const PackedPart& part : p.parts)
    w.add(prefix + "." + part.suffix, part.dtype, part.shape, part.bytes.data(), part.bytes.size());
}

}  // namespace mpq
