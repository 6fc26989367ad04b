// Tests of lib/search/search and the mpq-search tool: candidate bytes and both Omega forms
// against an independent computation in the test, tie groups, plan contents and budget,
// Pareto output, and bad input / infeasible budgets (exit codes, one error line).
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <fstream>
#include <set>
#include <random>

#include <nlohmann/json.hpp>

#include "formats/hf_config.h"
#include "formats/safetensors.h"
#include "lib/common/error.h"
#include "lib/model/llama.h"
#include "lib/search/search.h"
#include "tests/test_util.h"

namespace mpq {
namespace {

// A tiny random model plus a synthetic sensitivity file: random positive Fisher per linear
// and Hutchinson traces in the metadata (when `traces`), optionally without one module.
struct SearchFixture {
  std::string dir, sens;
  LlamaConfig cfg;
  SearchFixture(const std::string& tag, bool traces = true, const std::string& drop_fisher = "") {
    dir = test::scratch_dir(tag) + "/model";
    test::TinyLlamaSpec spec;
    spec.hidden = 48, spec.intermediate = 72, spec.layers = 2, spec.heads = 4, spec.kv_heads = 2, spec.vocab = 64;
    test::write_tiny_llama(dir, spec);
    cfg = load_llama_config(dir);
    sens = test::scratch_dir(tag) + "/sens.safetensors";
    SafetensorsWriter w;
    nlohmann::json tr = nlohmann::json::object();
    std::mt19937 g(3);
    std::exponential_distribution<float> e(1.0f);
    for (int64_t l = 0; l < cfg.num_layers; ++l)
      for (int i = 0; i < 7; ++i) {
        const std::string m = "model.layers." + std::to_string(l) + "." + kLinearNames[i];
        const auto [r, c] = linear_shape(cfg, i);
        std::vector<float> f(static_cast<std::size_t>(r * c));
        for (float& x : f) x = e(g) * 1e-3f;
        if (m != drop_fisher) w.add_f32(m + ".fisher", {r, c}, f);
        tr[m] = {{"params", r * c}, {"hutchinson_trace", 0.5 + l + 0.1 * i}};
      }
    if (traces) w.set_metadata("traces", tr.dump());
    w.set_metadata("kinds", "fisher");
    w.write(sens);
  }
};

std::vector<CandidateSpec> specs_of(const std::vector<std::string>& labels) {
  std::vector<CandidateSpec> s;
  for (const auto& l : labels) s.push_back(parse_format_label(l));
  return s;
}

TEST(Search, ParsesCandidateLabels) {
  EXPECT_EQ(parse_format_label("squeezellm-3bit-sparse").params.bits, 3);
  EXPECT_DOUBLE_EQ(parse_format_label("squeezellm-3bit-sparse").params.outlier_pct, 0.45);
  EXPECT_DOUBLE_EQ(parse_format_label("squeezellm-2bit").params.outlier_pct, 0.0);
  EXPECT_DOUBLE_EQ(parse_format_label("fgmp-30").fgmp.fp8_fraction, 0.30);
  EXPECT_EQ(parse_format_label("uniform-4bit").format, "uniform");
  for (const char* bad : {"squeezellm-5bit", "uniform-3bit-sparse", "fgmp-101", "fgmp-x", "int4", ""})
    EXPECT_THROW(parse_format_label(bad), Error) << bad;
}

TEST(Search, CandidateCostsMatchIndependentComputation) {
  SearchFixture fx("search-costs");
  const auto specs = specs_of({"squeezellm-3bit", "squeezellm-2bit-sparse", "nvfp4", "fgmp-30", "fp8", "source"});
  const auto tensors = evaluate_candidates(fx.dir, fx.sens, specs);
  ASSERT_EQ(tensors.size(), static_cast<std::size_t>(fx.cfg.num_layers * 7));
  const TensorStore store = TensorStore::open(fx.dir), sens = TensorStore::open(fx.sens);
  for (const auto& t : tensors) {
    const std::vector<float> w = to_f32(store.get(t.module + ".weight"));
    const std::vector<float> f = to_f32(sens.get(t.module + ".fisher"));
    const int64_t l = std::stoll(t.module.substr(13));
    int i = 0;
    while (t.module.substr(t.module.size() - std::string(kLinearNames[i]).size()) != kLinearNames[i]) ++i;
    const double trace = 0.5 + static_cast<double>(l) + 0.1 * i;
    for (std::size_t c = 0; c < specs.size(); ++c) {
      const CandidateCost& cc = t.costs[c];
      if (specs[c].format == "source") {
        EXPECT_EQ(cc.bytes, 4.0 * static_cast<double>(w.size()));
        EXPECT_EQ(cc.omega_fisher, 0.0);
        continue;
      }
      const auto q = make_quantizer(specs[c]);
      const PackedTensor p = q->encode_weighted(t.module, w.data(), f.data(), t.rows, t.cols);
      std::vector<float> d(w.size());
      q->decode(p, d.data());
      long double werr = 0, err = 0;
      for (std::size_t k = 0; k < w.size(); ++k) {
        const long double e = static_cast<long double>(d[k]) - w[k];
        werr += f[k] * e * e;
        err += e * e;
      }
      EXPECT_EQ(cc.bytes, static_cast<double>(p.bytes())) << t.module << " " << specs[c].label;
      EXPECT_NEAR(cc.omega_fisher, static_cast<double>(0.5L * werr), 1e-9 * static_cast<double>(werr) + 1e-30);
      EXPECT_NEAR(cc.omega_hawq, static_cast<double>(trace * err / static_cast<long double>(w.size())),
                  1e-9 * static_cast<double>(err) + 1e-30);
      EXPECT_GT(cc.omega_fisher, 0.0);
    }
  }
}

TEST(Search, TiesBudgetsAndPlan) {
  SearchFixture fx("search-plan");
  const auto specs = specs_of({"squeezellm-2bit", "squeezellm-4bit", "nvfp4", "fp8", "source"});
  const auto tensors = evaluate_candidates(fx.dir, fx.sens, specs);
  const double n = static_cast<double>(total_linear_params(tensors));
  SearchOptions opt;
  opt.ties = {"q_proj,k_proj,v_proj", "gate_proj,up_proj"};
  opt.max_bytes = 5.0 * n / 8.0;
  const IlpProblem p = build_problem(tensors, specs, opt);
  ASSERT_EQ(p.tie_groups.size(), static_cast<std::size_t>(2 * fx.cfg.num_layers));
  const IlpSolution s = solve_assignment_ilp(p);
  ASSERT_EQ(s.status, "optimal");
  EXPECT_LE(s.bytes, opt.max_bytes);
  const nlohmann::json plan = make_plan(tensors, specs, opt, s, 0.0, {{"x", "y"}});
  for (int64_t l = 0; l < fx.cfg.num_layers; ++l) {
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    EXPECT_EQ(plan["tensors"][pre + "self_attn.q_proj"]["candidate"], plan["tensors"][pre + "self_attn.k_proj"]["candidate"]);
    EXPECT_EQ(plan["tensors"][pre + "self_attn.q_proj"]["candidate"], plan["tensors"][pre + "self_attn.v_proj"]["candidate"]);
    EXPECT_EQ(plan["tensors"][pre + "mlp.gate_proj"]["candidate"], plan["tensors"][pre + "mlp.up_proj"]["candidate"]);
  }
  double bytes = 0, omega = 0;
  for (const auto& [m, e] : plan["tensors"].items()) bytes += e["bytes"].get<double>(), omega += e["omega"].get<double>();
  EXPECT_DOUBLE_EQ(bytes, plan["totals"]["bytes"].get<double>());
  EXPECT_NEAR(omega, plan["totals"]["omega"].get<double>(), 1e-12 * omega);
  EXPECT_LE(plan["totals"]["bpw"].get<double>(), 5.0);
  // An unlimited budget keeps every tensor in its source dtype (Omega 0 is the minimum).
  opt.max_bytes = 1e18;
  const IlpSolution all = solve_assignment_ilp(build_problem(tensors, specs, opt));
  for (int c : all.choice) EXPECT_EQ(specs[static_cast<std::size_t>(c)].label, "source");
  // The HAWQ form without traces names the missing input.
  SearchFixture no_tr("search-notrace", false);
  const auto t2 = evaluate_candidates(no_tr.dir, no_tr.sens, specs);
  opt.cost = "hawq";
  EXPECT_THROW(build_problem(t2, specs, opt), Error);
}

using test::ToolRun;
ToolRun run(const std::string& args) { return test::run_tool(test::tool_path("mpq-search") + " " + args + " 2>&1"); }
int error_lines(const std::string& s) { return static_cast<int>(test::error_lines(s).size()); }

TEST(SearchTool, PlanParetoAndErrors) {
  SearchFixture fx("search-tool");
  const std::string base = "-q --model " + fx.dir + " --sensitivity " + fx.sens;
  const std::string plan = test::scratch_dir("search-tool-out") + "/plan.json";
  ToolRun r = run(base + " --formats squeezellm-2bit,nvfp4,fp8 --target-bpw 4.6 --out " + plan);
  ASSERT_EQ(r.rc, 0) << r.out;
  std::ifstream in(plan);
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["solver"]["status"], "optimal");
  EXPECT_LE(j["totals"]["bpw"].get<double>(), 4.6);
  EXPECT_TRUE(j["inputs_sha256"].contains("sensitivity"));
  EXPECT_EQ(j["tensors"].size(), 14u);

