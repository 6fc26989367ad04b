// The CPU runtime form of whole models (LoadOptions::cpu_kernels, lib/model/cpu_linear.h),
// the KV-cache forward and generation (lib/model/generate.h), and the tools on top
// (mpq-eval --kernels / --token-by-token, mpq-bench --decode):
//  - every format loaded in its stored form (no fp32 weights) gives the expanded fp32
//    model's logits: within 1e-5 relative in exact mode, within the activation-rounding
//    budget in fast mode (windows: bf16 panels; single tokens: int8 GEMVs);
//  - prefill + token-by-token decode through the cache equals the windowed forward;
//  - greedy generation equals the windowed forward's arg max on stories260K (and on a tiny
//    random model without data);
//  - sampling follows its options and seed; bad input gets its documented error.
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lib/common/error.h"
#include "lib/model/generate.h"
#include "lib/model/llama.h"
#include "lib/model/tokenizer.h"
#include "tests/test_util.h"

namespace mpq {
namespace {

std::string tool(const std::string& name) { return test::tools_dir() + "/" + name; }

float max_abs(const MatrixRM& m) { return m.cwiseAbs().maxCoeff(); }

struct RuntimeCase {
  std::string name;  ///< test label
  std::string pack;  ///< mpq-pack arguments ("" = the source model itself)
  bool bf16_source;
  std::string format;  ///< expected Linear::format
  float fast_tol;      ///< fast-mode logits tolerance, relative to max |logit|
};

class CpuRuntime : public ::testing::TestWithParam<RuntimeCase> {};

// A packed (or source) tiny model folder for the case.
std::string case_model(const RuntimeCase& c, test::TinyLlamaSpec* spec) {
  std::string tag = "cpurt-" + c.name;
  for (char& ch : tag)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '-';
  const std::string src = test::scratch_dir(tag + "-src");
  // down_proj cols 48: an odd number of 16-column units (a half 4-bit chunk) and a partial
  // 64-column activation block. (mpq-pack keeps NVFP4 linears whose cols are no multiple of
  // 16 in the source dtype; the kernels' partial blocks are tested in test_cpu_kernels.cpp.)
  spec->intermediate = 48;
  spec->hidden = 64;
  spec->bf16 = c.bf16_source;
  spec->seed = 3 + c.name.size();
  test::write_tiny_llama(src, *spec);
  if (c.pack.empty()) return src;
  const std::string dir = test::scratch_dir(tag + "-out") + "/p";
  std::string out;
  EXPECT_EQ(test::run_command(tool("mpq-pack") + " --model " + src + " " + c.pack + " --out " + dir + " -q", &out), 0)
      << out;
  return dir;
}

TEST_P(CpuRuntime, StoredFormMatchesExpandedModel) {
  const RuntimeCase c = GetParam();
  test::TinyLlamaSpec spec;
  const std::string dir = case_model(c, &spec);
  LoadOptions lo;
  lo.cpu_kernels = true;
  LlamaModel rt = LlamaModel::load(dir, lo);
  const LlamaModel ref = LlamaModel::load(dir, LoadOptions{/*expand_packed=*/true});
  // Nothing expanded: every weight lives behind a CpuLinear.
  EXPECT_EQ(rt.weights().embed.size(), 0);
  EXPECT_EQ(rt.weights().lm_head.size(), 0);
  ASSERT_NE(rt.weights().embed_kernel, nullptr);
  ASSERT_NE(rt.weights().lm_head_kernel, nullptr);
  for (const auto& L : rt.weights().layers)
    for (const auto& l : L.linear) {
      ASSERT_NE(l.kernel, nullptr);
      EXPECT_EQ(l.w.size(), 0);
      EXPECT_EQ(l.packed, nullptr);
      EXPECT_EQ(l.format, c.format);
      EXPECT_EQ(l.kernel->format(), c.format);
      EXPECT_GT(l.kernel->weight_bytes(), 0u);
    }
  EXPECT_EQ(rt.parameter_count(), ref.parameter_count());

  const std::vector<int32_t> tok = test::random_tokens(48, spec.vocab, 17);
  for (KernelMode mode : {KernelMode::kExact, KernelMode::kFast}) {
    rt.set_kernel_mode(mode);
    for (int64_t T : {int64_t{1}, int64_t{7}, int64_t{48}}) {
      const MatrixRM a = rt.forward(tok.data(), T);
      const MatrixRM b = ref.forward(tok.data(), T);
      const float tol = (mode == KernelMode::kExact ? 1e-5f : c.fast_tol) * max_abs(b);
      EXPECT_LE((a - b).cwiseAbs().maxCoeff(), tol)
          << c.name << " " << kernel_mode_name(mode) << " T " << T << " (max |logit| " << max_abs(b) << ")";
    }
  }

  // Prefill 20 tokens, then 28 single-token steps through the cache: the windowed logits.
  rt.set_kernel_mode(KernelMode::kExact);
  const MatrixRM whole = rt.forward(tok.data(), 48);
  KvCache cache(rt.config(), 48);
  const MatrixRM pre = rt.forward(tok.data(), 20, cache);
  EXPECT_EQ(cache.length(), 20);
  EXPECT_LE((pre - whole.topRows(20)).cwiseAbs().maxCoeff(), 1e-5f * max_abs(whole)) << c.name;
  for (int64_t t = 20; t < 48; ++t) {
    const MatrixRM step = rt.forward(&tok[static_cast<std::size_t>(t)], 1, cache);
    ASSERT_LE((step - whole.row(t)).cwiseAbs().maxCoeff(), 1e-5f * max_abs(whole)) << c.name << " step " << t;
  }
  EXPECT_EQ(cache.length(), 48);
  // Cache full, and a prefill's last-token logits.
  try {
    rt.forward(tok.data(), 1, cache);
    ADD_FAILURE() << "no throw on a full cache";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kUsage);
    EXPECT_NE(std::string(e.what()).find("KV cache full"), std::string::npos) << e.what();
  }
  cache.clear();
  const MatrixRM last = rt.forward(tok.data(), 48, cache, /*last_only=*/true);
  ASSERT_EQ(last.rows(), 1);
  EXPECT_LE((last - whole.row(47)).cwiseAbs().maxCoeff(), 1e-5f * max_abs(whole));
}

// LoadOptions::copy_dense: dense weights read in place from the mapping (the default) or
// copied into huge pages run the same kernels on the same bytes: identical logits, for F32 and
// BF16 sources, untied and tied (the tied embedding is copied as the head), and for a packed
// model's dense head.
TEST(CpuRuntime, MapDenseAndCopiedDenseGiveIdenticalLogits) {
  struct Case {
    const char* name;
    bool bf16, tied;
    const char* pack;
  };
  for (const Case& c : {Case{"f32", false, false, ""}, Case{"bf16", true, false, ""}, Case{"bf16-tied", true, true, ""},
                        Case{"nvfp4-bf16-head", true, false, "--format nvfp4"}}) {
    test::TinyLlamaSpec spec;
    spec.bf16 = c.bf16;
    spec.tie_embeddings = c.tied;
    spec.seed = 41;
    std::string dir = test::scratch_dir(std::string("mapdense-") + c.name) + "/m";
    test::write_tiny_llama(dir, spec);
    if (*c.pack) {
      const std::string out = test::scratch_dir(std::string("mapdense-") + c.name + "-p") + "/p";
      std::string log;
      ASSERT_EQ(test::run_command(tool("mpq-pack") + " --model " + dir + " " + c.pack + " --out " + out + " -q", &log), 0)
          << log;
      dir = out;
    }
    LoadOptions copied, mapped;
    copied.cpu_kernels = mapped.cpu_kernels = true;
    copied.copy_dense = true;
    LlamaModel a = LlamaModel::load(dir, copied);
    LlamaModel b = LlamaModel::load(dir, mapped);
    if (c.tied) {
      EXPECT_EQ(a.weights().lm_head_kernel, a.weights().embed_kernel) << c.name;
    }
    const std::vector<int32_t> tok = test::random_tokens(20, spec.vocab, 9);
    for (KernelMode mode : {KernelMode::kExact, KernelMode::kFast}) {
      a.set_kernel_mode(mode);
      b.set_kernel_mode(mode);
      for (int64_t T : {int64_t{1}, int64_t{20}}) {
        const MatrixRM ya = a.forward(tok.data(), T), yb = b.forward(tok.data(), T);
        ASSERT_EQ(ya.rows(), yb.rows());
        EXPECT_EQ((ya - yb).cwiseAbs().maxCoeff(), 0.0f) << c.name << " " << kernel_mode_name(mode) << " T " << T;
      }
    }
  }
}

// A sliding window (Mistral / Qwen2 configs): single-token steps through the cache (the
// decode attention loop) give the windowed forward's logits (the chunked attention), and the
// window matters (the same model without it differs at the late positions).
TEST(CpuRuntimeDecode, SlidingWindowStepsMatchWindowedForward) {
  const std::string dir = test::scratch_dir("cpurt-sliding");
  test::TinyLlamaSpec spec;
  spec.seed = 21;
  test::write_tiny_llama(dir, spec);
  nlohmann::json cfg;
  std::ifstream(dir + "/config.json") >> cfg;
  const LlamaModel full = LlamaModel::load(dir, LoadOptions{});
  cfg["sliding_window"] = 6;
  std::ofstream(dir + "/config.json") << cfg.dump(2);
  const LlamaModel m = LlamaModel::load(dir, LoadOptions{});
  ASSERT_EQ(m.config().sliding_window, 6);
  const std::vector<int32_t> tok = test::random_tokens(32, spec.vocab, 5);
  const MatrixRM whole = m.forward(tok.data(), 32);
  const float scale = max_abs(whole);
  EXPECT_GT((whole.bottomRows(8) - full.forward(tok.data(), 32).bottomRows(8)).cwiseAbs().maxCoeff(), 1e-3f * scale);
  KvCache cache(m.config(), 32);
  const MatrixRM pre = m.forward(tok.data(), 3, cache);
  EXPECT_LE((pre - whole.topRows(3)).cwiseAbs().maxCoeff(), 1e-5f * scale);
  for (int64_t t = 3; t < 32; ++t) {
    const MatrixRM step = m.forward(&tok[static_cast<std::size_t>(t)], 1, cache);
    ASSERT_LE((step - whole.row(t)).cwiseAbs().maxCoeff(), 1e-5f * scale) << "step " << t;
  }
}

// fast_tol: the fast paths round activations (int8 per block in the single-token GEMVs of
// nvfp4 / squeezellm, bf16 in window products) and, for squeezellm, the tables (int8 per row).
INSTANTIATE_TEST_SUITE_P(
    Formats, CpuRuntime,
    ::testing::Values(RuntimeCase{"f32", "", false, "f32", 1e-5f}, RuntimeCase{"bf16", "", true, "bf16", 1e-2f},
                      RuntimeCase{"nvfp4", "--format nvfp4", false, "nvfp4", 3e-2f},
                      RuntimeCase{"fp8", "--format fp8", true, "fp8", 1e-2f},
                      RuntimeCase{"sq3", "--format squeezellm --bits 3", false, "squeezellm", 3e-2f},
                      RuntimeCase{"sq4", "--format squeezellm --bits 4 --outlier-pct 2", true, "squeezellm", 3e-2f},
                      RuntimeCase{"fgmp", "--format fgmp --fp8-fraction 0.3", false, "fgmp", 2e-2f}),
    [](const ::testing::TestParamInfo<RuntimeCase>& i) { return i.param.name; });

// Greedy generation = arg max of the windowed forward over prompt + generated tokens.
void expect_greedy_matches_window(const LlamaModel& m, const std::vector<int32_t>& prompt, int64_t n,
                                  const std::string& what) {
  const GenerationResult g = generate(m, prompt, n, SamplingOptions{});
  ASSERT_EQ(static_cast<int64_t>(g.tokens.size()), n);
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), g.tokens.begin(), g.tokens.end());
  const MatrixRM logits = m.forward(all.data(), static_cast<int64_t>(all.size()) - 1);
  for (int64_t i = 0; i < n; ++i) {
    Eigen::Index best = 0;
    logits.row(static_cast<Eigen::Index>(prompt.size()) - 1 + i).maxCoeff(&best);
    ASSERT_EQ(g.tokens[static_cast<std::size_t>(i)], static_cast<int32_t>(best)) << what << " token " << i;
  }
}

