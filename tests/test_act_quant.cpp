// FGMP activations (emulated): the per-token fp8/nvfp4 fake quantizers against the weight
// quantizers' encode + decode of the same row, the FGMP block choice against a direct
// implementation, NaN/Inf rules; dL/dx of every linear input against float64 finite
// differences and act-fisher's mean of squares against a direct sum; activation modes in
// the forward pass (none bit-identical, fgmp at +-inf thresholds = nvfp4 / fp8, placement
// against a float64 reference forward); calibrated thresholds against an independent count;
// and the tools end to end (sensitivity -> pack --act-calib -> eval --act), on a tiny random
// model and on stories260K-hf when present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>

#include <nlohmann/json.hpp>

#include "calibration/sensitivity.h"
#include "calibration/windows.h"
#include "formats/safetensors.h"
#include "formats/sensitivity_file.h"
#include "lib/common/error.h"
#include "lib/model/llama.h"
#include "lib/model/llama_grad.h"
#include "lib/model/tokenizer.h"
#include "lib/pack/act_calibration.h"
#include "lib/quant/act_quant.h"
#include "lib/quant/quantizer.h"
#include "tests/test_util.h"

namespace mpq {
namespace {
namespace fs = std::filesystem;

constexpr float kInf = std::numeric_limits<float>::infinity();

// Q(row) through a weight quantizer's encode + decode of a 1 x C tensor (the independent path).
std::vector<float> weight_roundtrip(const std::string& format, const float* row, int64_t C) {
  const Quantizer& q = quantizer_for(format);
  std::vector<float> out(static_cast<std::size_t>(C));
  q.decode(q.encode("row", row, 1, C), out.data());
  return out;
}

// Rows of very different magnitudes (one all zero), C columns.
std::vector<float> test_rows(int64_t T, int64_t C, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(T * C));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < C; ++c)
      x[static_cast<std::size_t>(t * C + c)] = t == 1 ? 0.0f : n(rng) * std::pow(10.0f, static_cast<float>(t % 5) - 2.0f);
  return x;
}

void expect_same(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) && std::isnan(b[i])) continue;
    ASSERT_EQ(a[i], b[i]) << what << " at " << i;
  }
}

// --- The quantizers ------------------------------------------------------------------

TEST(ActQuant, Fp8AndNvfp4RowsEqualWeightQuantizerRoundTrip) {
  for (int64_t C : {16, 40, 172}) {  // whole blocks, partial last block, stories260K's down_proj
    const int64_t T = 7, nb = (C + 15) / 16;
    const std::vector<float> x = test_rows(T, C, static_cast<uint64_t>(C));
    for (const char* fmt : {"fp8", "nvfp4"}) {
      std::vector<float> got = x;
      const ActBlockCounts n = quantize_activations(got.data(), T, C, parse_act_mode(fmt));
      std::vector<float> want;
      for (int64_t t = 0; t < T; ++t) {
        const auto r = weight_roundtrip(fmt, x.data() + t * C, C);
        want.insert(want.end(), r.begin(), r.end());
      }
      expect_same(got, want, std::string(fmt) + " C=" + std::to_string(C));
      EXPECT_EQ(std::string(fmt) == "fp8" ? n.fp8 : n.fp4, T * nb);
      EXPECT_EQ(std::string(fmt) == "fp8" ? n.fp4 : n.fp8, 0);
      EXPECT_NE(got, x) << "nothing was quantized";
    }
  }
}

