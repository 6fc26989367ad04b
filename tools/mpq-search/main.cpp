// mpq-search: mixed-precision format assignment per linear tensor under a size (and
// optionally latency) budget, solved exactly as an ILP (HAWQ-V3 style). See docs/cli.md and
// docs/formats.md ("Plan file").
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "formats/safetensors.h"
#include "lib/common/sha256.h"
#include "lib/search/plan_check.h"
#include "lib/search/search.h"
#include "tools/common.h"

namespace {

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');)
    if (!x.empty()) out.push_back(x);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace mpq;
  CLI::App app{"Choose a format per linear tensor (squeezellm 2/3/4-bit with/without sparse part, nvfp4, fp8, "
               "source dtype) minimizing the predicted loss increase under a bits-per-weight or byte budget "
               "(exact ILP, GLPK), and write a plan for mpq-pack --plan.",
               "mpq-search"};
  std::string model_dir, sens_path, out_path, formats, latency_path, pareto_prefix;
  SearchOptions opt;
  double target_bpw = NAN, max_bytes = NAN, max_latency = NAN;
  int pareto_points = 12, threads = 0;
  bool quiet = false;
  app.add_option("--model", model_dir, "Input model folder (config.json, *.safetensors)")->required();
  app.add_option("--sensitivity", sens_path, "Sensitivity file (mpq-sensitivity: fisher for --cost fisher, "
                                             "hutchinson for --cost hawq)")->required();
  auto* o_bpw = app.add_option("--target-bpw", target_bpw, "Budget in bits per weight of the linear layers "
                                                           "(every stored byte counted)");
  auto* o_bytes = app.add_option("--max-bytes", max_bytes, "Budget in bytes of the linear layers");
  o_bpw->excludes(o_bytes);
  app.add_option("--formats", formats, "Comma list of candidates (default: all): source, fp8, nvfp4, "
                                       "squeezellm-<2|3|4>bit[-sparse], uniform-<2|3|4>bit");
  app.add_option("--cost", opt.cost, "Predicted loss increase: fisher = 1/2 sum F (Q(W)-W)^2, "
                                     "hawq = Tr(H)/n ||Q(W)-W||^2 (Hutchinson), kfac = 1/2 sum_i s_i dW_i E[xx^T] dW_i^T "
                                     "(needs --calib; the default with it)")
      ->check(CLI::IsMember({"fisher", "hawq", "kfac"}))
      ->capture_default_str();
  PlanCheckOptions check;
  bool no_check = false;
  std::string check_formats;
  app.add_option("--calib", check.calib.text,
                 "Calibration text (.txt) or ids (.i32): layer input Hessians for --cost kfac and +gptq "
                 "candidates, and the held-in windows of the final check against single formats");
  app.add_option("--calib-samples", check.calib.samples, "Calibration windows")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--calib-seq-len", check.calib.seq_len, "Tokens per calibration window")
      ->check(CLI::Range(2, 1 << 20))
      ->capture_default_str();
  app.add_flag("--no-check", no_check,
               "Skip the final check (pack and score the plan and every single format within the budget by "
               "KL on the calibration text's first --check-tokens)");
  app.add_option("--check-tokens", check.tokens, "Held-in tokens the check scores")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--check-formats", check_formats,
                 "Comma list of single formats the check compares (default: every candidate within the budget)");
  app.add_option("--tie", opt.ties, "Comma list of module names that take one format within a layer, "
                                    "e.g. 'q_proj,k_proj,v_proj' (repeatable)");
  std::string target_export = "mpq";
  app.add_option("--export", target_export,
                 "Engine the plan must be servable by: modelopt or compressed-tensors (only the formats that "
                 "export expresses, per tensor; q/k/v and gate/up tied as the engine fuses them), or mpq (no "
                 "restriction). Recorded in the plan; mpq-pack --plan packs with it")
      ->check(CLI::IsMember({"mpq", "modelopt", "compressed-tensors"}))
      ->capture_default_str();
  app.add_option("--latency-table", latency_path, "Per-shape, per-candidate latency table (JSON, microseconds)");
  app.add_option("--max-latency-us", max_latency, "Latency budget: sum of the chosen latencies (needs --latency-table)");
  app.add_option("--out", out_path, "Plan file to write (JSON)");
  app.add_option("--pareto", pareto_prefix, "Sweep the budget and write the frontier to PREFIX.json and PREFIX.csv");
  app.add_option("--pareto-points", pareto_points, "Budgets in the sweep")->check(CLI::Range(2, 1000))->capture_default_str();
  app.add_option("--threads", threads, "OpenMP threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  app.add_flag("-q,--quiet", quiet, "No per-tensor progress on stderr");
  app.set_version_flag("--version", tool::version());

  return tool::run(app, argc, argv, [&]() -> int {
    if (threads > 0) omp_set_num_threads(threads);
    if (out_path.empty() && pareto_prefix.empty()) throw Error(ExitCode::kUsage, "give --out and/or --pareto");
    if (!out_path.empty() && std::isnan(target_bpw) && std::isnan(max_bytes))
      throw Error(ExitCode::kUsage, "--out needs a budget: --target-bpw or --max-bytes");
    std::vector<CandidateSpec> specs;
    opt.target_export = parse_export(target_export);
    const bool calibrated = !check.calib.text.empty();
    if (calibrated && app.count("--cost") == 0) opt.cost = "kfac";
    for (const char* flag : {"--calib-samples", "--calib-seq-len", "--check-tokens", "--check-formats", "--no-check"})
      if (!calibrated && app.count(flag) > 0) throw Error(ExitCode::kUsage, std::string(flag) + " needs --calib");
    std::vector<std::string> menu = formats.empty() ? default_candidate_labels() : split_commas(formats);
    if (formats.empty() && calibrated) {  // every format also with GPTQ
      const std::vector<std::string> base = menu;
      for (const std::string& l : base)
        if (l != "source") menu.push_back(l + (l == "nvfp4" ? "+gptq-4o6" : "+gptq"));
    }
    for (const auto& l : menu) {
      CandidateSpec s = parse_format_label(l);
      if (opt.target_export != ExportKind::kMpq && !s.is_source() && !(s.info->exports & export_mask(opt.target_export))) {
        if (!formats.empty())
          throw Error(ExitCode::kUsage, "--formats " + l + ": --export " + target_export + " cannot express " +
                                            s.format + " (" + s.info->export_note + ")");
        continue;  // the default menu: only what the engine loads
      }
      specs.push_back(s);
    }
    LatencyTable lat;
    if (!latency_path.empty()) {
      lat = read_latency_table(latency_path);
      opt.latency = &lat;
    }
    if (!std::isnan(max_latency)) opt.max_latency_us = max_latency;

    const auto t0 = std::chrono::steady_clock::now();
    const auto tensors = evaluate_candidates(
        model_dir, sens_path, specs,
        [&](std::size_t i, std::size_t n, const std::string& m) {
          if (!quiet) std::fprintf(stderr, "[%zu/%zu] %s: %zu candidates\n", i, n, m.c_str(), specs.size());
        },
        calibrated ? &check.calib : nullptr);
    const double eval_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double n = static_cast<double>(total_linear_params(tensors));

    nlohmann::json inputs;
    {
      const TensorStore store = TensorStore::open(model_dir);
      std::vector<std::string> files;
      for (const auto& f : store.files()) files.push_back(f->path());
      for (const auto& [k, v] : sha256_model_inputs(model_dir, files)) inputs[k] = v;
      inputs["sensitivity"] = sha256_file(sens_path);
    }
    auto solve = [&](double budget_bytes, double* seconds) {
      SearchOptions o = opt;
      o.max_bytes = budget_bytes;
      const IlpProblem p = build_problem(tensors, specs, o);
      const auto s0 = std::chrono::steady_clock::now();
      IlpSolution s = solve_assignment_ilp(p);
      *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();
      nlohmann::json plan = make_plan(tensors, specs, o, s, *seconds, inputs);
      plan["model"] = std::filesystem::absolute(model_dir).string();
      plan["sensitivity_file"] = std::filesystem::absolute(sens_path).string();  // mpq-pack --plan reads it
      return std::make_pair(s, plan);
    };

    if (!out_path.empty()) {
      const double budget = !std::isnan(max_bytes) ? max_bytes : target_bpw * n / 8.0;
      double secs = 0;
      auto solved = solve(budget, &secs);
      IlpSolution sol = solved.first;
      nlohmann::json plan = solved.second;
      plan["candidate_evaluation_seconds"] = eval_s;
      if (calibrated) plan["calibration"] = {{"file", std::filesystem::absolute(check.calib.text).string()},
                                             {"sha256", sha256_file(check.calib.text)},
                                             {"samples", check.calib.samples},
                                             {"seq_len", check.calib.seq_len}};
      if (calibrated && !no_check && sol.status == "optimal") {
        // The final check: the plan against every single format within the budget, by KL on
        // held-in calibration windows, as packed and run. A single format that wins replaces it.
        tool::write_json(out_path, plan);  // the plan as solved (mpq-pack reads it for the check)
        std::vector<std::string> singles;
        const std::vector<std::string> names = check_formats.empty() ? std::vector<std::string>{} : split_commas(check_formats);
        for (std::size_t c = 0; c < specs.size(); ++c) {
          if (specs[c].is_source()) continue;
          if (!names.empty() && std::find(names.begin(), names.end(), specs[c].label) == names.end()) continue;
          double bytes = 0;
          bool allowed = true;
          for (const auto& t : tensors) {
            bytes += t.costs[c].bytes;
            allowed = allowed && export_allows(opt.target_export, specs[c], t.cols);
          }
          if (bytes <= budget && allowed) singles.push_back(specs[c].label);
        }
        check.ctx = check.calib.seq_len;
        check.sensitivity = sens_path;
        check.work_dir = out_path + ".check-" + std::to_string(::getpid());
        const std::vector<PlanCheckEntry> scored =
            check_plan(model_dir, out_path, singles, check, [&](std::size_t i, std::size_t k, const std::string& l) {
              if (!quiet) std::fprintf(stderr, "check %zu/%zu: %s\n", i, k, l.c_str());
            });
        std::error_code ec;
        std::filesystem::remove_all(check.work_dir, ec);
        std::size_t best = 0;
        for (std::size_t k = 1; k < scored.size(); ++k)
          if (scored[k].kl < scored[best].kl) best = k;
        // Each entry's predicted Omega under every cost form the inputs allow, next to its
        // measured KL (docs/results.md: rank correlation of prediction and measurement).
        auto predicted = [&](const std::string& label, const std::string& form) {
          double sum = 0;
          for (std::size_t t = 0; t < tensors.size(); ++t) {
            std::size_t c = 0;
            if (label == "plan") c = static_cast<std::size_t>(sol.choice[t]);
            else
              while (specs[c].label != label) ++c;
            sum += candidate_omega(tensors[t].costs[c], form);
          }
          return std::isnan(sum) ? nlohmann::json() : nlohmann::json(sum);
        };
        nlohmann::json rows = nlohmann::json::array();
        for (const PlanCheckEntry& e : scored)
          rows.push_back({{"label", e.label}, {"bytes", e.bytes}, {"bpw", e.bpw}, {"kl", e.kl}, {"ppl", e.ppl},
                          {"predicted", {{"fisher", predicted(e.label, "fisher")},
                                         {"kfac", predicted(e.label, "kfac")},
                                         {"hawq", predicted(e.label, "hawq")}}}});
        nlohmann::json rec = {{"method", "mean KL(base || packed) on held-in calibration windows"},
                              {"tokens", check.tokens},
                              {"ctx", check.ctx},
                              {"entries", rows},
                              {"winner", scored[best].label}};
        if (best != 0) {
          // A single format won: the plan is that format for every tensor.
          const std::string label = scored[best].label;
          std::size_t c = 0;
          while (specs[c].label != label) ++c;
          IlpSolution single = sol;
          single.choice.assign(tensors.size(), static_cast<int>(c));
          single.bytes = 0;
          single.cost = 0;
          for (const auto& t : tensors) {
            single.bytes += t.costs[c].bytes;
            single.cost += candidate_omega(t.costs[c], opt.cost);
          }
          SearchOptions o = opt;
          o.max_bytes = budget;
          nlohmann::json replaced = make_plan(tensors, specs, o, single, secs, inputs);
          for (const char* k : {"model", "sensitivity_file", "candidate_evaluation_seconds", "calibration"})
            if (plan.contains(k)) replaced[k] = plan[k];
          rec["why"] = "single format " + label + " scored KL " + std::to_string(scored[best].kl) +
                       " below the solved plan's " + std::to_string(scored[0].kl) + ": the plan is " + label;
          rec["solved_plan_counts"] = plan["totals"]["candidate_counts"];
          plan = replaced;
          sol = single;
        } else {
          rec["why"] = "the solved plan scored the lowest KL";
        }
        plan["check"] = rec;
        for (const PlanCheckEntry& e : scored)
          std::printf("check        %-28s %.4f bpw  KL %.6f  ppl %.4f%s\n", e.label.c_str(), e.bpw, e.kl, e.ppl,
                      e.label == rec["winner"].get<std::string>() ? "  <- plan" : "");
      }
      tool::write_json(out_path, plan);
      std::printf("wrote        %s\n", out_path.c_str());
      std::printf("status       %s (GLPK, %lld variables, %.3f s)\n", sol.status.c_str(),
                  static_cast<long long>(sol.variables), secs);
      if (sol.status != "optimal") {
        std::fprintf(stderr, "mpq-search: no assignment fits the budget (%.0f bytes = %.4f bpw)\n", budget, 8 * budget / n);
        return static_cast<int>(ExitCode::kInput);
      }
      std::printf("bpw          %.4f (budget %.4f)\n", 8.0 * sol.bytes / n, 8.0 * budget / n);
      std::printf("omega        %.6g (%s)\n", sol.cost, opt.cost.c_str());
      for (const auto& [label, count] : plan["totals"]["candidate_counts"].items())
        std::printf("  %-24s %d tensors\n", label.c_str(), count.get<int>());
    }

    if (!pareto_prefix.empty()) {
      // Budgets from the smallest assignment to the one where every tensor takes its
      // lowest-cost candidate (more bytes cannot help).
      const IlpProblem p0 = build_problem(tensors, specs, opt);
      double lo = 0, hi = 0;
      for (const auto& cs : p0.tensors) {
        double mn = 1e300, best_cost = 1e300, best_bytes = 0;
        for (const auto& c : cs) {
          mn = std::min(mn, c.bytes);
          if (c.cost < best_cost || (c.cost == best_cost && c.bytes < best_bytes)) best_cost = c.cost, best_bytes = c.bytes;
        }
        lo += mn, hi += best_bytes;
      }
      nlohmann::json points = nlohmann::json::array();
      std::string csv = "bpw,bytes,omega,status";
      for (const auto& s : specs) csv += "," + s.label;
      csv += "\n";
      for (int k = 0; k < pareto_points; ++k) {
        // Log-spaced: the interesting low-bpw end gets most points.
        const double budget = lo * std::pow(hi / lo, static_cast<double>(k) / (pareto_points - 1));
        double secs = 0;
        auto [sol, plan] = solve(budget, &secs);
        points.push_back(plan);
        char line[160];
        std::snprintf(line, sizeof line, "%.6f,%.0f,%.9g,%s", 8.0 * sol.bytes / n, sol.bytes, sol.cost, sol.status.c_str());
        csv += line;
        for (const auto& s : specs)
          csv += "," + std::to_string(sol.status == "optimal" ? plan["totals"]["candidate_counts"].value(s.label, 0) : 0);
        csv += "\n";
        if (!quiet) std::fprintf(stderr, "pareto %d/%d: %.4f bpw, omega %.6g\n", k + 1, pareto_points, 8.0 * sol.bytes / n, sol.cost);
      }
      tool::write_json(pareto_prefix + ".json", {{"mpq_pareto_version", 1}, {"cost", opt.cost}, {"points", points}});
      write_file_atomic(pareto_prefix + ".csv", csv.data(), csv.size());
      std::printf("wrote        %s.json, %s.csv (%d budgets, %.4f to %.4f bpw)\n", pareto_prefix.c_str(),
                  pareto_prefix.c_str(), pareto_points, 8 * lo / n, 8 * hi / n);
    }
    return 0;
  });
}