TEST(Generate, GreedyMatchesWindowArgmaxTinyModel) {
  test::TinyLlamaSpec spec;
  spec.weight_std = 0.3f;  // peaked logits: no near-ties
  const std::string dir = test::scratch_dir("gen-tiny");
  test::write_tiny_llama(dir, spec);
  for (bool kernels : {false, true}) {
    LoadOptions lo;
    lo.cpu_kernels = kernels;
    LlamaModel m = LlamaModel::load(dir, lo);
    m.set_kernel_mode(KernelMode::kExact);
    expect_greedy_matches_window(m, test::random_tokens(9, spec.vocab, 5), 40, kernels ? "cpu_kernels" : "default");
  }
}

TEST(Generate, GreedyMatchesWindowArgmaxStories260K) {
  MPQ_REQUIRE_DATA();
  const std::string dir = test::data_dir() + "/models/stories260K-hf";
  LoadOptions lo;
  lo.cpu_kernels = true;
  LlamaModel m = LlamaModel::load(dir, lo);
  m.set_kernel_mode(KernelMode::kExact);
  const std::vector<int32_t> prompt = Tokenizer::load(dir).encode("Once upon a time, there was a little girl named Lily.");
  expect_greedy_matches_window(m, prompt, 120, "stories260K");
  // The same on the packed NVFP4 form, through its int8 decode GEMVs and bf16 window
  // products (fast): the tokens agree wherever the windowed top two logits are apart.
  const std::string nv = test::scratch_dir("gen-stories-nvfp4") + "/p";
  std::string out;
  ASSERT_EQ(test::run_command(tool("mpq-pack") + " --model " + dir + " --format nvfp4 --out " + nv + " -q", &out), 0) << out;
  LlamaModel p = LlamaModel::load(nv, lo);
  const GenerationResult g = generate(p, prompt, 100, SamplingOptions{});
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), g.tokens.begin(), g.tokens.end());
  const MatrixRM logits = p.forward(all.data(), static_cast<int64_t>(all.size()) - 1);
  int checked = 0;
  for (std::size_t i = 0; i < g.tokens.size(); ++i) {
    auto row = logits.row(static_cast<Eigen::Index>(prompt.size() - 1 + i));
    Eigen::Index best = 0;
    const float top = row.maxCoeff(&best);
    float second = -INFINITY;
    for (Eigen::Index v = 0; v < row.size(); ++v)
      if (v != best) second = std::max(second, row(v));
    if (top - second < 0.05f) break;  // a near-tie: the two paths may part from here on
    ASSERT_EQ(g.tokens[i], static_cast<int32_t>(best)) << "nvfp4 fast token " << i;
    ++checked;
  }
  EXPECT_GE(checked, 10);
}