TEST(ActQuant, FgmpBlockChoiceMatchesDirectImplementation) {
  const int64_t T = 9, C = 172, nb = 11;
  const std::vector<float> x = test_rows(T, C, 3);
  std::mt19937_64 rng(4);
  std::uniform_real_distribution<float> u(0.0f, 2.0f);
  std::vector<float> g(static_cast<std::size_t>(C));
  for (auto& v : g) v = u(rng);
  g[5] = 0.0f;
  // Direct: both weight round trips of each row, the Fisher-weighted squared difference per
  // block in float64, FP8 above the threshold.
  std::vector<float> q8, q4, score;
  for (int64_t t = 0; t < T; ++t) {
    const auto a = weight_roundtrip("fp8", x.data() + t * C, C), b = weight_roundtrip("nvfp4", x.data() + t * C, C);
    q8.insert(q8.end(), a.begin(), a.end());
    q4.insert(q4.end(), b.begin(), b.end());
    for (int64_t blk = 0; blk < nb; ++blk) {
      double s = 0;
      for (int64_t c = blk * 16; c < std::min<int64_t>(C, blk * 16 + 16); ++c)
        s += g[static_cast<std::size_t>(c)] * std::pow(double(b[static_cast<std::size_t>(c)]) - double(a[static_cast<std::size_t>(c)]), 2);
      score.push_back(static_cast<float>(s));
    }
  }
  std::vector<float> lib_scores(static_cast<std::size_t>(T * nb));
  fgmp_block_scores(x.data(), T, C, g.data(), lib_scores.data());
  expect_same(lib_scores, score, "block scores");

  std::vector<float> sorted = score;
  std::sort(sorted.begin(), sorted.end());
  const float thr = sorted[sorted.size() / 2];
  std::vector<float> want(x.size());
  ActBlockCounts expect;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < C; ++c) {
      const bool fp8 = score[static_cast<std::size_t>(t * nb + c / 16)] > thr;
      want[static_cast<std::size_t>(t * C + c)] = (fp8 ? q8 : q4)[static_cast<std::size_t>(t * C + c)];
      if (c % 16 == 0) ++(fp8 ? expect.fp8 : expect.fp4);
    }
  std::vector<float> got = x;
  const ActBlockCounts n = quantize_activations(got.data(), T, C, ActQuantMode::kFgmp, g.data(), thr);
  expect_same(got, want, "fgmp");
  EXPECT_EQ(n.fp4, expect.fp4);
  EXPECT_EQ(n.fp8, expect.fp8);
  EXPECT_GT(n.fp4, 0);
  EXPECT_GT(n.fp8, 0);

  // +inf: all NVFP4; -inf: all FP8.
  std::vector<float> all4 = x, all8 = x;
  EXPECT_EQ(quantize_activations(all4.data(), T, C, ActQuantMode::kFgmp, g.data(), kInf).fp8, 0);
  EXPECT_EQ(quantize_activations(all8.data(), T, C, ActQuantMode::kFgmp, g.data(), -kInf).fp4, 0);
  expect_same(all4, q4, "fgmp +inf");
  expect_same(all8, q8, "fgmp -inf");
}

TEST(ActQuant, NonFiniteElementsPassThroughAndCountAsZeroForScales) {
  const int64_t C = 40;
  std::vector<float> x = test_rows(1, C, 8), zeroed = x;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  x[3] = nan;
  x[20] = kInf;
  x[33] = -kInf;
  for (int k : {3, 20, 33}) zeroed[static_cast<std::size_t>(k)] = 0.0f;
  std::vector<float> g(static_cast<std::size_t>(C), 1.0f);
  for (ActQuantMode m : {ActQuantMode::kFp8, ActQuantMode::kNvfp4, ActQuantMode::kFgmp}) {
    std::vector<float> a = x, b = zeroed;
    quantize_activations(a.data(), 1, C, m, g.data(), 1e-3f);
    quantize_activations(b.data(), 1, C, m, g.data(), 1e-3f);
    EXPECT_TRUE(std::isnan(a[3])) << act_mode_name(m);
    EXPECT_EQ(a[20], kInf) << act_mode_name(m);
    EXPECT_EQ(a[33], -kInf) << act_mode_name(m);
    for (int64_t c = 0; c < C; ++c) {
      if (c == 3 || c == 20 || c == 33) continue;
      EXPECT_EQ(a[static_cast<std::size_t>(c)], b[static_cast<std::size_t>(c)]) << c;
    }
  }
  // Scores ignore the non-finite elements.
  std::vector<float> sa(3), sb(3);
  fgmp_block_scores(x.data(), 1, C, g.data(), sa.data());
  fgmp_block_scores(zeroed.data(), 1, C, g.data(), sb.data());
  EXPECT_EQ(sa, sb);
}

TEST(ActQuant, NoneAndZeroRowsAndModeNames) {
  std::vector<float> x = test_rows(3, 24, 1), y = x;
  const ActBlockCounts n = quantize_activations(y.data(), 3, 24, ActQuantMode::kNone);
  EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * 4), 0);
  EXPECT_EQ(n.fp4 + n.fp8, 0);
  std::vector<float> z(48, 0.0f);
  quantize_activations(z.data(), 2, 24, ActQuantMode::kNvfp4);
  for (float v : z) EXPECT_EQ(v, 0.0f);
  for (const char* s : {"none", "fp8", "nvfp4", "fgmp"}) EXPECT_STREQ(act_mode_name(parse_act_mode(s)), s);
  try {
    parse_act_mode("int4");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kUsage);
  }
}

