#include "lib/search/search.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <tuple>

#include "formats/hf_config.h"
#include "formats/safetensors.h"
#include "lib/common/error.h"
#include "lib/common/shape.h"
#include "lib/model/llama.h"
#include "lib/quant/nvfp4.h"

namespace mpq {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Hutchinson traces per module from a sensitivity file's "traces" metadata (empty if none).
std::map<std::string, double> hutchinson_traces(const TensorStore& sens, const std::string& path) {
  std::map<std::string, double> out;
  for (const auto& f : sens.files()) {
    auto it = f->metadata().find("traces");
    if (it == f->metadata().end()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(it->second);
    } catch (const nlohmann::json::exception& e) {
      throw_input(path, std::string("__metadata__.traces: not JSON: ") + e.what());
    }
    for (auto m = j.begin(); m != j.end(); ++m)
      if (m.value().contains("hutchinson_trace") && m.value()["hutchinson_trace"].is_number())
        out[m.key()] = m.value()["hutchinson_trace"].get<double>();
  }
  return out;
}

}  // namespace

std::vector<std::string> default_candidate_labels() {
  return {"squeezellm-2bit", "squeezellm-2bit-sparse", "squeezellm-3bit", "squeezellm-3bit-sparse",
          "squeezellm-4bit", "squeezellm-4bit-sparse", "nvfp4",           "fgmp-10",
          "fgmp-30",         "fgmp-50",                "fp8",             "source"};
}

std::vector<TensorCandidates> evaluate_candidates(const std::string& model_dir, const std::string& sensitivity,
                                                  const std::vector<CandidateSpec>& specs,
                                                  const SearchProgress& progress) {
  const LlamaConfig cfg = load_llama_config(model_dir);
  if (!cfg.quantization_config.is_null())
    throw_input(model_dir + "/config.json", "quantization_config: the input is already quantized; search on the original weights");
  const TensorStore store = TensorStore::open(model_dir);
  const TensorStore sens = TensorStore::open(sensitivity);
  const std::map<std::string, double> traces = hutchinson_traces(sens, sensitivity);
  std::vector<std::unique_ptr<Quantizer>> quants;
  for (const auto& s : specs) quants.push_back(make_quantizer(s));

  std::vector<TensorCandidates> out;
  const std::size_t total = static_cast<std::size_t>(cfg.num_layers) * 7;
  for (int64_t l = 0; l < cfg.num_layers; ++l)
    for (int i = 0; i < 7; ++i) {
      TensorCandidates tc;
      tc.module = "model.layers." + std::to_string(l) + "." + kLinearNames[i];
      const auto [rows, cols] = linear_shape(cfg, i);
      tc.rows = rows, tc.cols = cols;
      const TensorView& t = store.get(tc.module + ".weight");
      if (t.shape != std::vector<int64_t>{rows, cols})
        throw_input(t.file, "tensor '" + t.name + "': shape " + shape_str(t.shape) + " disagrees with config.json " +
                                shape_str({rows, cols}));
      tc.source_dtype = dtype_name_lower(t.dtype);
      const std::vector<float> w = to_f32(t);
      for (std::size_t k = 0; k < w.size(); ++k)
        if (!std::isfinite(w[k]))
          throw_input(t.file, "tensor '" + t.name + "': non-finite value at flat index " + std::to_string(k));
      std::vector<float> fisher;
      const std::string fname = tc.module + ".fisher";
      if (sens.has(fname)) {
        const TensorView& f = sens.get(fname);
        if (f.dtype != DType::F32 || f.shape != std::vector<int64_t>{rows, cols})
          throw_input(f.file, "tensor '" + fname + "': " + dtype_name(f.dtype) + " " + shape_str(f.shape) +
                                  ", expected F32 " + shape_str({rows, cols}));
        fisher = to_f32(f);
      }
      auto tr = traces.find(tc.module);
      const double trace_per_param = tr == traces.end() ? kNaN : tr->second / static_cast<double>(rows * cols);
      std::vector<float> q(w.size());
      for (std::size_t c = 0; c < specs.size(); ++c) {
        CandidateCost cc;
        if (!quants[c]) {
          cc.bytes = static_cast<double>(t.nbytes);
        } else {
          const PackedTensor p =
              quants[c]->encode_weighted(tc.module, w.data(), fisher.empty() ? nullptr : fisher.data(), rows, cols);
          cc.bytes = static_cast<double>(p.bytes());
          quants[c]->decode(p, q.data());
          double err = 0, werr = 0;
          for (std::size_t k = 0; k < w.size(); ++k) {
            const double d = static_cast<double>(q[k]) - static_cast<double>(w[k]);
            err += d * d;
            if (!fisher.empty()) werr += static_cast<double>(fisher[k]) * d * d;
          }
          cc.omega_fisher = fisher.empty() ? kNaN : 0.5 * werr;
          cc.omega_hawq = trace_per_param * err;
        }
        tc.costs.push_back(cc);
      }
      out.push_back(std::move(tc));
      if (progress) progress(out.size(), total, out.back().module);
    }
  return out;
}

