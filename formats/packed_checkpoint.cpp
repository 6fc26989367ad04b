#include "formats/packed_checkpoint.h"

#include <algorithm>

#include "lib/common/error.h"
#include "lib/quant/quant_common.h"

namespace mpq {

std::string detect_linear_format(const TensorStore& store, const std::string& prefix) {
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

PackedTensor read_packed(const TensorStore& store, const std::string& prefix,
                         const std::string& format, int64_t rows, int64_t cols) {
  const Quantizer& q = quantizer_for(format);
  // The expected part names, dtypes and shapes come from the quantizer's layout(), the one
  // source of truth that encode() also builds from. Checking the shape first keeps an
  // invalid one reported as "<prefix>: invalid shape [rows, cols]" (layout() names the format).
  quant_detail::check_shape(prefix, rows, cols);
  PackedTensor p;
  p.format = format;
  p.rows = rows;
  p.cols = cols;
  for (const PackedPart& e : q.layout(rows, cols)) {
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
    PackedPart part{e.suffix, e.dtype, e.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)};
    p.parts.push_back(std::move(part));
  }
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

}  // namespace mpq