// --- dL/dx and act-fisher --------------------------------------------------------------

// Records dL/dx per (layer, group); optionally adds `delta` to one input entry in the forward.
struct InputProbe final : LinearInputObserver {
  std::map<std::pair<int64_t, int>, MatRM<float>> dx;
  int64_t layer = -1, t = 0, c = 0;
  int group = -1;
  double delta = 0;
  void on_linear_input_grad(int64_t l, int g, const MatRM<float>& d) override { dx[{l, g}] = d; }
  void edit_linear_input(int64_t l, int g, MatRM<double>& x) override {
    if (l == layer && g == group) x(t, c) += delta;
  }
};

test::TinyLlamaSpec grad_spec() {
  test::TinyLlamaSpec s;
  s.hidden = 32;
  s.heads = 4;
  s.kv_heads = 2;
  s.intermediate = 40;
  s.vocab = 48;
  s.weight_std = 0.3f;
  return s;
}

TEST(ActFisher, InputGradientMatchesFiniteDifferencesFloat64) {
  const std::string dir = test::scratch_dir("act-grad");
  test::write_tiny_llama(dir, grad_spec());
  const LlamaModel m = LlamaModel::load(dir);
  const LlamaConfig& cfg = m.config();
  const LlamaParams<double> p = to_params<double>(m.weights());
  const int64_t T = 10;
  const auto tok = test::random_tokens(T, cfg.vocab_size, 5);
  LlamaParams<double> g;
  InputProbe probe;
  llama_loss_and_grad<double>(cfg, p, tok.data(), T, &g, &probe);
  ASSERT_EQ(probe.dx.size(), static_cast<std::size_t>(cfg.num_layers * 4));
  std::mt19937_64 rng(2);
  const double h = 1e-3;
  for (const auto& [key, dx] : probe.dx) {
    const double max_g = dx.cwiseAbs().maxCoeff();
    ASSERT_GT(max_g, 0.0);
    for (int s = 0; s < 5; ++s) {
      probe.layer = key.first;
      probe.group = key.second;
      probe.t = static_cast<int64_t>(rng() % static_cast<uint64_t>(T - 1));  // the last token's input has no loss
      probe.c = static_cast<int64_t>(rng() % static_cast<uint64_t>(dx.cols()));
      auto loss_at = [&](double d) {
        probe.delta = d;
        return llama_loss_and_grad<double>(cfg, p, tok.data(), T, nullptr, &probe);
      };
      const double fd = (-loss_at(2 * h) + 8 * loss_at(h) - 8 * loss_at(-h) + loss_at(-2 * h)) / (12 * h);
      probe.delta = 0;
      const double an = dx(probe.t, probe.c);
      const double denom = std::max({std::abs(fd), std::abs(an), 1e-3 * max_g});
      EXPECT_LT(std::abs(fd - an) / denom, 1e-5)
          << "layer " << key.first << " group " << key.second << " [" << probe.t << ", " << probe.c << "]: fd " << fd
          << " analytic " << an;
    }
  }
}