  const std::string par = test::scratch_dir("search-tool-par") + "/front";
  r = run(base + " --formats squeezellm-2bit,nvfp4,fp8,source --pareto " + par + " --pareto-points 6");
  ASSERT_EQ(r.rc, 0) << r.out;
  std::ifstream pj(par + ".json"), pc(par + ".csv");
  const nlohmann::json front = nlohmann::json::parse(pj);
  ASSERT_EQ(front["points"].size(), 6u);
  double prev = 1e300;
  for (const auto& pt : front["points"]) {  // more budget never predicts more loss
    EXPECT_LE(pt["totals"]["omega"].get<double>(), prev * (1 + 1e-12));
    prev = pt["totals"]["omega"].get<double>();
  }
  std::string header;
  std::getline(pc, header);
  EXPECT_EQ(header, "bpw,bytes,omega,status,squeezellm-2bit,nvfp4,fp8,source");

  r = run(base + " --out " + plan);  // no budget
  EXPECT_EQ(r.rc, 2) << r.out;
  r = run(base + " --formats nvfp4 --target-bpw 2 --out " + plan);  // infeasible
  EXPECT_EQ(r.rc, 3) << r.out;
  r = run(base + " --formats nvfp4,bogus --target-bpw 5 --out " + plan);
  EXPECT_EQ(r.rc, 2) << r.out;
  EXPECT_EQ(error_lines(r.out), 1) << r.out;
  SearchFixture missing("search-tool-miss", true, "model.layers.1.mlp.up_proj");
  r = run("-q --model " + missing.dir + " --sensitivity " + missing.sens + " --target-bpw 5 --out " + plan);
  EXPECT_EQ(r.rc, 3) << r.out;
  EXPECT_EQ(error_lines(r.out), 1) << r.out;
  EXPECT_NE(r.out.find("model.layers.1.mlp.up_proj.fisher"), std::string::npos) << r.out;
  r = run("-q --model " + fx.dir + " --sensitivity /nonexistent.safetensors --target-bpw 5 --out " + plan);
  EXPECT_EQ(r.rc, 3) << r.out;
  EXPECT_NE(r.out.find("/nonexistent.safetensors"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace mpq

namespace mpq {
namespace {

TEST(SearchTool, PackPlanRoundTrip) {
  SearchFixture fx("search-pack");
  const std::string out = test::scratch_dir("search-pack-out");
  const std::string plan = out + "/plan.json";
  ToolRun r = run("-q --model " + fx.dir + " --sensitivity " + fx.sens +
                  " --formats squeezellm-2bit,squeezellm-3bit-sparse,nvfp4,fgmp-30,fp8,source --target-bpw 5 --out " + plan);
  ASSERT_EQ(r.rc, 0) << r.out;
  std::string pout;
  ASSERT_EQ(test::run_command(test::tools_dir() + "/mpq-pack -q --model " + fx.dir + " --plan " + plan + " --out " + out +
                                  "/mixed 2>&1", &pout), 0) << pout;
  std::ifstream pj(plan), mj(out + "/mixed/mpq_manifest.json"), cj(out + "/mixed/config.json");
  const nlohmann::json p = nlohmann::json::parse(pj), m = nlohmann::json::parse(mj), c = nlohmann::json::parse(cj);
  const auto& qc = c["quantization_config"];
  EXPECT_EQ(qc["quant_method"], "mpq");  // squeezellm / fgmp entries: mpq-native
  EXPECT_EQ(qc["format"], "mixed");
  double quantized_bytes = 0;
  for (const auto& [module, e] : p["tensors"].items()) {
    if (e["candidate"] == "source") {  // kept as stored, listed as excluded
      EXPECT_EQ(m["tensors"][module + ".weight"]["format"], "f32") << module;
      continue;
    }
    // The plan's byte accounting is exactly what the packer wrote.
    EXPECT_EQ(m["tensors"][module]["bytes"].get<double>(), e["bytes"].get<double>()) << module;
    EXPECT_EQ(m["tensors"][module]["format"], e["format"]) << module;
    EXPECT_EQ(qc["quantized_layers"][module]["candidate"], e["candidate"]) << module;
    quantized_bytes += e["bytes"].get<double>();
  }
  EXPECT_EQ(m["totals"]["quantized_bytes"].get<double>(), quantized_bytes);
  // The loader detects each module's format; the checkpoint evaluates.
  const std::string ids = out + "/ids.i32";
  std::vector<uint8_t> b(4 * 64);
  for (std::size_t i = 0; i < 64; ++i) b[4 * i] = static_cast<uint8_t>((i * 13) % 64);
  test::write_bytes(ids, b);
  ASSERT_EQ(test::run_command(test::tools_dir() + "/mpq-eval -q --model " + out + "/mixed --tokens " + ids +
                                  " --ctx 32 2>&1", &pout), 0) << pout;
  std::string iout;
  ASSERT_EQ(test::run_command(test::tools_dir() + "/mpq-inspect " + out + "/mixed 2>&1", &iout), 0);
  for (const auto& [module, e] : p["tensors"].items())
    if (e["candidate"] != "source") {
      EXPECT_NE(iout.find(module), std::string::npos);
    }

  // A different sensitivity file than the plan's is refused; so is a plan missing a module.
  SearchFixture other("search-pack-other", false);  // no traces: other bytes
  r.rc = test::run_command(test::tools_dir() + "/mpq-pack -q --model " + fx.dir + " --plan " + plan + " --sensitivity " +
                               other.sens + " --out " + out + "/x 2>&1", &pout);
  EXPECT_EQ(r.rc, 3) << pout;
  EXPECT_NE(pout.find("sha256"), std::string::npos) << pout;
  nlohmann::json cut = p;
  cut["tensors"].erase("model.layers.1.mlp.down_proj");
  const std::string cut_path = out + "/cut.json";
  test::write_text(cut_path, cut.dump());
  r.rc = test::run_command(test::tools_dir() + "/mpq-pack -q --model " + fx.dir + " --plan " + cut_path + " --out " + out +
                               "/y 2>&1", &pout);
  EXPECT_EQ(r.rc, 3) << pout;
  EXPECT_NE(pout.find("model.layers.1.mlp.down_proj"), std::string::npos) << pout;
  EXPECT_NE(pout.find("cut.json"), std::string::npos) << pout;
  r.rc = test::run_command(test::tools_dir() + "/mpq-pack -q --model " + fx.dir + " --plan " + plan +
                               " --format nvfp4 --out " + out + "/z 2>&1", &pout);
  EXPECT_EQ(r.rc, 2) << pout;
}

}  // namespace
}  // namespace mpq

namespace mpq {
namespace {

// A latency table (as mpq-bench writes it) bounds the summed latency; a missing entry names
// the file, shape and candidate.
TEST(SearchTool, LatencyBudget) {
  SearchFixture fx("search-lat");
  const std::string dir = test::scratch_dir("search-lat-out");
  const std::vector<std::array<int64_t, 2>> shapes = {{48, 48}, {24, 48}, {72, 48}, {48, 72}};
  nlohmann::json entries = nlohmann::json::array();
  for (const auto& s : shapes) {  // fp8: fast and big; nvfp4: slow and small
    entries.push_back({{"rows", s[0]}, {"cols", s[1]}, {"candidate", "fp8"}, {"us", 1.0}});
    entries.push_back({{"rows", s[0]}, {"cols", s[1]}, {"candidate", "nvfp4"}, {"us", 3.0}});
  }
  test::write_text(dir + "/lat.json", nlohmann::json{{"device", "test"}, {"entries", entries}}.dump());
  const std::string base = "-q --model " + fx.dir + " --sensitivity " + fx.sens + " --formats nvfp4,fp8 --max-bytes 1e12" +
                           " --latency-table " + dir + "/lat.json --out " + dir + "/p.json";
  // Unbounded bytes: Omega alone picks fp8 everywhere (14 x 1 us).
  ToolRun r = run(base + " --max-latency-us 1000");
  ASSERT_EQ(r.rc, 0) << r.out;
  std::ifstream a(dir + "/p.json");
  nlohmann::json p = nlohmann::json::parse(a);
  EXPECT_DOUBLE_EQ(p["totals"]["latency_us"].get<double>(), 14.0);
  // A latency budget below 14 us is infeasible; a table without nvfp4 for one shape is exit 3.
  r = run(base + " --max-latency-us 13");
  EXPECT_EQ(r.rc, 3) << r.out;
  entries.erase(entries.size() - 1);
  test::write_text(dir + "/lat.json", nlohmann::json{{"device", "test"}, {"entries", entries}}.dump());
  r = run(base + " --max-latency-us 1000");
  EXPECT_EQ(r.rc, 3) << r.out;
  EXPECT_NE(r.out.find("lat.json"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("nvfp4"), std::string::npos) << r.out;
  r = run("-q --model " + fx.dir + " --sensitivity " + fx.sens + " --target-bpw 5 --max-latency-us 5 --out " + dir + "/q.json");
  EXPECT_EQ(r.rc, 2) << r.out;  // a latency budget without a table
}

}  // namespace
}  // namespace mpq

namespace mpq {
namespace {

// mpq-search --export: every chosen candidate is one the engine export loads for that tensor
// (fp8 / nvfp4 / source; NVFP4 only where in_features % 16 == 0), the engine's fused layers
// take one candidate, the plan records the export, and mpq-pack --plan packs with it.
TEST(SearchTool, EngineExportPlansAreServable) {
  SearchFixture fx("search-export");
  const std::string out = test::scratch_dir("search-export-out");
  for (const std::string exp : {"compressed-tensors", "modelopt"}) {
    const std::string plan = out + "/plan-" + exp + ".json";
    ToolRun r = test::run_tool(test::tool_path("mpq-search") + " -q --model " + fx.dir + " --sensitivity " + fx.sens +
                               " --export " + exp + " --target-bpw 6 --out " + plan + " 2>&1");
    ASSERT_EQ(r.rc, 0) << r.out;
    const nlohmann::json p = nlohmann::json::parse(std::ifstream(plan));
    EXPECT_EQ(p["export"], exp);
    std::set<std::string> chosen;
    for (int64_t l = 0; l < fx.cfg.num_layers; ++l) {
      auto cand = [&](int i) {
        return p["tensors"]["model.layers." + std::to_string(l) + "." + kLinearNames[i]]["candidate"].get<std::string>();
      };
      EXPECT_EQ(cand(0), cand(1));
      EXPECT_EQ(cand(0), cand(2));
      EXPECT_EQ(cand(4), cand(5));
      EXPECT_NE(cand(6), "nvfp4");  // down_proj: 72 inputs
      for (int i = 0; i < 7; ++i) chosen.insert(cand(i));
    }
    for (const std::string& c : chosen) EXPECT_TRUE(c == "fp8" || c == "nvfp4" || c == "source") << c;
    EXPECT_GE(chosen.size(), 2u);  // a real mix at 6 bpw
    // Packed with the plan's export (modelopt needs static input scales for its FP8 layers).
    const std::string ids = out + "/ids.i32";
    std::vector<uint8_t> b(4 * 600);
    for (std::size_t i = 0; i < 600; ++i) b[4 * i] = static_cast<uint8_t>((i * 13) % 64);
    test::write_bytes(ids, b);
    const std::string extra = exp == "modelopt" ? " --activations static --calib " + ids : "";
    std::string pout;
    ASSERT_EQ(test::run_command(test::tool_path("mpq-pack") + " -q --model " + fx.dir + " --plan " + plan + extra +
                                    " --out " + out + "/p-" + exp + " 2>&1", &pout), 0) << pout;
    const nlohmann::json qc = nlohmann::json::parse(std::ifstream(out + "/p-" + exp + "/config.json"))["quantization_config"];
    EXPECT_EQ(qc["quant_method"], exp);
    if (exp == "modelopt") EXPECT_EQ(qc["quant_algo"], "MIXED_PRECISION");
    else EXPECT_EQ(qc["format"], "mixed-precision");
  }
  // Candidates an engine cannot load are refused up front when asked for by name.
  ToolRun r = test::run_tool(test::tool_path("mpq-search") + " -q --model " + fx.dir + " --sensitivity " + fx.sens +
                             " --export modelopt --formats squeezellm-3bit,nvfp4 --target-bpw 6 --out " + out + "/x.json 2>&1");
  EXPECT_EQ(r.rc, 2) << r.out;
  EXPECT_NE(r.out.find("--export modelopt cannot express squeezellm"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace mpq
