// Gradients of the causal-LM loss of the Llama graph with respect to every parameter,
// on CPU, for scalar type float (sensitivity passes) or double (finite-difference checks,
// Hessian-vector products).
//
// Loss: L = (1 / (T - 1)) * sum_{t < T-1} -log softmax(logits[t])[tokens[t + 1]], the mean
// next-token cross-entropy of one window run from a fresh context (the perplexity
// convention of lib/eval/perplexity.h). The graph is the one of lib/model/llama.h; the
// backward pass is derived by hand (reverse mode), layer by layer:
//   RMSNorm  y = g * x * r, r = (mean(x^2) + eps)^-1/2:
//            dg = sum_t dy * x * r,  dx = r * u - x * r^3 * (u . x) / H,  u = dy * g
//   SwiGLU   s = silu(a) * b: da = ds * b * silu'(a), db = ds * silu(a)
//   softmax  dS = P * (dP - rowsum(dP * P))
//   RoPE     the transpose (inverse) rotation
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "lib/model/llama.h"

namespace mpq {

template <typename S>
using MatRM = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;

/// All parameters of a Llama model (or their gradients) in scalar type S, shaped like the
/// HF tensors: embed [V, H]; per layer norms [H], linear weights [out, in] indexed like
/// kLinearNames, biases [out] (empty when the config has none); final_norm [H]; lm_head
/// [V, H] (empty when tied).
template <typename S>
struct LlamaParams {
  struct Layer {
    Vec<S> input_norm, post_attn_norm;
    std::array<MatRM<S>, 7> w;
    std::array<Vec<S>, 7> b;
  };
  MatRM<S> embed;
  std::vector<Layer> layers;
  Vec<S> final_norm;
  MatRM<S> lm_head;

  /// Same shapes, all zeros.
  LlamaParams zeros_like() const;
  /// Visits every tensor as (HF name, pointer to data, element count), in
  /// llama_tensor_shapes() order. Biases and lm_head are visited only when present.
  template <typename F>
  void for_each(F&& f);
  template <typename F>
  void for_each(F&& f) const;
};

/// Converts loaded fp32 weights to scalar type S.
template <typename S>
LlamaParams<S> to_params(const LlamaWeights& w);

/// Moves loaded fp32 weights into parameters without copying them (`w` is left empty).
LlamaParams<float> to_params(LlamaWeights&& w);

/// Converts parameters between scalar types (same shapes).
template <typename T, typename S>
LlamaParams<T> cast_params(const LlamaParams<S>& p) {
  LlamaParams<T> out;
  out.embed = p.embed.template cast<T>();
  for (const auto& L : p.layers) {
    typename LlamaParams<T>::Layer l;
    l.input_norm = L.input_norm.template cast<T>();
    l.post_attn_norm = L.post_attn_norm.template cast<T>();
    for (std::size_t i = 0; i < 7; ++i) {
      l.w[i] = L.w[i].template cast<T>();
      l.b[i] = L.b[i].template cast<T>();
    }
    out.layers.push_back(std::move(l));
  }
  out.final_norm = p.final_norm.template cast<T>();
  out.lm_head = p.lm_head.template cast<T>();
  return out;
}

/// Receives, during the forward pass, the input X [T, in] of each group of linears of a
/// layer: group 0 = q/k/v (normed h), 1 = o_proj (attention output), 2 = gate/up (normed
/// residual), 3 = down_proj (silu(gate) * up). Used for layer Hessians (sum of X^T X) and,
/// through the backward hook, for activation Fisher (mean of (dL/dX)^2). Every hook
/// defaults to doing nothing.
class LinearInputObserver {
 public:
  virtual ~LinearInputObserver() = default;
  /// Forward: the group's input X [T, in] (fp32; a float64 pass passes it rounded).
  virtual void on_linear_input(int64_t /*layer*/, int /*group*/, const MatRM<float>& /*x*/) {}
  /// Backward (only when a gradient is requested): dL/dX [T, in], the TOTAL gradient of the
  /// window loss with respect to the group's input (for groups 0 and 2 the sum over the
  /// linears that read it), fp32 (a float64 pass passes it rounded).
  virtual void on_linear_input_grad(int64_t /*layer*/, int /*group*/, const MatRM<float>& /*dx*/) {}
  /// Forward of a float64 pass only: may modify X [T, in] in place before the linears read
  /// it (finite-difference checks of dL/dX perturb one entry here).
  virtual void edit_linear_input(int64_t /*layer*/, int /*group*/, MatRM<double>& /*x*/) {}
};

/// Group (0-3, see LinearInputObserver) of linear index i of kLinearNames.
int linear_input_group(int i);

/// Mean next-token cross-entropy (nats) of `tokens[0..T)`, T >= 2. When `grad` is not null
/// it receives dL/dparam (overwritten, same shapes as p). Token ids must be in
/// [0, vocab): throws Error(kInput) otherwise. OpenMP inside (heads, GEMMs).
template <typename S>
S llama_loss_and_grad(const LlamaConfig& c, const LlamaParams<S>& p, const int32_t* tokens, int64_t T,
                      LlamaParams<S>* grad, LinearInputObserver* observer = nullptr);

// ---- implementation of the templates declared above ----

template <typename S>
template <typename F>
void LlamaParams<S>::for_each(F&& f) {
  f(std::string("model.embed_tokens.weight"), embed.data(), embed.size());
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Layer& L = layers[l];
    f(p + "input_layernorm.weight", L.input_norm.data(), L.input_norm.size());
    f(p + "post_attention_layernorm.weight", L.post_attn_norm.data(), L.post_attn_norm.size());
    for (int i = 0; i < 7; ++i) {
      f(p + kLinearNames[i] + ".weight", L.w[i].data(), L.w[i].size());
      if (L.b[i].size()) f(p + kLinearNames[i] + ".bias", L.b[i].data(), L.b[i].size());
    }
  }
  f(std::string("model.norm.weight"), final_norm.data(), final_norm.size());
  if (lm_head.size()) f(std::string("lm_head.weight"), lm_head.data(), lm_head.size());
}

template <typename S>
template <typename F>
void LlamaParams<S>::for_each(F&& f) const {
  const_cast<LlamaParams<S>*>(this)->for_each(
      [&](const std::string& n, S* d, Eigen::Index k) { f(n, static_cast<const S*>(d), k); });
}

}  // namespace mpq