TEST(ActFisher, IsMeanOverTokensOfSquaredInputGradient) {
  const std::string dir = test::scratch_dir("act-fisher");
  test::write_tiny_llama(dir, grad_spec());
  const LlamaModel m = LlamaModel::load(dir);
  const auto ids = test::random_tokens(200, m.config().vocab_size, 3);
  const std::vector<int64_t> starts = {0, 50, 130};
  const int64_t L = 24;
  SensitivityOptions o;
  o.fisher = o.hessian = false;
  o.act_fisher = true;
  const SensitivityResult r = compute_sensitivities(m, ids, starts, L, o);
  // Direct: float64 gradients of each window, squares summed over tokens and windows.
  const LlamaParams<double> p = to_params<double>(m.weights());
  std::map<std::pair<int64_t, int>, Eigen::VectorXd> sum;
  for (int64_t s : starts) {
    InputProbe probe;
    LlamaParams<double> g;
    llama_loss_and_grad<double>(m.config(), p, ids.data() + s, L, &g, &probe);
    for (const auto& [k, dx] : probe.dx) {
      const Eigen::VectorXd sq = dx.cast<double>().array().square().colwise().sum().transpose();
      sum[k] = sum[k].size() ? Eigen::VectorXd(sum[k] + sq) : sq;
    }
  }
  const int groups[7] = {0, 0, 0, 1, 2, 2, 3};  // q k v | o | gate up | down
  for (int64_t l = 0; l < m.config().num_layers; ++l)
    for (int i = 0; i < 7; ++i) {
      const TensorSensitivity& t = r.tensors[static_cast<std::size_t>(l * 7 + i)];
      const Eigen::VectorXd ref = sum[{l, groups[i]}] / static_cast<double>(starts.size() * L);
      ASSERT_EQ(t.act_fisher.size(), static_cast<std::size_t>(ref.size())) << t.name;
      EXPECT_TRUE(t.fisher.empty() && t.hessian_diag.empty());
      for (Eigen::Index c = 0; c < ref.size(); ++c)
        EXPECT_NEAR(t.act_fisher[static_cast<std::size_t>(c)], ref[c], 1e-3 * ref.maxCoeff()) << t.name << " " << c;
      EXPECT_NEAR(t.act_fisher_sum, ref.sum(), 1e-3 * ref.sum());
    }
  EXPECT_EQ(r.tensors[0].act_fisher, r.tensors[2].act_fisher);  // q and v share their input
  EXPECT_EQ(r.tensors[4].act_fisher, r.tensors[5].act_fisher);  // gate and up
}

// --- The forward pass --------------------------------------------------------------------

LlamaModel tiny_model(const std::string& tag) {
  const std::string dir = test::scratch_dir(tag);
  test::TinyLlamaSpec s;
  s.intermediate = 40;  // down_proj ends in a partial block
  test::write_tiny_llama(dir, s);
  return LlamaModel::load(dir);
}

void set_thresholds(LlamaModel& m, float thr) {
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (auto& L : m.mutable_weights().layers)
    for (Linear& lin : L.linear) {
      lin.input_act_fisher.resize(static_cast<std::size_t>(lin.cols));
      for (float& v : lin.input_act_fisher) v = u(rng);
      lin.input_fgmp_threshold = thr;
    }
}

MatrixRM logits_with(LlamaModel& m, ActQuantMode mode, const std::vector<int32_t>& tok) {
  m.set_act_quant(mode);
  return m.forward(tok.data(), static_cast<int64_t>(tok.size()));
}

bool bit_equal(const MatrixRM& a, const MatrixRM& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() && std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0;
}

TEST(ActForward, NoneIsBitIdenticalAndFgmpAtInfiniteThresholdsIsNvfp4OrFp8) {
  LlamaModel m = tiny_model("act-fwd");
  const auto tok = test::random_tokens(40, m.config().vocab_size, 7);
  const MatrixRM ref = m.forward(tok.data(), 40);
  const MatrixRM fp8 = logits_with(m, ActQuantMode::kFp8, tok);
  EXPECT_EQ(m.act_block_counts().fp8, 2 * 40 * (3 * 4 + 4 + 2 * 4 + 3));  // per layer: q,k,v,o,gate,up of 64 inputs, down of 40
  EXPECT_FALSE(bit_equal(fp8, ref));
  EXPECT_TRUE(bit_equal(logits_with(m, ActQuantMode::kNone, tok), ref));
  EXPECT_EQ(m.act_block_counts().fp4 + m.act_block_counts().fp8, 0);
  const MatrixRM nvfp4 = logits_with(m, ActQuantMode::kNvfp4, tok);
  set_thresholds(m, kInf);
  EXPECT_TRUE(bit_equal(logits_with(m, ActQuantMode::kFgmp, tok), nvfp4));
  EXPECT_EQ(m.act_block_counts().fp8, 0);
  set_thresholds(m, -kInf);
  EXPECT_TRUE(bit_equal(logits_with(m, ActQuantMode::kFgmp, tok), fp8));
  EXPECT_EQ(m.act_block_counts().fp4, 0);
  set_thresholds(m, 1e-4f);
  logits_with(m, ActQuantMode::kFgmp, tok);
  EXPECT_GT(m.act_block_counts().fp4, 0);
  EXPECT_GT(m.act_block_counts().fp8, 0);
}

