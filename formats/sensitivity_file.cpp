#include "formats/sensitivity_file.h"

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "lib/common/error.h"
#include "lib/common/json_fields.h"
#include "lib/common/shape.h"

namespace mpq {

void write_sensitivity_file(const std::string& path, const SensitivityResult& r,
                            const std::map<std::string, std::string>& metadata) {
  SafetensorsWriter w;
  nlohmann::ordered_json traces = nlohmann::ordered_json::object();
  for (const TensorSensitivity& t : r.tensors) {
    if (!t.fisher.empty()) w.add_f32(t.name + ".fisher", {t.rows, t.cols}, t.fisher);
    if (!t.hessian_diag.empty())
      w.add_f32(t.name + ".hessian_diag", {t.cols}, std::vector<float>(t.hessian_diag.begin(), t.hessian_diag.end()));
    if (!t.hessian.empty())
      w.add_f32(t.name + ".hessian", {t.cols, t.cols}, std::vector<float>(t.hessian.begin(), t.hessian.end()));
    if (!t.act_fisher.empty()) w.add_f32(t.name + ".act_fisher", {t.cols}, t.act_fisher);
    const double params = static_cast<double>(t.rows * t.cols);
    traces[t.name] = {{"params", t.rows * t.cols},
                      {"fisher_sum", t.fisher_sum},
                      {"hessian_trace", t.hessian_trace},
                      {"act_fisher_sum", t.act_fisher_sum},
                      {"hutchinson_trace", t.hutchinson_trace},
                      {"hutchinson_trace_per_param", t.hutchinson_trace / params},
                      {"hutchinson_stderr", t.hutchinson_stderr},
                      {"hutchinson_samples", t.hutchinson_samples}};
  }
  for (const auto& [k, v] : metadata) w.set_metadata(k, v);
  w.set_metadata("mpq_sensitivity_version", "1");
  w.set_metadata("traces", traces.dump());
  w.write(path);
}

std::map<std::string, double> read_hutchinson_traces(const TensorStore& sens) {
  std::map<std::string, double> out;
  for (const auto& f : sens.files()) {
    const auto it = f->metadata().find("traces");
    if (it == f->metadata().end()) continue;
    const nlohmann::json j = parse_json_text(it->second, f->path(), "__metadata__.traces");
    const JsonObject traces(j, f->path(), "__metadata__.traces");
    for (const auto& [module, entry] : j.items()) {
      const JsonObject m(entry, f->path(), traces.field(module));
      if (!m.has("hutchinson_trace") || m.get_int("hutchinson_samples", 1) <= 0) continue;
      out[module] = m.get_double("hutchinson_trace");
    }
  }
  return out;
}

const TensorView* find_sensitivity_tensor(const TensorStore& sens, const std::string& name,
                                          const std::vector<int64_t>& shape) {
  if (!sens.has(name)) return nullptr;
  const TensorView& t = sens.get(name);
  if (t.dtype != DType::F32 || t.shape != shape)
    throw_input(t.file, "tensor '" + name + "': " + dtype_name(t.dtype) + " " + shape_str(t.shape) + ", expected F32 " +
                            shape_str(shape));
  return &t;
}

}  // namespace mpq