TEST(Generate, SamplingOptionsAndSeed) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f};
  std::mt19937_64 rng(1);
  EXPECT_EQ(sample_token(logits.data(), 5, SamplingOptions{}, rng), 1);  // greedy: first of the tied max
  SamplingOptions k1;
  k1.temperature = 1.0f;
  k1.top_k = 1;
  EXPECT_EQ(sample_token(logits.data(), 5, k1, rng), 1);
  // Temperature 1, all tokens: frequencies follow softmax(logits) (20000 draws, 4 sigma).
  SamplingOptions t1;
  t1.temperature = 1.0f;
  std::vector<int> count(5, 0);
  const int n = 20000;
  for (int i = 0; i < n; ++i) ++count[static_cast<std::size_t>(sample_token(logits.data(), 5, t1, rng))];
  double z = 0;
  for (float l : logits) z += std::exp(l);
  for (int i = 0; i < 5; ++i) {
    const double p = std::exp(logits[static_cast<std::size_t>(i)]) / z;
    EXPECT_NEAR(count[static_cast<std::size_t>(i)] / static_cast<double>(n), p, 4 * std::sqrt(p * (1 - p) / n) + 1e-3) << i;
  }
  // top_p 0.5: only the two tokens of logit 3 (together 0.61 of the mass) can come out.
  SamplingOptions tp;
  tp.temperature = 1.0f;
  tp.top_p = 0.5f;
  for (int i = 0; i < 200; ++i) {
    const int32_t t = sample_token(logits.data(), 5, tp, rng);
    EXPECT_TRUE(t == 1 || t == 3) << t;
  }
  // Same seed, same tokens.
  test::TinyLlamaSpec spec;
  const std::string dir = test::scratch_dir("gen-seed");
  test::write_tiny_llama(dir, spec);
  const LlamaModel m = LlamaModel::load(dir);
  SamplingOptions s;
  s.temperature = 0.8f;
  s.top_k = 20;
  s.seed = 42;
  const std::vector<int32_t> prompt = {1, 5, 9};
  EXPECT_EQ(generate(m, prompt, 30, s).tokens, generate(m, prompt, 30, s).tokens);
  SamplingOptions bad;
  bad.temperature = -1.0f;
  EXPECT_THROW(sample_token(logits.data(), 5, bad, rng), Error);
  EXPECT_THROW(generate(m, {}, 3, s), Error);
  // eos stops the generation after it.
  const GenerationResult g = generate(m, prompt, 30, SamplingOptions{});
  const GenerationResult e = generate(m, prompt, 30, SamplingOptions{}, g.tokens[2]);
  EXPECT_LE(e.tokens.size(), 3u);
  EXPECT_EQ(e.tokens.back(), g.tokens[2]);
}

