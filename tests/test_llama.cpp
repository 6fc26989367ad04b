// Llama forward pass: against a naive float64 reference written here from the equations
// (tiny random models), structural properties (causality, GQA, tying), and the golden
// references of ../shared/data (independent float64 implementation, SOURCES.md).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "formats/hf_config.h"
#include "lib/common/error.h"
#include "lib/eval/perplexity.h"
#include "lib/model/llama.h"
#include "lib/model/tokenizer.h"
#include "tests/test_util.h"

namespace mpq {
namespace {

using Mat = std::vector<std::vector<double>>;

// y[t][o] = sum_i x[t][i] * W[o][i] (+ b[o]), in float64.
Mat ref_linear(const Mat& x, const Linear& l) {
  Mat y(x.size(), std::vector<double>(static_cast<std::size_t>(l.w.rows()), 0.0));
  for (std::size_t t = 0; t < x.size(); ++t)
    for (Eigen::Index o = 0; o < l.w.rows(); ++o) {
      double s = l.b.size() ? l.b[o] : 0.0;
      for (Eigen::Index i = 0; i < l.w.cols(); ++i) s += x[t][static_cast<std::size_t>(i)] * l.w(o, i);
      y[t][static_cast<std::size_t>(o)] = s;
    }
  return y;
}

Mat ref_rms(const Mat& x, const Eigen::VectorXf& g, double eps) {
  Mat y = x;
  for (auto& row : y) {
    double ms = 0;
    for (double v : row) ms += v * v;
    const double inv = 1.0 / std::sqrt(ms / static_cast<double>(row.size()) + eps);
    for (std::size_t i = 0; i < row.size(); ++i) row[i] *= inv * g[static_cast<Eigen::Index>(i)];
  }
  return y;
}

// Naive float64 Llama forward from the HF equations (rotate-half RoPE, GQA, SwiGLU).
Mat reference_forward(const LlamaModel& m, const std::vector<int32_t>& tok) {
  const LlamaConfig& c = m.config();
  const auto& W = m.weights();
  const std::size_t T = tok.size();
  const int64_t d = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  Mat h(T);
  for (std::size_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < c.hidden_size; ++i) h[t].push_back(W.embed(tok[t], i));
  for (const auto& L : W.layers) {
    const Mat n = ref_rms(h, L.input_norm, c.rms_norm_eps);
    Mat q = ref_linear(n, L.linear[0]), k = ref_linear(n, L.linear[1]);
    const Mat v = ref_linear(n, L.linear[2]);
    auto rope = [&](Mat& x, int64_t heads) {
      for (std::size_t t = 0; t < T; ++t)
        for (int64_t hh = 0; hh < heads; ++hh)
          for (int64_t i = 0; i < d / 2; ++i) {
            const double f = std::pow(c.rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(d));
            const double a = static_cast<double>(t) * f;
            double& x1 = x[t][static_cast<std::size_t>(hh * d + i)];
            double& x2 = x[t][static_cast<std::size_t>(hh * d + i + d / 2)];
            const double r1 = x1 * std::cos(a) - x2 * std::sin(a), r2 = x2 * std::cos(a) + x1 * std::sin(a);
            x1 = r1;
            x2 = r2;
          }
    };
    rope(q, nh);
    rope(k, nkv);
    Mat attn(T, std::vector<double>(static_cast<std::size_t>(nh * d), 0.0));
    for (int64_t hh = 0; hh < nh; ++hh) {
      const int64_t g = hh / (nh / nkv);
      for (std::size_t i = 0; i < T; ++i) {
        std::vector<double> s(i + 1);
        double mx = -1e300;
        for (std::size_t j = 0; j <= i; ++j) {
          double dot = 0;
          for (int64_t e = 0; e < d; ++e)
            dot += q[i][static_cast<std::size_t>(hh * d + e)] * k[j][static_cast<std::size_t>(g * d + e)];
          s[j] = dot / std::sqrt(static_cast<double>(d));
          mx = std::max(mx, s[j]);
        }
        double z = 0;
        for (auto& x : s) z += (x = std::exp(x - mx));
        for (std::size_t j = 0; j <= i; ++j)
          for (int64_t e = 0; e < d; ++e)
            attn[i][static_cast<std::size_t>(hh * d + e)] += s[j] / z * v[j][static_cast<std::size_t>(g * d + e)];
      }
    }
    const Mat o = ref_linear(attn, L.linear[3]);
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t i = 0; i < h[t].size(); ++i) h[t][i] += o[t][i];
    const Mat mm = ref_rms(h, L.post_attn_norm, c.rms_norm_eps);
    Mat gt = ref_linear(mm, L.linear[4]);
    const Mat up = ref_linear(mm, L.linear[5]);
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t i = 0; i < gt[t].size(); ++i) gt[t][i] = gt[t][i] / (1.0 + std::exp(-gt[t][i])) * up[t][i];
    const Mat dn = ref_linear(gt, L.linear[6]);
    for (std::size_t t = 0; t < T; ++t)
      for (std::size_t i = 0; i < h[t].size(); ++i) h[t][i] += dn[t][i];
  }
  const Mat n = ref_rms(h, W.final_norm, c.rms_norm_eps);
  Linear head;
  head.w = c.tie_word_embeddings ? W.embed : W.lm_head;
  return ref_linear(n, head);
}

