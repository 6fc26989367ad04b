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
#include "formats/sensitivity_file.h"
#include "lib/common/json_fields.h"
#include "lib/common/error.h"
#include "lib/common/shape.h"
#include "lib/model/llama.h"
#include "calibration/gptq_calibration.h"
#include "lib/model/llama_grad.h"
#include "lib/quant/gptq.h"
#include "lib/quant/gptq_grids.h"
#include "lib/quant/nvfp4.h"

namespace mpq {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

}  // namespace

double candidate_omega(const CandidateCost& cc, const std::string& cost) {
  return cost == "fisher" ? cc.omega_fisher : cost == "kfac" ? cc.omega_kfac : cc.omega_hawq;
}

std::vector<std::string> default_candidate_labels() {
  return {"squeezellm-2bit", "squeezellm-2bit-sparse", "squeezellm-3bit", "squeezellm-3bit-sparse",
          "squeezellm-4bit", "squeezellm-4bit-sparse", "nvfp4",           "fgmp-10",
          "fgmp-30",         "fgmp-50",                "fp8",             "int2-g16",
          "int3",            "int3-g32",               "int3-g16",        "int4",
          "int4-g32",        "int4-g16",               "int8",            "source"};
}

std::vector<TensorCandidates> evaluate_candidates(const std::string& model_dir, const std::string& sensitivity,
                                                  const std::vector<CandidateSpec>& specs,
                                                  const SearchProgress& progress, const CalibWindowOptions* calib) {
  const bool calibrated = calib && !calib->text.empty();
  for (const CandidateSpec& s : specs)
    if (s.gptq && !calibrated)
      throw Error(ExitCode::kUsage, "candidate '" + s.label + "' needs --calib (GPTQ compensates with the layer Hessians)");
  const LlamaConfig cfg = load_llama_config(model_dir);
  if (!cfg.quantization_config.is_null())
    throw_input(model_dir + "/config.json", "quantization_config: the input is already quantized; search on the original weights");
  const TensorStore store = TensorStore::open(model_dir);
  check_config_against_tensors(cfg, store);
  const TensorStore sens = TensorStore::open(sensitivity);
  const std::map<std::string, double> traces = read_hutchinson_traces(sens);
  std::vector<std::unique_ptr<Quantizer>> quants;
  for (const auto& s : specs) quants.push_back(make_quantizer(s));
  // Layer input Hessians of the original model, one layer at a time (the pass keeps every
  // weight: its function only records H).
  std::map<std::string, std::vector<double>> layer_h;
  std::unique_ptr<GptqSequentialPass> pass;
  if (calibrated) {
    check_llama_checkpoint(cfg, store);
    pass = std::make_unique<GptqSequentialPass>(
        cfg, store, read_calibration_ids(model_dir, calib->text, cfg.vocab_size), *calib,
        [&](const std::string& module, const std::vector<double>& h, std::vector<float>&) -> std::optional<PackedTensor> {
          layer_h[module] = h;
          return std::nullopt;
        });
  }

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
      if (const TensorView* f = find_sensitivity_tensor(sens, fname, {rows, cols})) fisher = to_f32(*f);
      auto tr = traces.find(tc.module);
      const double trace_per_param = tr == traces.end() ? kNaN : tr->second / static_cast<double>(rows * cols);
      std::vector<double> H;  // cols x cols, 2/N sum x x^T
      std::vector<double> row_s;  // K-FAC output factor s_i
      if (pass) {
        (void)pass->take(tc.module);
        H = std::move(layer_h.at(tc.module));
        layer_h.erase(tc.module);
        if (!fisher.empty()) {
          double ex2 = 0;  // sum_j E[x_j^2]
          for (int64_t j = 0; j < cols; ++j) ex2 += 0.5 * H[static_cast<std::size_t>(j * cols + j)];
          row_s.assign(static_cast<std::size_t>(rows), 0.0);
          for (int64_t r = 0; r < rows; ++r) {
            double f = 0;
            for (int64_t j = 0; j < cols; ++j) f += fisher[static_cast<std::size_t>(r * cols + j)];
            row_s[static_cast<std::size_t>(r)] = ex2 > 0 ? f / ex2 : 0.0;
          }
        }
      }
      std::vector<float> q(w.size());
      for (std::size_t c = 0; c < specs.size(); ++c) {
        CandidateCost cc;
        cc.omega_kfac = cc.output_mse = pass ? 0.0 : kNaN;
        if (!quants[c]) {
          cc.bytes = static_cast<double>(t.nbytes);
        } else {
          const float* fp = fisher.empty() ? nullptr : fisher.data();
          PackedTensor p;
          if (specs[c].gptq) {
            GptqGridInput in{tc.module, w.data(), fp, rows, cols};
            in.four_over_six = specs[c].four_over_six;
            std::unique_ptr<GptqGrid> grid = make_gptq_grid(*quants[c], in);
            q = gptq_quantize(tc.module, w.data(), rows, cols, H.data(), *grid, GptqOptions{});
            p = grid->encode();
          } else {
            p = quants[c]->encode_weighted(tc.module, w.data(), fp, rows, cols);
            quants[c]->decode(p, q.data());
          }
          cc.bytes = static_cast<double>(p.bytes());
          double err = 0, werr = 0;
          for (std::size_t k = 0; k < w.size(); ++k) {
            const double d = static_cast<double>(q[k]) - static_cast<double>(w[k]);
            err += d * d;
            if (!fisher.empty()) werr += static_cast<double>(fisher[k]) * d * d;
          }
          cc.omega_fisher = fisher.empty() ? kNaN : 0.5 * werr;
          cc.omega_hawq = trace_per_param * err;
          if (pass) {
            // Per row: d_i (H/2) d_i^T = E[(d_i x)^2]; float64 GEMM of the error with H.
            Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> Hm(H.data(), cols, cols);
            Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> D(rows, cols);
            for (int64_t k = 0; k < rows * cols; ++k)
              D.data()[k] = static_cast<double>(q[static_cast<std::size_t>(k)]) - static_cast<double>(w[static_cast<std::size_t>(k)]);
            const Eigen::VectorXd per_row = ((D * Hm).cwiseProduct(D)).rowwise().sum() * 0.5;
            double kf = 0, mse = 0;
            for (int64_t r = 0; r < rows; ++r) {
              mse += per_row(r);
              if (!row_s.empty()) kf += row_s[static_cast<std::size_t>(r)] * per_row(r);
            }
            cc.output_mse = mse;
            cc.omega_kfac = row_s.empty() ? kNaN : 0.5 * kf;
          }
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
  if (!(spec.info->exports & export_mask(kind))) return false;
  return !(spec.info->layout == FormatId::kNvfp4 && cols % kNvfp4BlockSize != 0);
}

double LatencyTable::lookup(int64_t rows, int64_t cols, const std::string& candidate) const {
  for (const auto& [r, c, name, us] : entries)
    if (r == rows && c == cols && name == candidate) return us;
  throw_input(file, "entries: no latency for candidate '" + candidate + "' on shape " + shape_str({rows, cols}));
}

LatencyTable read_latency_table(const std::string& path) {
  const nlohmann::json j = read_json_file(path);
  const JsonObject top(j, path);
  LatencyTable t;
  t.file = path;
  t.device = top.get_string("device", "");
  const nlohmann::json& entries = top.get_array("entries");
  for (std::size_t k = 0; k < entries.size(); ++k) {
    const JsonObject e(entries[k], path, "entries[" + std::to_string(k) + "]");
    const double us = e.get_double("us");
    if (!std::isfinite(us) || us < 0) e.fail("us", "expected a finite value >= 0");
    t.entries.emplace_back(e.get_int("rows"), e.get_int("cols"), e.get_string("candidate"), us);
  }
  return t;
}

std::map<std::string, PlanEntry> read_plan(const std::string& path, std::string* sensitivity,
                                           std::string* sensitivity_sha256, std::string* target_export) {
  const nlohmann::json j = read_json_file(path);
  const JsonObject plan(j, path);
  if (plan.get_int("mpq_plan_version") != 1) plan.fail("mpq_plan_version", "expected 1");
  if (plan.get_object("solver").get_string("status") != "optimal")
    plan.fail("solver.status", "not \"optimal\" (the search found no assignment; nothing to pack)");
  const JsonObject tensors = plan.get_object("tensors");
  if (j["tensors"].empty()) plan.fail("tensors", "empty");
  std::map<std::string, PlanEntry> out;
  for (const auto& [module, e] : j["tensors"].items()) {
    const JsonObject entry(e, path, tensors.field(module));
    const std::string label = entry.get_string("candidate");
    CandidateSpec spec;
    try {
      spec = parse_format_label(label);
    } catch (const Error& err) {
      entry.fail("candidate", err.what());
    }
    PlanEntry pe;
    pe.candidate = spec.label;
    pe.format = spec.format;
    pe.quantizer = make_quantizer(spec);
    pe.params = format_params_json(spec);
    pe.gptq = spec.gptq;
    pe.four_over_six = spec.four_over_six;
    out[module] = std::move(pe);
  }
  if (target_export) {
    *target_export = plan.get_string("export", "mpq");
    try {
      parse_export(*target_export);
    } catch (const Error& e) {
      plan.fail("export", e.what());
    }
  }
  const std::string sens_file = plan.get_string("sensitivity_file", "");
  std::string sens_sha;
  if (const auto inputs = plan.find_object("inputs_sha256")) sens_sha = inputs->get_string("sensitivity", "");
  if (sensitivity) *sensitivity = sens_file;
  if (sensitivity_sha256) *sensitivity_sha256 = sens_sha;
  return out;
}

int64_t total_linear_params(const std::vector<TensorCandidates>& tensors) {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.rows * t.cols;
  return n;
}

IlpProblem build_problem(const std::vector<TensorCandidates>& tensors, const std::vector<CandidateSpec>& specs,
                         const SearchOptions& opt) {
  if (opt.cost != "fisher" && opt.cost != "hawq" && opt.cost != "kfac")
    throw Error(ExitCode::kUsage, "--cost '" + opt.cost + "': expected fisher, hawq or kfac");
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
      const double omega = candidate_omega(cc, opt.cost);
      if (std::isnan(omega))
        throw Error(ExitCode::kInput,
                    opt.cost == "fisher" ? "sensitivity file: '" + t.module + ".fisher' missing (needed by --cost fisher)"
                    : opt.cost == "kfac"
                        ? "--cost kfac needs --calib and the sensitivity file's '" + t.module + ".fisher'"
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
                             {"omega", candidate_omega(cc, opt.cost)}};
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