// ---------------------------------------------------------------- tools ----------------

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

TEST(CpuRuntimeTools, EvalKernelsAndTokenByToken) {
  test::TinyLlamaSpec spec;
  const std::string src = test::scratch_dir("rt-eval-src");
  test::write_tiny_llama(src, spec);
  const std::string nv = test::scratch_dir("rt-eval-nv") + "/p";
  std::string out;
  ASSERT_EQ(test::run_command(tool("mpq-pack") + " --model " + src + " --format nvfp4 --out " + nv + " -q", &out), 0) << out;
  const std::vector<int32_t> tok = test::random_tokens(64, spec.vocab, 3);
  std::vector<uint8_t> b(tok.size() * 4);
  std::memcpy(b.data(), tok.data(), b.size());
  const std::string ids = src + "/ids.i32";
  test::write_bytes(ids, b);
  std::map<std::string, double> nll;
  for (const char* mode : {"exact", "fast"})
    for (bool tbt : {false, true}) {
      const std::string js = test::scratch_dir(std::string("rt-eval-j") + mode + (tbt ? "t" : "w")) + "/e.json";
      ASSERT_EQ(test::run_command(tool("mpq-eval") + " --model " + nv + " --tokens " + ids + " --ctx 32 -q --kernels " +
                                      mode + (tbt ? " --token-by-token" : "") + " --json " + js,
                                  &out),
                0)
          << out;
      const nlohmann::json j = read_json(js);
      EXPECT_EQ(j["kernels"], mode);
      EXPECT_EQ(j["token_by_token"], tbt);
      EXPECT_TRUE(j["kernel_paths"].contains("nvfp4")) << j.dump();
      nll[std::string(mode) + (tbt ? "-tbt" : "")] = j["mean_nll"];
    }
  EXPECT_NEAR(nll["exact-tbt"], nll["exact"], 1e-5);  // the cache path is the windowed graph
  EXPECT_NEAR(nll["fast"], nll["exact"], 2e-2);
  EXPECT_NEAR(nll["fast-tbt"], nll["exact"], 2e-2);
  EXPECT_EQ(test::run_command(tool("mpq-eval") + " --model " + nv + " --tokens " + ids + " --kernels fastest -q", &out), 2)
      << out;
}