double max_abs_diff(const MatrixRM& a, const Mat& b) {
  double m = 0;
  for (Eigen::Index t = 0; t < a.rows(); ++t)
    for (Eigen::Index j = 0; j < a.cols(); ++j)
      m = std::max(m, std::abs(a(t, j) - b[static_cast<std::size_t>(t)][static_cast<std::size_t>(j)]));
  return m;
}

class TinyLlama : public ::testing::TestWithParam<test::TinyLlamaSpec> {};

TEST_P(TinyLlama, MatchesFloat64Reference) {
  const std::string dir = test::scratch_dir("tiny");
  test::write_tiny_llama(dir, GetParam());
  const LlamaModel m = LlamaModel::load(dir);
  const auto tok = test::random_tokens(40, m.config().vocab_size, 7);
  const MatrixRM logits = m.forward(tok.data(), static_cast<int64_t>(tok.size()));
  const Mat ref = reference_forward(m, tok);
  EXPECT_LT(max_abs_diff(logits, ref), 2e-4);
}

test::TinyLlamaSpec spec_with(bool tie, bool bias, int kv) {
  test::TinyLlamaSpec s;
  s.tie_embeddings = tie;
  s.qkv_bias = bias;
  s.kv_heads = kv;
  return s;
}

INSTANTIATE_TEST_SUITE_P(Variants, TinyLlama,
                         ::testing::Values(spec_with(false, false, 4),   // GQA, untied
                                           spec_with(true, false, 2),    // GQA 4:1, tied
                                           spec_with(false, true, 8),    // MHA, Qwen2 qkv bias
                                           spec_with(true, true, 1)));   // MQA

TEST(Llama, CausalAndFreshContext) {
  const std::string dir = test::scratch_dir("causal");
  test::write_tiny_llama(dir, {});
  const LlamaModel m = LlamaModel::load(dir);
  auto tok = test::random_tokens(32, m.config().vocab_size, 3);
  const MatrixRM full = m.forward(tok.data(), 32);
  const MatrixRM prefix = m.forward(tok.data(), 20);
  EXPECT_LT((full.topRows(20) - prefix).cwiseAbs().maxCoeff(), 1e-5);
  tok[25] = (tok[25] + 1) % static_cast<int32_t>(m.config().vocab_size);  // change the future only
  const MatrixRM changed = m.forward(tok.data(), 32);
  EXPECT_EQ((full.topRows(25) - changed.topRows(25)).cwiseAbs().maxCoeff(), 0.0f);
  EXPECT_GT((full.row(25) - changed.row(25)).cwiseAbs().maxCoeff(), 1e-4);
}

TEST(Llama, RejectsTokenOutsideVocabulary) {
  const std::string dir = test::scratch_dir("oov");
  test::write_tiny_llama(dir, {});
  const LlamaModel m = LlamaModel::load(dir);
  const std::vector<int32_t> tok = {1, 5, static_cast<int32_t>(m.config().vocab_size)};
  EXPECT_THROW(m.forward(tok.data(), 3), Error);
}

TEST(Perplexity, WindowsAndThreadIndependence) {
  const std::string dir = test::scratch_dir("ppl");
  test::write_tiny_llama(dir, {});
  const LlamaModel m = LlamaModel::load(dir);
  const auto tok = test::random_tokens(100, m.config().vocab_size, 11);
  PerplexityOptions opt;
  opt.ctx = 16;
  const PerplexityResult r = evaluate_perplexity(m, tok, opt);
  EXPECT_EQ(r.windows, 6);
  EXPECT_EQ(r.scored_tokens, 6 * 15);
  // Independent: exp of the mean of per-window NLLs from the float64 reference.
  double total = 0;
  for (int w = 0; w < 6; ++w) {
    std::vector<int32_t> win(tok.begin() + w * 16, tok.begin() + (w + 1) * 16);
    const Mat ref = reference_forward(m, win);
    for (int t = 0; t < 15; ++t) {
      double mx = -1e300, z = 0;
      for (double x : ref[t]) mx = std::max(mx, x);
      for (double x : ref[t]) z += std::exp(x - mx);
      total += mx + std::log(z) - ref[t][static_cast<std::size_t>(win[t + 1])];
    }
  }
  EXPECT_NEAR(r.mean_nll, total / 90.0, 1e-5);
  EXPECT_NEAR(r.ppl, std::exp(total / 90.0), 1e-4);
  // A model compared with itself has zero KL.
  opt.base = &m;
  EXPECT_NEAR(*evaluate_perplexity(m, tok, opt).mean_kl, 0.0, 1e-9);
  // Too few tokens for one window.
  opt.ctx = 101;
  EXPECT_THROW(evaluate_perplexity(m, tok, opt), Error);
}