bool export_allows(ExportKind kind, const CandidateSpec& spec, int64_t cols) {
  if (kind == ExportKind::kMpq || spec.is_source()) return true;
  const unsigned bit = kind == ExportKind::kModelOpt ? kExportModelOpt : kExportCompressedTensors;
  if (!(spec.info->exports & bit)) return false;
  return !(spec.info->layout == FormatId::kNvfp4 && cols % kNvfp4BlockSize != 0);
}

double LatencyTable::lookup(int64_t rows, int64_t cols, const std::string& candidate) const {
  for (const auto& [r, c, name, us] : entries)
    if (r == rows && c == cols && name == candidate) return us;
  throw_input(file, "entries: no latency for candidate '" + candidate + "' on shape " + shape_str({rows, cols}));
}

LatencyTable read_latency_table(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw_input(path, "cannot open");
  LatencyTable t;
  t.file = path;
  try {
    const nlohmann::json j = nlohmann::json::parse(in);
    t.device = j.value("device", "");
    if (!j.contains("entries") || !j["entries"].is_array()) throw_input(path, "entries: missing or not an array");
    for (std::size_t k = 0; k < j["entries"].size(); ++k) {
      const auto& e = j["entries"][k];
      const std::string where = "entries[" + std::to_string(k) + "]";
      if (!e.is_object() || !e.contains("rows") || !e.contains("cols") || !e.contains("candidate") || !e.contains("us"))
        throw_input(path, where + ": needs rows, cols, candidate, us");
      const double us = e["us"].get<double>();
      if (!std::isfinite(us) || us < 0) throw_input(path, where + ".us: expected a finite value >= 0");
      t.entries.emplace_back(e["rows"].get<int64_t>(), e["cols"].get<int64_t>(), e["candidate"].get<std::string>(), us);
    }
  } catch (const nlohmann::json::exception& e) {
    throw_input(path, std::string("not a latency table: ") + e.what());
  }
  return t;
}

std::map<std::string, PlanEntry> read_plan(const std::string& path, std::string* sensitivity,
                                           std::string* sensitivity_sha256, std::string* target_export) {
  std::ifstream in(path);
  if (!in) throw_input(path, "cannot open");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw_input(path, std::string("not JSON: ") + e.what());
  }
  if (!j.is_object() || j.value("mpq_plan_version", 0) != 1) throw_input(path, "mpq_plan_version: expected 1");
  if (!j.contains("solver") || j["solver"].value("status", "") != "optimal")
    throw_input(path, "solver.status: not \"optimal\" (the search found no assignment; nothing to pack)");
  if (!j.contains("tensors") || !j["tensors"].is_object() || j["tensors"].empty())
    throw_input(path, "tensors: missing or empty");
  std::map<std::string, PlanEntry> out;
  for (const auto& [module, e] : j["tensors"].items()) {
    if (!e.is_object() || !e.contains("candidate") || !e["candidate"].is_string())
      throw_input(path, "tensors." + module + ".candidate: missing or not a string");
    CandidateSpec spec;
    try {
      spec = parse_format_label(e["candidate"].get<std::string>());
    } catch (const Error& err) {
      throw_input(path, "tensors." + module + ".candidate: " + err.what());
    }
    PlanEntry pe;
    pe.candidate = spec.label;
    pe.format = spec.format;
    pe.quantizer = make_quantizer(spec);
    pe.params = format_params_json(spec);
    out[module] = std::move(pe);
  }
  if (target_export) {
    *target_export = "mpq";
    if (j.contains("export")) {
      if (!j["export"].is_string()) throw_input(path, "export: expected a string");
      *target_export = j["export"].get<std::string>();
      try {
        parse_export(*target_export);
      } catch (const Error& e) {
        throw_input(path, std::string("export: ") + e.what());
      }
    }
  }
  if (sensitivity) *sensitivity = j.value("sensitivity_file", "");
  if (sensitivity_sha256) *sensitivity_sha256 = j.contains("inputs_sha256") ? j["inputs_sha256"].value("sensitivity", "") : "";
  return out;
}

int64_t total_linear_params(const std::vector<TensorCandidates>& tensors) {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.rows * t.cols;
  return n;
}

