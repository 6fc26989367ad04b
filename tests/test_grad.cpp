// Backward pass of the Llama graph: central finite differences in float64 for every
// parameter tensor (sampled entries), float vs double agreement, and agreement of the loss
// with the evaluation forward pass.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "lib/eval/perplexity.h"
#include "lib/model/llama_grad.h"
#include "tests/test_util.h"

namespace mpq {
namespace {

struct TensorRef {
  std::string name;
  double* data;
  Eigen::Index n;
};

std::vector<TensorRef> tensors(LlamaParams<double>& p) {
  std::vector<TensorRef> out;
  p.for_each([&](const std::string& n, double* d, Eigen::Index k) { out.push_back({n, d, k}); });
  return out;
}

test::TinyLlamaSpec grad_spec(bool tie, bool bias, int kv) {
  test::TinyLlamaSpec s;
  s.hidden = 32;
  s.heads = 4;
  s.kv_heads = kv;
  s.intermediate = 40;
  s.vocab = 48;
  s.tie_embeddings = tie;
  s.qkv_bias = bias;
  s.weight_std = 0.3f;  // large enough that attention is far from uniform
  return s;
}

class GradCheck : public ::testing::TestWithParam<test::TinyLlamaSpec> {};

TEST_P(GradCheck, CentralFiniteDifferencesFloat64) {
  const std::string dir = test::scratch_dir("grad");
  test::write_tiny_llama(dir, GetParam());
  const LlamaModel m = LlamaModel::load(dir);
  const LlamaConfig& c = m.config();
  LlamaParams<double> p = to_params<double>(m.weights());
  const auto tok = test::random_tokens(12, c.vocab_size, 5);
  LlamaParams<double> g;
  llama_loss_and_grad<double>(c, p, tok.data(), 12, &g);
  auto pt = tensors(p);
  auto gt = tensors(g);
  ASSERT_EQ(pt.size(), gt.size());
  std::mt19937_64 rng(9);
  // Every tensor of the checkpoint is visited, in the checkpoint's order.
  const auto expected = llama_tensor_shapes(c);
  ASSERT_EQ(pt.size(), expected.size());
  for (std::size_t k = 0; k < pt.size(); ++k) EXPECT_EQ(pt[k].name, expected[k].first);
  const double h = 1e-3;
  for (std::size_t k = 0; k < pt.size(); ++k) {
    ASSERT_EQ(pt[k].name, gt[k].name);
    ASSERT_EQ(pt[k].n, gt[k].n);
    std::uniform_int_distribution<Eigen::Index> pick(0, pt[k].n - 1);
    double tensor_max_grad = 0;
    for (Eigen::Index i = 0; i < gt[k].n; ++i) tensor_max_grad = std::max(tensor_max_grad, std::abs(gt[k].data[i]));
    ASSERT_GT(tensor_max_grad, 0.0) << pt[k].name << " has an all-zero gradient";
    for (int s = 0; s < 6; ++s) {
      const Eigen::Index i = pick(rng);
      double& theta = pt[k].data[i];
      const double saved = theta;
      auto loss_at = [&](double offset) {
        theta = saved + offset;
        return llama_loss_and_grad<double>(c, p, tok.data(), 12, nullptr);
      };
      // Fourth-order central difference: truncation O(h^4), round-off O(1e-16 / h).
      const double fd = (-loss_at(2 * h) + 8 * loss_at(h) - 8 * loss_at(-h) + loss_at(-2 * h)) / (12 * h);
      theta = saved;
      const double an = gt[k].data[i];
      // Relative to the entry, floored at 1e-3 of the tensor's largest gradient so entries
      // whose gradient is ~0 are judged on an absolute scale.
      const double denom = std::max({std::abs(fd), std::abs(an), 1e-3 * tensor_max_grad});
      EXPECT_LT(std::abs(fd - an) / denom, 1e-6) << pt[k].name << "[" << i << "]: fd " << fd << " analytic " << an;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, GradCheck,
                         ::testing::Values(grad_spec(false, false, 2),  // GQA, untied
                                           grad_spec(true, true, 4),    // MHA, tied, Qwen2 bias
                                           grad_spec(true, false, 1))); // MQA, tied

TEST(Grad, FloatAgreesWithDoubleAndEvalForward) {
  const std::string dir = test::scratch_dir("grad-f32");
  test::TinyLlamaSpec s;
  s.kv_heads = 2;
  test::write_tiny_llama(dir, s);
  const LlamaModel m = LlamaModel::load(dir);
  const auto tok = test::random_tokens(64, m.config().vocab_size, 3);
  LlamaParams<double> gd;
  LlamaParams<float> gf;
  const double ld = llama_loss_and_grad<double>(m.config(), to_params<double>(m.weights()), tok.data(), 64, &gd);
  const float lf = llama_loss_and_grad<float>(m.config(), to_params<float>(m.weights()), tok.data(), 64, &gf);
  EXPECT_NEAR(lf, ld, 1e-5 * ld);
  // The evaluation forward gives the same mean NLL.
  const MatrixRM logits = m.forward(tok.data(), 64);
  EXPECT_NEAR(sum_next_token_nll(logits, tok.data()) / 63.0, ld, 1e-5 * ld);
  std::vector<std::pair<const double*, Eigen::Index>> a;
  std::vector<const float*> b;
  gd.for_each([&](const std::string&, const double* d, Eigen::Index n) { a.push_back({d, n}); });
  gf.for_each([&](const std::string&, const float* d, Eigen::Index) { b.push_back(d); });
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t k = 0; k < a.size(); ++k) {
    double num = 0, den = 0;
    for (Eigen::Index i = 0; i < a[k].second; ++i) {
      num += std::pow(a[k].first[i] - b[k][i], 2);
      den += std::pow(a[k].first[i], 2);
    }
    EXPECT_LT(std::sqrt(num / den), 1e-4) << "tensor " << k;
  }
}

}  // namespace
}  // namespace mpq