TEST(ActForward, FgmpWithoutThresholdsIsAnInputError) {
  LlamaModel m = tiny_model("act-missing");
  try {
    m.set_act_quant(ActQuantMode::kFgmp, "/some/ckpt");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kInput);
    EXPECT_NE(std::string(e.what()).find("/some/ckpt: tensor 'model.layers.0.self_attn.q_proj.input_fgmp_threshold'"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(m.act_quant(), ActQuantMode::kNone);
}

// Quantizes every linear input of a float64 forward with a weight quantizer's row round trip.
struct QuantizeInputs final : LinearInputObserver {
  std::string format;
  void edit_linear_input(int64_t, int, MatRM<double>& x) override {
    std::vector<float> row(static_cast<std::size_t>(x.cols()));
    for (Eigen::Index t = 0; t < x.rows(); ++t) {
      for (Eigen::Index c = 0; c < x.cols(); ++c) row[static_cast<std::size_t>(c)] = static_cast<float>(x(t, c));
      const auto q = weight_roundtrip(format, row.data(), x.cols());
      for (Eigen::Index c = 0; c < x.cols(); ++c) x(t, c) = q[static_cast<std::size_t>(c)];
    }
  }
};

// The float forward's activations differ from the float64 reference's by an ulp, which
// moves the per-token scales by an ulp; a value that then crosses a rounding boundary
// changes the loss by a sizeable part of the whole quantization effect. A short window keeps
// such crossings improbable (a few thousand quantized values), so the two losses agree.
TEST(ActForward, QuantizesEveryLinearInputLikeAReferenceForward) {
  LlamaModel m = tiny_model("act-place");
  const int64_t T = 16;
  const auto tok = test::random_tokens(T, m.config().vocab_size, 9);
  const LlamaParams<double> p = to_params<double>(m.weights());
  const double plain = llama_loss_and_grad<double>(m.config(), p, tok.data(), T, nullptr);
  for (const char* fmt : {"fp8", "nvfp4"}) {
    QuantizeInputs q;
    q.format = fmt;
    const double ref = llama_loss_and_grad<double>(m.config(), p, tok.data(), T, nullptr, &q);
    const MatrixRM logits = logits_with(m, parse_act_mode(fmt), tok);
    double nll = 0;
    for (int64_t t = 0; t + 1 < T; ++t) {
      const auto row = logits.row(t).cast<double>();
      nll += std::log((row.array() - row.maxCoeff()).exp().sum()) + row.maxCoeff() - row(tok[static_cast<std::size_t>(t + 1)]);
    }
    nll /= static_cast<double>(T - 1);
    // The quantization effect is far larger than the float32-vs-float64 difference.
    EXPECT_GT(std::abs(ref - plain), 1e-5) << fmt;
    EXPECT_LT(std::abs(nll - ref), 0.05 * std::abs(ref - plain)) << fmt << ": model " << nll << " reference " << ref
                                                                 << " unquantized " << plain;
  }
}

// --- Offline thresholds ------------------------------------------------------------------

TEST(ActCalibration, ThresholdForFraction) {
  EXPECT_EQ(fgmp_threshold_for_fraction({5, 1, 3, 2, 4}, 0.6), 3.0f);
  EXPECT_EQ(fgmp_threshold_for_fraction({5, 1, 3, 2, 4}, 0.0), -kInf);
  EXPECT_EQ(fgmp_threshold_for_fraction({5, 1, 3, 2, 4}, 1.0), kInf);
  EXPECT_EQ(fgmp_threshold_for_fraction({}, 0.7), kInf);
}

// A tiny model folder, its ids file and a sensitivity file with act_fisher (and fisher).
struct ActFixture {
  std::string model, ids, sens;
};

ActFixture act_fixture(const std::string& tag) {
  ActFixture f;
  f.model = test::scratch_dir(tag);
  test::TinyLlamaSpec s;
  s.intermediate = 40;
  test::write_tiny_llama(f.model, s);
  const auto ids = test::random_tokens(600, s.vocab, 11);
  f.ids = f.model + "/calib.i32";
  std::vector<uint8_t> b(ids.size() * 4);
  std::memcpy(b.data(), ids.data(), b.size());
  test::write_bytes(f.ids, b);
  SensitivityOptions o;
  o.hessian = false;
  o.act_fisher = true;
  const SensitivityResult r = compute_sensitivities(LlamaModel::load(f.model), ids, {0, 100, 300}, 64, o);
  f.sens = f.model + "/sens.safetensors";
  write_sensitivity_file(f.sens, r, {{"kinds", "fisher,act-fisher"}});
  return f;
}

// Block scores of one observed input, computed here from the weight quantizers.
struct DirectScores final : LinearInputObserver {
  const ActCalibration* cal = nullptr;
  std::map<std::string, std::pair<int64_t, int64_t>> fp4_and_total;
  void on_linear_input(int64_t l, int g, const MatRM<float>& x) override {
    const int groups[7] = {0, 0, 0, 1, 2, 2, 3};
    for (int i = 0; i < 7; ++i) {
      if (groups[i] != g) continue;
      const std::string name = "model.layers." + std::to_string(l) + "." + kLinearNames[i];
      const ActModuleCalibration& mc = cal->modules.at(name);
      for (Eigen::Index t = 0; t < x.rows(); ++t) {
        const auto a = weight_roundtrip("fp8", x.row(t).data(), x.cols());
        const auto b = weight_roundtrip("nvfp4", x.row(t).data(), x.cols());
        for (Eigen::Index c0 = 0; c0 < x.cols(); c0 += 16) {
          double s = 0;
          for (Eigen::Index c = c0; c < std::min<Eigen::Index>(x.cols(), c0 + 16); ++c)
            s += mc.act_fisher[static_cast<std::size_t>(c)] *
                 std::pow(double(b[static_cast<std::size_t>(c)]) - double(a[static_cast<std::size_t>(c)]), 2);
          auto& [fp4, total] = fp4_and_total[name];
          fp4 += static_cast<float>(s) <= mc.threshold;
          ++total;
        }
      }
    }
  }
};

// The calibration both the library and the mpq-pack tests run: 6 windows of 32 tokens.
ActCalibOptions calib_options(const ActFixture& f) {
  ActCalibOptions o;
  o.text = f.ids;
  o.sensitivity = f.sens;
  o.samples = 6;
  o.seq_len = 32;
  return o;
}

TEST(ActCalibration, ThresholdsGiveTheRequestedFp4FractionOnTheCalibrationData) {
  const ActFixture f = act_fixture("act-cal");
  const ActCalibration cal = calibrate_act_thresholds(f.model, calib_options(f));
  ASSERT_EQ(cal.modules.size(), 14u);
  EXPECT_EQ(cal.record["method"], "fgmp");
  EXPECT_EQ(cal.record["calibration"]["samples"], 6);
  // Independent count: the same windows through the fp32 model, scores from the weight quantizers.
  const LlamaModel m = LlamaModel::load(f.model);
  const auto ids = read_token_file(f.ids);
  DirectScores d;
  d.cal = &cal;
  for (int64_t s : calibration_window_starts(static_cast<int64_t>(ids.size()), 6, 32, 0, false))
    llama_loss_and_grad<float>(m.config(), to_params<float>(m.weights()), ids.data() + s, 32, nullptr, &d);
  ASSERT_EQ(d.fp4_and_total.size(), 14u);
  for (const auto& [name, ft] : d.fp4_and_total) {
    const double frac = static_cast<double>(ft.first) / static_cast<double>(ft.second);
    EXPECT_NEAR(frac, 0.7, 0.01) << name;
    EXPECT_EQ(ft.second, cal.modules.at(name).blocks) << name;
    EXPECT_TRUE(std::isfinite(cal.modules.at(name).threshold)) << name;
  }
  EXPECT_NEAR(cal.record["measured_fp4_fraction"].get<double>(), 0.7, 0.01);
}

TEST(ActCalibration, MissingActFisherNamesFileAndTensor) {
  const ActFixture f = act_fixture("act-cal-bad");
  const std::string sens = f.model + "/fisher-only.safetensors";
  SensitivityOptions o;
  o.hessian = false;
  write_sensitivity_file(sens, compute_sensitivities(LlamaModel::load(f.model), read_token_file(f.ids), {0}, 32, o), {});
  ActCalibOptions a;
  a.text = f.ids;
  a.sensitivity = sens;
  try {
    calibrate_act_thresholds(f.model, a);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kInput);
    EXPECT_NE(std::string(e.what()).find(sens + ": tensor 'model.layers.0.self_attn.q_proj.act_fisher' missing"),
              std::string::npos)
        << e.what();
  }
}

// --- The tools ---------------------------------------------------------------------------

std::string tool(const std::string& name) { return test::tools_dir() + "/" + name; }

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

TEST(ActTools, PackWithActCalibThenEvalEveryActMode) {
  const ActFixture f = act_fixture("act-tools");
  const std::string out = test::scratch_dir("act-tools-out");
  std::string log;
  for (const char* fmt : {"nvfp4", "fp8", "squeezellm", "uniform"}) {
    const std::string dst = out + "/" + fmt;
    ASSERT_EQ(test::run_command(tool("mpq-pack") + " --model " + f.model + " --format " + fmt + " --sensitivity " +
                                    f.sens + " --act-calib " + f.ids + " --act-samples 6 --act-seq-len 32 --out " +
                                    dst + " -q",
                                &log),
              0)
        << log;
    const TensorStore st = TensorStore::open(dst);
    EXPECT_EQ(st.get("model.layers.1.mlp.down_proj.input_act_fisher").shape, (std::vector<int64_t>{40}));
    EXPECT_TRUE(st.get("model.layers.1.mlp.down_proj.input_fgmp_threshold").shape.empty());
    const auto act = read_json(dst + "/config.json")["quantization_config"]["activation"];
    EXPECT_EQ(act["method"], "fgmp") << fmt;
    EXPECT_EQ(act["block_size"], 16);
    EXPECT_EQ(act["fp4_fraction"], 0.7);
    EXPECT_EQ(act["scales"], "dynamic per token");
    EXPECT_EQ(act["calibration"]["seq_len"], 32);
    EXPECT_EQ(read_json(dst + "/mpq_manifest.json")["quantization_config"]["activation"], act);
  }
  // Thresholds written by mpq-pack are those of the library calibration.
  const ActCalibration cal = calibrate_act_thresholds(f.model, calib_options(f));
  const LlamaModel packed = LlamaModel::load(out + "/nvfp4");
  EXPECT_EQ(packed.weights().layers[1].linear[6].input_fgmp_threshold,
            cal.modules.at("model.layers.1.mlp.down_proj").threshold);

  const std::string ids = f.ids;
  double ppl_none = 0;
  for (const char* act : {"none", "fp8", "nvfp4", "fgmp"}) {
    const std::string js = out + "/eval-" + act + ".json";
    ASSERT_EQ(test::run_command(tool("mpq-eval") + " --model " + out + "/nvfp4 --tokens " + ids +
                                    " --ctx 64 --act " + act + " --json " + js + " -q",
                                &log),
              0)
        << log;
    const auto j = read_json(js);
    EXPECT_EQ(j["act"], act);
    if (std::string(act) == "none") {
      ppl_none = j["ppl"];
      EXPECT_FALSE(j.contains("act_fp4_fraction"));
    } else {
      EXPECT_NE(j["ppl"].get<double>(), ppl_none) << act;
    }
    if (std::string(act) == "fgmp") {
      const double frac = j["act_fp4_fraction"];
      EXPECT_GT(frac, 0.4);
      EXPECT_LT(frac, 0.95);
    }
  }
  // --exclude keeps weights dense; the activation thresholds are still written.
  ASSERT_EQ(test::run_command(tool("mpq-pack") + " --model " + f.model + " --format nvfp4 --exclude '.*' --sensitivity " +
                                  f.sens + " --act-calib " + f.ids + " --act-samples 6 --act-seq-len 32 --out " + out +
                                  "/dense -q",
                              &log),
            0)
      << log;
  EXPECT_EQ(test::run_command(tool("mpq-eval") + " --model " + out + "/dense --tokens " + ids + " --ctx 64 --act fgmp -q",
                              &log),
            0)
      << log;
}

TEST(ActTools, BadInputsAndUsage) {
  const ActFixture f = act_fixture("act-bad");
  const std::string out = test::scratch_dir("act-bad-out");
  std::string log;
  // fgmp on a checkpoint without thresholds: exit 3 naming the folder and the tensor.
  ASSERT_EQ(test::run_command(tool("mpq-pack") + " --model " + f.model + " --format nvfp4 --out " + out + "/plain -q"), 0);
  EXPECT_EQ(test::run_command(tool("mpq-eval") + " --model " + out + "/plain --tokens " + f.ids + " --ctx 64 --act fgmp -q",
                              &log),
            3);
  EXPECT_NE(log.find(out + "/plain: tensor 'model.layers.0.self_attn.q_proj.input_fgmp_threshold' missing"),
            std::string::npos)
      << log;
  EXPECT_EQ(test::run_command(tool("mpq-eval") + " --model " + out + "/plain --tokens " + f.ids + " --ctx 64 --act int4 -q"), 2);
  // A sensitivity file without act_fisher: exit 3 naming it, nothing left behind.
  const std::string sens = out + "/fisher-only.safetensors";
  ASSERT_EQ(test::run_command(tool("mpq-sensitivity") + " --model " + f.model + " --calib " + f.ids +
                              " --samples 2 --seq-len 32 --kind fisher -q --out " + sens),
            0);
  EXPECT_EQ(test::run_command(tool("mpq-pack") + " --model " + f.model + " --format fp8 --sensitivity " + sens +
                                  " --act-calib " + f.ids + " --out " + out + "/x -q",
                              &log),
            3);
  EXPECT_NE(log.find(sens + ": tensor 'model.layers.0.self_attn.q_proj.act_fisher' missing"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(out + "/x"));
  // Usage errors: --act-calib without --sensitivity, act flags without --act-calib, a bad fraction.
  EXPECT_EQ(test::run_command(tool("mpq-pack") + " --model " + f.model + " --format fp8 --act-calib " + f.ids + " --out " +
                              out + "/y -q"),
            2);
  EXPECT_EQ(test::run_command(tool("mpq-pack") + " --model " + f.model + " --format fp8 --act-samples 4 --out " + out + "/y -q"),
            2);
  EXPECT_EQ(test::run_command(tool("mpq-pack") + " --model " + f.model + " --format fp8 --sensitivity " + f.sens +
                              " --act-calib " + f.ids + " --act-fp4-fraction 1.5 --out " + out + "/y -q"),
            2);
  // mpq-sensitivity --kind act-fisher writes <module>.act_fisher [in] and records the kind.
  const std::string s2 = out + "/act.safetensors";
  ASSERT_EQ(test::run_command(tool("mpq-sensitivity") + " --model " + f.model + " --calib " + f.ids +
                              " --samples 2 --seq-len 32 --kind act-fisher,hessian -q --out " + s2),
            0);
  const TensorStore st = TensorStore::open(s2);
  EXPECT_EQ(st.get("model.layers.1.mlp.down_proj.act_fisher").shape, (std::vector<int64_t>{40}));
  EXPECT_FALSE(st.has("model.layers.1.mlp.down_proj.fisher"));
  EXPECT_EQ(st.files()[0]->metadata().at("kinds"), "hessian,act-fisher");
}

TEST(ActTools, Stories260kFgmpActivations) {
  MPQ_REQUIRE_DATA();
  const std::string data = test::data_dir(), model = data + "/models/stories260K-hf";
  const std::string calib = data + "/text/tinystories_valid_calib.txt", text = data + "/text/tinystories_valid_eval.txt";
  const std::string out = test::scratch_dir("act-260k");
  std::string log;
  ASSERT_EQ(test::run_command(tool("mpq-sensitivity") + " --model " + model + " --calib " + calib +
                                  " --samples 16 --seq-len 128 --kind act-fisher -q --out " + out + "/s.safetensors",
                              &log),
            0)
      << log;
  ASSERT_EQ(test::run_command(tool("mpq-pack") + " --model " + model + " --format nvfp4 --sensitivity " + out +
                                  "/s.safetensors --act-calib " + calib + " --act-samples 8 --act-seq-len 128 --out " +
                                  out + "/p -q",
                              &log),
            0)
      << log;
  std::map<std::string, nlohmann::json> r;
  for (const char* act : {"nvfp4", "fgmp", "fp8"}) {
    ASSERT_EQ(test::run_command(tool("mpq-eval") + " --model " + out + "/p --text " + text +
                                    " --ctx 256 --max-tokens 4096 -q --act " + act + " --json " + out + "/" + act + ".json",
                                &log),
              0)
        << log;
    r[act] = read_json(out + "/" + act + ".json");
  }
  const double frac = r["fgmp"]["act_fp4_fraction"];
  EXPECT_GT(frac, 0.55);
  EXPECT_LT(frac, 0.85);
  // 30% FP8 blocks chosen by Fisher recover part of the NVFP4-activation loss.
  EXPECT_LT(r["fgmp"]["ppl"].get<double>(), r["nvfp4"]["ppl"].get<double>());
  EXPECT_LE(r["fp8"]["ppl"].get<double>(), r["fgmp"]["ppl"].get<double>());
}

}  // namespace
}  // namespace mpq