TEST(CpuRuntimeTools, BenchDecodeJsonAndSpeedups) {
  test::TinyLlamaSpec spec;
  spec.bf16 = true;
  const std::string src = test::scratch_dir("rt-bench-src");
  test::write_tiny_llama(src, spec);
  const std::string nv = test::scratch_dir("rt-bench-nv") + "/p";
  std::string out;
  ASSERT_EQ(test::run_command(tool("mpq-pack") + " --model " + src + " --format nvfp4 --out " + nv + " -q", &out), 0) << out;
  const std::string js = test::scratch_dir("rt-bench-j") + "/d.json";
  ASSERT_EQ(test::run_command(tool("mpq-bench") + " --decode --model " + src + " --model " + nv +
                                  " --prompt-tokens 20 --gen-tokens 8 --reps 2 --bandwidth-mb 64 --threads 2 -q --json " + js,
                              &out),
            0)
      << out;
  const nlohmann::json j = read_json(js);
  EXPECT_EQ(j["tool"], "mpq-bench");
  EXPECT_EQ(j["mode"], "decode");
  EXPECT_GT(j["read_bandwidth_gbps"].get<double>(), 0.0);
  ASSERT_EQ(j["models"].size(), 2u);
  for (const auto& m : j["models"])
    for (const char* k : {"model", "format", "prefill_tokens_per_second", "decode_tokens_per_second", "prefill_speedup",
                          "decode_speedup", "weight_bytes", "bound_tokens_per_second", "bound_fraction", "lm_head_format"})
      EXPECT_TRUE(m.contains(k)) << k << " in " << m.dump();
  EXPECT_EQ(j["models"][0]["format"], "bf16");
  EXPECT_EQ(j["models"][1]["format"], "nvfp4");
  EXPECT_EQ(j["models"][1]["lm_head_format"], "bf16");
  EXPECT_DOUBLE_EQ(j["models"][0]["decode_speedup"].get<double>(), 1.0);
  EXPECT_NEAR(j["models"][1]["decode_speedup"].get<double>(),
              j["models"][1]["decode_tokens_per_second"].get<double>() / j["models"][0]["decode_tokens_per_second"].get<double>(),
              1e-9);
  EXPECT_LT(j["models"][1]["weight_bytes"].get<double>(), j["models"][0]["weight_bytes"].get<double>());
  // Rounds: one tokens/s per repetition, the per-round ratios recomputed from them.
  EXPECT_EQ(j["interleaved"], true);
  const auto& r0 = j["models"][0]["decode_tokens_per_second_runs"];
  const auto& r1 = j["models"][1]["decode_tokens_per_second_runs"];
  ASSERT_EQ(r0.size(), 2u);
  ASSERT_EQ(r1.size(), 2u);
  ASSERT_EQ(j["models"][1]["decode_speedup_runs"].size(), 2u);
  for (int i = 0; i < 2; ++i)
    EXPECT_NEAR(j["models"][1]["decode_speedup_runs"][i].get<double>(), r1[i].get<double>() / r0[i].get<double>(), 1e-9);
  EXPECT_NEAR(j["models"][1]["decode_speedup_median_of_runs"].get<double>(),
              0.5 * (r1[0].get<double>() / r0[0].get<double>() + r1[1].get<double>() / r0[1].get<double>()), 1e-9);
  // A bound per run, from the read bandwidth measured just before it.
  for (const auto& m : j["models"]) {
    ASSERT_EQ(m["read_bandwidth_gbps_runs"].size(), 2u);
    ASSERT_EQ(m["bound_fraction_runs"].size(), 2u);
    for (int i = 0; i < 2; ++i) {
      const double gbps = m["read_bandwidth_gbps_runs"][i].get<double>();
      EXPECT_GT(gbps, 0.0);
      EXPECT_NEAR(m["bound_fraction_runs"][i].get<double>(),
                  m["decode_tokens_per_second_runs"][i].get<double>() * m["weight_bytes"].get<double>() / (gbps * 1e9), 1e-9);
    }
  }
  // The one-at-a-time order gives the same keys.
  ASSERT_EQ(test::run_command(tool("mpq-bench") + " --decode --model " + src + " --model " + nv +
                                  " --prompt-tokens 4 --gen-tokens 3 --reps 1 --bandwidth-mb 16 --one-model-at-a-time -q --json " + js,
                              &out),
            0)
      << out;
  const nlohmann::json j1 = read_json(js);
  EXPECT_EQ(j1["interleaved"], false);
  EXPECT_EQ(j1["models"][1]["decode_tokens_per_second_runs"].size(), 1u);
  // Usage errors: exit 2, and a missing folder exit 3.
  EXPECT_EQ(test::run_command(tool("mpq-bench") + " --decode -q", &out), 2) << out;
  EXPECT_EQ(test::run_command(tool("mpq-bench") + " --decode --model " + src + " --gen-tokens 1 -q", &out), 2) << out;
  EXPECT_EQ(test::run_command(tool("mpq-bench") + " --model " + src + " -q", &out), 2) << out;
  EXPECT_EQ(test::run_command(tool("mpq-bench") + " --decode --model /nonexistent/m -q --bandwidth-mb 8", &out), 3) << out;
}

}  // namespace
}  // namespace mpq