TEST(RopeScaling, Llama3KeepsHighAndScalesLowFrequencies) {
  LlamaConfig c;
  c.head_dim = 128;
  c.rope_theta = 500000.0;
  const auto plain = rope_inv_freq(c);
  c.rope_scaling.type = RopeScaling::Type::kLlama3;
  c.rope_scaling.factor = 8.0;
  const auto scaled = rope_inv_freq(c);
  const double low_wavelen = 8192.0 / 1.0, high_wavelen = 8192.0 / 4.0;
  for (std::size_t i = 0; i < plain.size(); ++i) {
    const double wl = 2 * M_PI / plain[i];
    if (wl < high_wavelen) EXPECT_DOUBLE_EQ(scaled[i], plain[i]);
    else if (wl > low_wavelen) EXPECT_DOUBLE_EQ(scaled[i], plain[i] / 8.0);
    else {
      EXPECT_LE(scaled[i], plain[i]);
      EXPECT_GE(scaled[i], plain[i] / 8.0);
    }
  }
  c.rope_scaling.type = RopeScaling::Type::kLinear;
  c.rope_scaling.factor = 2.0;
  EXPECT_DOUBLE_EQ(rope_inv_freq(c)[3], plain[3] / 2.0);
}

// --- Golden checks on the real model --------------------------------------

std::string real(const std::string& rel) { return test::data_dir() + "/" + rel; }

TEST(Stories260K, TokenizerMatchesReferenceIds) {
  MPQ_REQUIRE_DATA();
  const Tokenizer tok = Tokenizer::load(real("models/stories260K-hf"));
  const auto ids = tok.encode(read_text_file(real("text/tinystories_valid_eval.txt")));
  const auto ref = read_token_file(real("reference/stories260K_tinystories_eval_tokens_20480.i32"));
  ASSERT_EQ(ref.size(), 20480u);
  ASSERT_GE(ids.size(), ref.size());
  EXPECT_TRUE(std::equal(ref.begin(), ref.end(), ids.begin()));
  const auto wref = read_token_file(real("reference/stories260K_wikitext2_test_tokens_20480.i32"));
  const auto wids = tok.encode(read_text_file(real("text/wikitext2_test_joined.txt")));
  ASSERT_GE(wids.size(), wref.size());
  EXPECT_TRUE(std::equal(wref.begin(), wref.end(), wids.begin()));
}

TEST(Stories260K, Window0LogitsMatchFloat64Reference) {
  MPQ_REQUIRE_DATA();
  const LlamaModel m = LlamaModel::load(real("models/stories260K-hf"));
  const auto ids = read_token_file(real("reference/stories260K_tinystories_eval_tokens_20480.i32"));
  const MatrixRM logits = m.forward(ids.data(), 512);
  const auto raw = test::read_bytes(real("reference/stories260K_tinystories_eval_window0_logits_pos0-31.f32"));
  ASSERT_EQ(raw.size(), 32u * 512u * 4u);
  std::vector<float> ref(32 * 512);
  std::memcpy(ref.data(), raw.data(), raw.size());
  double worst = 0;
  for (int t = 0; t < 32; ++t)
    for (int j = 0; j < 512; ++j) worst = std::max(worst, std::abs(double(logits(t, j)) - ref[t * 512 + j]));
  EXPECT_LT(worst, 1e-4) << "max |logit diff| over positions 0-31";
}

TEST(Stories260K, PerplexityMatchesReference) {
  MPQ_REQUIRE_DATA();
  const LlamaModel m = LlamaModel::load(real("models/stories260K-hf"));
  const auto ids = read_token_file(real("reference/stories260K_tinystories_eval_tokens_20480.i32"));
  PerplexityOptions opt;
  opt.ctx = 512;
  const PerplexityResult r = evaluate_perplexity(m, ids, opt);
  EXPECT_EQ(r.windows, 40);
  EXPECT_EQ(r.scored_tokens, 20440);
  EXPECT_NEAR(r.ppl, 4.0677, 0.0005);
  EXPECT_NEAR(r.mean_nll, 1.403074, 2e-5);
}

}  // namespace
}  // namespace mpq
