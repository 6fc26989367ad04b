// Sensitivity passes: layer Hessian against an independent computation of the first
// layer's input, Fisher against per-window float64 gradients, Hutchinson against the exact
// trace (float64 finite differences of the gradient along every unit vector), layer ranges,
// window sampling, byte-for-byte determinism of the tool, and on the real model, that the
// Fisher ranking identifies weights whose perturbation hurts perplexity more.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "calibration/sensitivity.h"
#include "calibration/windows.h"
#include "lib/common/error.h"
#include "lib/eval/perplexity.h"
#include "lib/model/llama_grad.h"
#include "lib/model/tokenizer.h"
#include "tests/test_util.h"

namespace mpq {
namespace {

LlamaModel tiny(const std::string& tag, test::TinyLlamaSpec s = {}) {
  const std::string dir = test::scratch_dir(tag);
  test::write_tiny_llama(dir, s);
  return LlamaModel::load(dir);
}

TEST(Windows, SampledAndSequential) {
  const auto a = calibration_window_starts(1000, 50, 100, 7, false);
  EXPECT_EQ(a, calibration_window_starts(1000, 50, 100, 7, false));
  EXPECT_NE(a, calibration_window_starts(1000, 50, 100, 8, false));
  for (int64_t s : a) {
    EXPECT_GE(s, 0);
    EXPECT_LE(s, 900);
  }
  EXPECT_EQ(calibration_window_starts(1000, 3, 100, 0, true), (std::vector<int64_t>{0, 100, 200}));
  EXPECT_THROW(calibration_window_starts(99, 1, 100, 0, false), Error);
  EXPECT_THROW(calibration_window_starts(1000, 11, 100, 0, true), Error);
}

TEST(Sensitivity, LayerHessianOfFirstLayerFromIndependentInput) {
  const LlamaModel m = tiny("hess");
  const auto ids = test::random_tokens(200, m.config().vocab_size, 1);
  const std::vector<int64_t> starts = {0, 37, 120};
  SensitivityOptions o;
  o.fisher = false;
  o.full_hessian = true;
  const SensitivityResult r = compute_sensitivities(m, ids, starts, 48, o);
  // Layer 0's q/k/v input is RMSNorm(embed[token]) * g: compute it here in float64.
  const auto& w = m.weights();
  const int64_t H = m.config().hidden_size;
  Eigen::MatrixXd ref = Eigen::MatrixXd::Zero(H, H);
  for (int64_t s : starts)
    for (int64_t t = 0; t < 48; ++t) {
      Eigen::VectorXd x = w.embed.row(ids[static_cast<std::size_t>(s + t)]).cast<double>().transpose();
      x = x / std::sqrt(x.squaredNorm() / static_cast<double>(H) + m.config().rms_norm_eps);
      x = x.cwiseProduct(w.layers[0].input_norm.cast<double>());
      ref += x * x.transpose();
    }
  ref *= 2.0 / (3 * 48);
  for (int i = 0; i < 3; ++i) {  // q, k, v share the input
    const TensorSensitivity& t = r.tensors[static_cast<std::size_t>(i)];
    ASSERT_EQ(t.hessian_diag.size(), static_cast<std::size_t>(H));
    for (int64_t a = 0; a < H; ++a) {
      EXPECT_NEAR(t.hessian_diag[static_cast<std::size_t>(a)], ref(a, a), 1e-5 * ref(a, a));
      for (int64_t b = 0; b < H; ++b) EXPECT_NEAR(t.hessian[static_cast<std::size_t>(a * H + b)], ref(a, b), 1e-5);
    }
    EXPECT_NEAR(t.hessian_trace, ref.trace(), 1e-5 * ref.trace());
  }
  // o_proj's input is another quantity: a different diagonal.
  EXPECT_NE(r.tensors[3].hessian_trace, r.tensors[0].hessian_trace);
}

TEST(Sensitivity, FisherIsMeanSquaredWindowGradient) {
  const LlamaModel m = tiny("fisher");
  const auto ids = test::random_tokens(300, m.config().vocab_size, 2);
  const std::vector<int64_t> starts = {5, 100, 180, 240};
  SensitivityOptions o;
  o.hessian = false;
  const SensitivityResult r = compute_sensitivities(m, ids, starts, 40, o);
  const LlamaParams<double> p = to_params<double>(m.weights());
  std::vector<LlamaParams<double>> grads(starts.size());
  for (std::size_t n = 0; n < starts.size(); ++n)
    llama_loss_and_grad<double>(m.config(), p, ids.data() + starts[n], 40, &grads[n]);
  for (int64_t l = 0; l < m.config().num_layers; ++l)
    for (int i = 0; i < 7; ++i) {
      const TensorSensitivity& t = r.tensors[static_cast<std::size_t>(l * 7 + i)];
      double max_ref = 0, max_err = 0, sum = 0;
      for (Eigen::Index k = 0; k < t.rows * t.cols; ++k) {
        double f = 0;
        for (const auto& g : grads) f += std::pow(g.layers[static_cast<std::size_t>(l)].w[static_cast<std::size_t>(i)].data()[k], 2);
        f /= static_cast<double>(starts.size());
        sum += f;
        max_ref = std::max(max_ref, f);
        max_err = std::max(max_err, std::abs(f - t.fisher[static_cast<std::size_t>(k)]));
      }
      EXPECT_LT(max_err, 1e-3 * max_ref) << t.name;
      EXPECT_NEAR(t.fisher_sum, sum, 1e-3 * sum) << t.name;
    }
}

TEST(Sensitivity, HutchinsonMatchesExactTraceWithinItsError) {
  test::TinyLlamaSpec s;
  s.hidden = 16;
  s.heads = 2;
  s.kv_heads = 1;
  s.intermediate = 24;
  s.vocab = 32;
  s.layers = 1;
  s.weight_std = 0.3f;
  const LlamaModel m = tiny("hutch", s);
  const auto ids = test::random_tokens(24, m.config().vocab_size, 3);
  SensitivityOptions o;
  o.fisher = o.hessian = false;
  o.hutchinson = true;
  o.hutchinson_iters = 600;
  o.hutchinson_tol = 0;  // run all samples
  o.seed = 11;
  const SensitivityResult r = compute_sensitivities(m, ids, {0}, 24, o);
  // Exact Tr(H_W) for each weight: sum_i d/dtheta_i of dL/dtheta_i by central differences.
  LlamaParams<double> p = to_params<double>(m.weights());
  for (int i = 0; i < 7; ++i) {
    MatRM<double>& W = p.layers[0].w[static_cast<std::size_t>(i)];
    double exact = 0;
    const double h = 1e-4;
    LlamaParams<double> gp, gm;
    for (Eigen::Index k = 0; k < W.size(); ++k) {
      const double saved = W.data()[k];
      W.data()[k] = saved + h;
      llama_loss_and_grad<double>(m.config(), p, ids.data(), 24, &gp);
      W.data()[k] = saved - h;
      llama_loss_and_grad<double>(m.config(), p, ids.data(), 24, &gm);
      W.data()[k] = saved;
      exact += (gp.layers[0].w[static_cast<std::size_t>(i)].data()[k] - gm.layers[0].w[static_cast<std::size_t>(i)].data()[k]) / (2 * h);
    }
    const TensorSensitivity& t = r.tensors[static_cast<std::size_t>(i)];
    EXPECT_EQ(t.hutchinson_samples, 600);
    EXPECT_GT(t.hutchinson_stderr, 0.0);
    EXPECT_LT(std::abs(t.hutchinson_trace - exact), 4 * t.hutchinson_stderr + 1e-9)
        << t.name << ": estimate " << t.hutchinson_trace << " +- " << t.hutchinson_stderr << ", exact " << exact;
  }
}

TEST(Sensitivity, LayerRangeComputesOnlyThoseLayersWithTheSameValues) {
  test::TinyLlamaSpec s;
  s.layers = 3;
  const LlamaModel m = tiny("range", s);
  const auto ids = test::random_tokens(200, m.config().vocab_size, 4);
  SensitivityOptions all;
  const SensitivityResult a = compute_sensitivities(m, ids, {0, 50}, 64, all);
  SensitivityOptions part = all;
  part.layer_begin = 1;
  part.layer_end = 2;
  const SensitivityResult b = compute_sensitivities(m, ids, {0, 50}, 64, part);
  ASSERT_EQ(b.tensors.size(), 7u);
  for (int i = 0; i < 7; ++i) {
    EXPECT_EQ(b.tensors[static_cast<std::size_t>(i)].name, a.tensors[static_cast<std::size_t>(7 + i)].name);
    EXPECT_EQ(b.tensors[static_cast<std::size_t>(i)].fisher, a.tensors[static_cast<std::size_t>(7 + i)].fisher);
    EXPECT_EQ(b.tensors[static_cast<std::size_t>(i)].hessian_diag, a.tensors[static_cast<std::size_t>(7 + i)].hessian_diag);
  }
  part.layer_begin = 2;
  part.layer_end = 5;
  EXPECT_THROW(compute_sensitivities(m, ids, {0}, 64, part), Error);
}

TEST(SensitivityTool, SameSeedSameBytesAndInspectable) {
  const std::string dir = test::scratch_dir("senstool");
  test::write_tiny_llama(dir, {});
  std::vector<int32_t> ids = test::random_tokens(2000, 128, 5);
  std::vector<uint8_t> b(ids.size() * 4);
  std::memcpy(b.data(), ids.data(), b.size());
  test::write_bytes(dir + "/calib.i32", b);
  const std::string base = test::tools_dir() + "/mpq-sensitivity -q --model " + dir + " --calib " + dir +
                           "/calib.i32 --samples 6 --seq-len 64 --kind fisher,hessian,hutchinson --hutchinson-iters 4";
  std::string out;
  ASSERT_EQ(test::run_command(base + " --seed 3 --out " + dir + "/a.safetensors", &out), 0) << out;
  ASSERT_EQ(test::run_command(base + " --seed 3 --out " + dir + "/b.safetensors", &out), 0) << out;
  ASSERT_EQ(test::run_command(base + " --seed 4 --out " + dir + "/c.safetensors", &out), 0) << out;
  EXPECT_EQ(test::read_bytes(dir + "/a.safetensors"), test::read_bytes(dir + "/b.safetensors"));
  EXPECT_NE(test::read_bytes(dir + "/a.safetensors"), test::read_bytes(dir + "/c.safetensors"));
  ASSERT_EQ(test::run_command(base + " --seed 3 --layers 1:2 --out " + dir + "/l1.safetensors", &out), 0) << out;
  ASSERT_EQ(test::run_command(test::tools_dir() + "/mpq-inspect " + dir + "/l1.safetensors", &out), 0) << out;
  EXPECT_NE(out.find("model.layers.1.mlp.down_proj.fisher"), std::string::npos) << out;
  EXPECT_EQ(out.find("model.layers.0."), std::string::npos) << out;
  EXPECT_NE(out.find("layers                 1:2"), std::string::npos) << out;  // metadata
  // Bad input: quantized model, unknown kind.
  EXPECT_EQ(test::run_command(base + " --kind fisher,magic --out " + dir + "/x.safetensors", &out), 2);
  EXPECT_FALSE(std::filesystem::exists(dir + "/x.safetensors"));
}

// SqueezeLLM's premise on the real model: perturbing the 1% of weights with the largest
// Fisher raises perplexity more than perturbing a random 1% with the same relative noise.
TEST(Stories260K, FisherTopOnePercentHurtsMoreThanRandom) {
  MPQ_REQUIRE_DATA();
  const std::string d = test::data_dir();
  const LlamaModel m = LlamaModel::load(d + "/models/stories260K-hf");
  const auto calib = Tokenizer::load(d + "/models/stories260K-hf").encode(read_text_file(d + "/text/tinystories_valid_calib.txt"));
  SensitivityOptions o;
  o.hessian = false;
  const auto starts = calibration_window_starts(static_cast<int64_t>(calib.size()), 32, 256, 1, false);
  const SensitivityResult r = compute_sensitivities(m, calib, starts, 256, o);
  const auto eval = read_token_file(d + "/reference/stories260K_tinystories_eval_tokens_20480.i32");
  PerplexityOptions po;
  po.ctx = 512;
  const double base = evaluate_perplexity(m, eval, po).ppl;

  auto perturbed_ppl = [&](bool by_fisher) {
    LlamaModel q = LlamaModel::load(d + "/models/stories260K-hf");
    std::mt19937_64 rng(123);
    std::normal_distribution<float> noise(0.0f, 1.0f);
    for (const TensorSensitivity& t : r.tensors) {
      const int64_t l = std::stoll(t.name.substr(13));
      int i = 0;
      while (t.name.find(kLinearNames[i]) == std::string::npos) ++i;
      MatrixRM& w = q.mutable_weights().layers[static_cast<std::size_t>(l)].linear[static_cast<std::size_t>(i)].w;
      const std::size_t n = t.fisher.size(), k = n / 100;
      std::vector<std::size_t> idx(n);
      for (std::size_t j = 0; j < n; ++j) idx[j] = j;
      if (by_fisher) {
        std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end(),
                          [&](std::size_t a, std::size_t b) { return t.fisher[a] > t.fisher[b]; });
      } else {
        std::shuffle(idx.begin(), idx.end(), rng);
      }
      for (std::size_t j = 0; j < k; ++j) w.data()[idx[j]] *= 1.0f + 0.5f * noise(rng);  // 50% relative noise
    }
    return evaluate_perplexity(q, eval, po).ppl;
  };
  const double top = perturbed_ppl(true), random = perturbed_ppl(false);
  std::printf("ppl: base %.4f, top-1%% Fisher perturbed %.4f, random 1%% perturbed %.4f\n", base, top, random);
  EXPECT_GT(top, random);
  EXPECT_GT(random, base * 0.999);
}

}  // namespace
}  // namespace mpq
