#include "formats/packed_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <regex>

#include "lib/common/error.h"
#include "lib/quant/fgmp.h"
#include "lib/quant/quant_common.h"
#include "lib/quant/squeezellm.h"

namespace mpq {

std::string detect_linear_format(const TensorStore& store, const std::string& prefix) {
  // One row per layout family (the table's detectors are mutually exclusive).
  for (const FormatInfo& f : format_table())
    if (&layout_format(f.layout) == &f && f.detect(store, prefix)) return f.name;
  const std::string wname = prefix + ".weight";
  const TensorView& w = store.get(wname);  // throws "missing tensor"
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

}  // namespace

// squeezellm: the bit width comes from the lookup_table's width, nnz from sparse_rowptr's
// last entry; the CSR structure is validated here so errors name the file and tensor.
PackedTensor read_squeezellm_tensor(const TensorStore& store, const std::string& prefix, int64_t rows,
                                    int64_t cols) {
  quant_detail::check_shape(prefix, rows, cols);
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
PackedTensor read_fgmp_tensor(const TensorStore& store, const std::string& prefix, int64_t rows,
                              int64_t cols) {
  quant_detail::check_shape(prefix, rows, cols);
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

PackedTensor read_layout_tensor(const TensorStore& store, const std::string& prefix, const Quantizer& q,
                                int64_t rows, int64_t cols) {
  // The expected part names, dtypes and shapes come from the quantizer's layout(), the one
  // source of truth that encode() also builds from. Checking the shape first keeps an
  // invalid one reported as "<prefix>: invalid shape [rows, cols]" (layout() names the format).
  quant_detail::check_shape(prefix, rows, cols);
  PackedTensor p;
  p.format = q.info().name;
  p.rows = rows;
  p.cols = cols;
  for (const PackedPart& e : q.layout(rows, cols))
    p.parts.push_back(checked_store_part(store, prefix, e, p.format, rows, cols));
  return p;
}

PackedTensor read_nvfp4_tensor(const TensorStore& store, const std::string& prefix, int64_t rows, int64_t cols) {
  const Quantizer& q = quantizer_for("nvfp4");
  if (!store.has(prefix + ".weight_packed")) return read_layout_tensor(store, prefix, q, rows, cols);
  // compressed-tensors nvfp4-pack-quantized: the same bytes under other names, and the global
  // scale as a divisor: weight_scale_2 = 1 / weight_global_scale (converters/modelopt_nvfp4.py).
  quant_detail::check_shape(prefix, rows, cols);
  std::vector<PackedPart> lay = q.layout(rows, cols);
  PackedTensor p;
  p.format = "nvfp4";
  p.rows = rows;
  p.cols = cols;
  PackedPart w = lay[0];
  w.suffix = "weight_packed";
  p.parts.push_back(checked_store_part(store, prefix, w, p.format, rows, cols));
  p.parts.back().suffix = "weight";
  p.parts.push_back(checked_store_part(store, prefix, lay[1], p.format, rows, cols));
  PackedPart g = lay[2];
  g.suffix = "weight_global_scale";
  PackedPart gs = checked_store_part(store, prefix, g, p.format, rows, cols);
  const float v = quant_detail::load_f32_le(gs.bytes.data());
  if (!std::isfinite(v) || !(v > 0.0f)) {
    const TensorView& t = store.get(prefix + ".weight_global_scale");
    throw_input(t.file, "tensor '" + t.name + "': " + std::to_string(v) + ", expected a finite value > 0");
  }
  gs.suffix = "weight_scale_2";
  quant_detail::store_f32_le(1.0f / v, gs.bytes.data());
  p.parts.push_back(std::move(gs));
  return p;
}

PackedTensor read_fp8_tensor(const TensorStore& store, const std::string& prefix, int64_t rows, int64_t cols) {
  const Quantizer& q = quantizer_for("fp8");
  const TensorView& s = store.get(prefix + ".weight_scale");
  if (s.numel() == 1) return read_layout_tensor(store, prefix, q, rows, cols);
  // A per-output-channel scale, [rows] (ModelOpt FP8_PER_CHANNEL_PER_TOKEN) or [rows, 1]
  // (compressed-tensors channel strategy): mpq's fp8 has one scale per tensor, so every row's
  // scale must be the same (what mpq's exports write).
  if (s.dtype != DType::F32 || !(s.shape == std::vector<int64_t>{rows} || s.shape == std::vector<int64_t>{rows, 1}))
    throw_input(s.file, "tensor '" + s.name + "': " + dtype_name(s.dtype) + " " + shape_str(s.shape) + ", expected F32 [], [1], [" +
                            std::to_string(rows) + "] or [" + std::to_string(rows) + ", 1] for fp8");
  const std::vector<float> v = to_f32(s);
  for (std::size_t r = 1; r < v.size(); ++r)
    if (v[r] != v[0])
      throw_input(s.file, "tensor '" + s.name + "': row " + std::to_string(r) + " has scale " + std::to_string(v[r]) +
                              ", row 0 " + std::to_string(v[0]) +
                              ": per-channel FP8 scales are not supported (mpq's fp8 has one scale per tensor)");
  std::vector<PackedPart> lay = q.layout(rows, cols);
  PackedTensor p;
  p.format = "fp8";
  p.rows = rows;
  p.cols = cols;
  p.parts.push_back(checked_store_part(store, prefix, lay[0], p.format, rows, cols));
  PackedPart sc = lay[1];
  sc.bytes.resize(4);
  quant_detail::store_f32_le(v[0], sc.bytes.data());
  p.parts.push_back(std::move(sc));
  return p;
}

float read_input_scale(const TensorStore& store, const std::string& prefix) {
  for (const char* suffix : {"input_scale", "input_global_scale"}) {
    const std::string name = prefix + "." + suffix;
    if (!store.has(name)) continue;
    const TensorView& t = store.get(name);
    if (t.numel() != 1 || (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16))
      throw_input(t.file, "tensor '" + name + "': " + dtype_name(t.dtype) + " " + shape_str(t.shape) +
                              ", expected a float scalar ([] or [1])");
    const float v = to_f32(t)[0];
    if (!std::isfinite(v) || !(v > 0.0f))
      throw_input(t.file, "tensor '" + name + "': " + std::to_string(v) + ", expected a finite value > 0");
    // compressed-tensors' nvfp4 input_global_scale is a divisor (1 / ModelOpt's input_scale).
    return std::string(suffix) == "input_global_scale" ? 1.0f / v : v;
  }
  return std::numeric_limits<float>::quiet_NaN();
}

namespace {

// A string field of a JSON object, "" when absent or not a string.
std::string str_field(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// A field of a JSON object, null when absent.
nlohmann::json field(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() ? *it : nlohmann::json();
}

bool listed(const nlohmann::json& list, const std::string& module) {
  if (!list.is_array()) return false;
  for (const auto& e : list) {
    if (!e.is_string()) continue;
    const std::string s = e.get<std::string>();
    if (s.rfind("re:", 0) == 0) {
      try {
        if (std::regex_match(module, std::regex(s.substr(3)))) return true;
      } catch (const std::regex_error&) {
      }
    } else if (s == module) {
      return true;
    }
  }
  return false;
}

}  // namespace

ActQuantMode declared_activation(const nlohmann::json& qc, const std::string& module, const std::string& file,
                                 bool* dynamic) {
  *dynamic = false;
  if (!qc.is_object()) return ActQuantMode::kNone;
  const std::string method = str_field(qc, "quant_method");
  if (method.rfind("modelopt", 0) == 0) {
    if (listed(field(qc, "ignore"), module)) return ActQuantMode::kNone;
    std::string algo = str_field(qc, "quant_algo");
    if (algo == "MIXED_PRECISION") {
      const nlohmann::json layers = field(qc, "quantized_layers");
      if (!layers.is_object() || !layers.contains(module)) return ActQuantMode::kNone;
      algo = layers[module].is_object() ? str_field(layers[module], "quant_algo") : std::string();
    }
    if (algo == "NVFP4") return ActQuantMode::kNvfp4;
    if (algo == "FP8") return ActQuantMode::kFp8;
    if (algo == "FP8_PER_CHANNEL_PER_TOKEN") {
      *dynamic = true;
      return ActQuantMode::kFp8;
    }
    if (algo == "W4A16_NVFP4") return ActQuantMode::kNone;
    throw_input(file, "quantization_config.quant_algo: '" + algo + "' for " + module +
                          " is not one mpq emulates (NVFP4, W4A16_NVFP4, FP8, FP8_PER_CHANNEL_PER_TOKEN, MIXED_PRECISION)");
  }
  if (method == "compressed-tensors") {
    if (listed(field(qc, "ignore"), module)) return ActQuantMode::kNone;
    const nlohmann::json groups = field(qc, "config_groups");
    if (!groups.is_object()) return ActQuantMode::kNone;
    for (const auto& [name, g] : groups.items()) {
      if (!g.is_object()) continue;
      const nlohmann::json targets = field(g, "targets");
      bool match = listed(targets, module);
      if (targets.is_array())
        for (const auto& t : targets) match = match || (t.is_string() && t.get<std::string>() == "Linear");
      if (!match) continue;
      const nlohmann::json a = field(g, "input_activations");
      if (!a.is_object()) return ActQuantMode::kNone;
      const nlohmann::json nb = field(a, "num_bits");
      const int bits = nb.is_number_integer() ? nb.get<int>() : 0;
      const nlohmann::json dyn = field(a, "dynamic");
      if (bits == 4) return ActQuantMode::kNvfp4;
      if (bits == 8) {
        *dynamic = dyn.is_boolean() && dyn.get<bool>();
        return ActQuantMode::kFp8;
      }
      throw_input(file, "quantization_config.config_groups." + name + ".input_activations.num_bits: " +
                            std::to_string(bits) + " is not one mpq emulates (4: NVFP4, 8: FP8)");
    }
    return ActQuantMode::kNone;
  }
  return ActQuantMode::kNone;
}

PackedTensor read_packed(const TensorStore& store, const std::string& prefix,
                         const std::string& format, int64_t rows, int64_t cols) {
  const FormatInfo* f = find_format(format);
  if (!f) quantizer_for(format);  // throws the usage error listing the known names
  return f->read(store, prefix, rows, cols);
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
  find_format(fmt)->decoder().decode(p, out.data());
  return out;
}

void add_packed(SafetensorsWriter& w, const std::string& prefix, const PackedTensor& p) {
  for (const PackedPart& part : p.parts) w.add(prefix + "." + part.suffix, part.dtype, part.shape, part.bytes);
}

}  // namespace mpq