IlpProblem build_problem(const std::vector<TensorCandidates>& tensors, const std::vector<CandidateSpec>& specs,
                         const SearchOptions& opt) {
  if (opt.cost != "fisher" && opt.cost != "hawq")
    throw Error(ExitCode::kUsage, "--cost '" + opt.cost + "': expected fisher or hawq");
  if (std::isfinite(opt.max_latency_us) && !opt.latency)
    throw Error(ExitCode::kUsage, "--max-latency-us needs --latency-table");
  IlpProblem p;
  p.max_bytes = opt.max_bytes;
  p.max_latency_us = opt.max_latency_us;
  std::map<std::string, int> index;
  for (const auto& t : tensors) {
    std::vector<IlpCandidate> cs;
    for (std::size_t c = 0; c < specs.size(); ++c) {
      const CandidateCost& cc = t.costs[c];
      const double omega = opt.cost == "fisher" ? cc.omega_fisher : cc.omega_hawq;
      if (std::isnan(omega))
        throw Error(ExitCode::kInput, opt.cost == "fisher"
                                          ? "sensitivity file: '" + t.module + ".fisher' missing (needed by --cost fisher)"
                                          : "sensitivity file: no Hutchinson trace for '" + t.module +
                                                "' (run mpq-sensitivity --kind hutchinson; needed by --cost hawq)");
      const double lat = opt.latency ? opt.latency->lookup(t.rows, t.cols, specs[c].label) : 0.0;
      cs.push_back({cc.bytes, omega, lat, export_allows(opt.target_export, specs[c], t.cols)});
    }
    index[t.module] = static_cast<int>(p.tensors.size());
    p.tensors.push_back(std::move(cs));
  }
  // Ties: per layer prefix, the modules whose last name component is listed; an engine
  // export adds its fused layers.
  std::vector<std::string> ties = opt.ties;
  if (opt.target_export != ExportKind::kMpq)
    for (const char* fused : {"q_proj,k_proj,v_proj", "gate_proj,up_proj"})
      if (std::find(ties.begin(), ties.end(), fused) == ties.end()) ties.push_back(fused);
  for (const auto& tie : ties) {
    std::vector<std::string> names;
    std::stringstream ss(tie);
    for (std::string s; std::getline(ss, s, ',');)
      if (!s.empty()) names.push_back(s);
    if (names.size() < 2) throw Error(ExitCode::kUsage, "--tie '" + tie + "': needs at least two module names");
    std::map<std::string, std::vector<int>> groups;  // layer prefix -> members
    for (const auto& [module, k] : index) {
      const std::size_t dot = module.rfind('.');
      const std::string last = module.substr(dot + 1);
      for (const auto& n : names)
        if (last == n) groups[module.substr(0, module.find('.', module.find("layers.") + 7))].push_back(k);
    }
    if (groups.empty()) throw Error(ExitCode::kUsage, "--tie '" + tie + "': no module matches");
    for (auto& [prefix, members] : groups)
      if (members.size() > 1) p.tie_groups.push_back(members);
  }
  return p;
}

nlohmann::json make_plan(const std::vector<TensorCandidates>& tensors, const std::vector<CandidateSpec>& specs,
                         const SearchOptions& opt, const IlpSolution& sol, double solve_seconds,
                         const nlohmann::json& inputs) {
  const int64_t n = total_linear_params(tensors);
  nlohmann::json labels = nlohmann::json::array();
  for (const auto& s : specs) labels.push_back(s.label);
  nlohmann::json plan = {{"mpq_plan_version", 1},
                         {"tool", std::string("mpq-search ") + MPQ_VERSION},
                         {"cost", opt.cost},
                         {"candidates", labels},
                         {"ties", opt.ties},
                         {"export", export_name(opt.target_export)},
                         {"inputs_sha256", inputs}};
  plan["budget"] = {{"max_bytes", std::isfinite(opt.max_bytes) ? nlohmann::json(opt.max_bytes) : nlohmann::json()},
                    {"target_bpw", std::isfinite(opt.max_bytes) ? nlohmann::json(8.0 * opt.max_bytes / n) : nlohmann::json()},
                    {"max_latency_us", std::isfinite(opt.max_latency_us) ? nlohmann::json(opt.max_latency_us) : nlohmann::json()}};
  plan["solver"] = {{"name", "GLPK"},
                    {"status", sol.status},
                    {"mip_gap", sol.mip_gap},
                    {"lp_bound", sol.lp_bound},
                    {"relaxation_gap", sol.relaxation_gap},
                    {"variables", sol.variables},
                    {"seconds", solve_seconds}};
  if (sol.status != "optimal") return plan;
  nlohmann::json tj = nlohmann::json::object();
  std::map<std::string, int> counts;
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    const CandidateSpec& s = specs[static_cast<std::size_t>(sol.choice[t])];
    const CandidateCost& cc = tensors[t].costs[static_cast<std::size_t>(sol.choice[t])];
    const nlohmann::json params = format_params_json(s);
    tj[tensors[t].module] = {{"candidate", s.label},
                             {"format", s.format == "source" ? tensors[t].source_dtype : s.format},
                             {"params", params},
                             {"shape", {tensors[t].rows, tensors[t].cols}},
                             {"bytes", cc.bytes},
                             {"omega", opt.cost == "fisher" ? cc.omega_fisher : cc.omega_hawq}};
    ++counts[s.label];
  }
  plan["tensors"] = tj;
  plan["totals"] = {{"params", n},
                    {"bytes", sol.bytes},
                    {"bpw", 8.0 * sol.bytes / static_cast<double>(n)},
                    {"omega", sol.cost},
                    {"latency_us", opt.latency ? nlohmann::json(sol.latency_us) : nlohmann::json()},
                    {"candidate_counts", counts}};
  return plan;
}

}  // namespace mpq
