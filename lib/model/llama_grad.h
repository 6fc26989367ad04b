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

#include "formats/safetensors.h"
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

/// Where the gradient pass reads the parameters from, one layer at a time, so that a model
/// larger than memory in fp32 can be differentiated: the forward pass asks for layers
/// 0, 1, ..., the backward pass for the same layers in reverse. Implementations: in memory
/// (InMemoryParams), converted from a mapped checkpoint per layer (StreamedParams).
template <typename S>
class LlamaParamSource {
 public:
  virtual ~LlamaParamSource() = default;
  /// Layer l's norms, linear weights and biases; valid until the next layer() call.
  virtual const typename LlamaParams<S>::Layer& layer(int64_t l) = 0;
  /// Row `token` of the embedding [V, H] into out[0..H).
  virtual void embed_row(int32_t token, S* out) = 0;
  virtual const Vec<S>& final_norm() = 0;
  /// Rows per chunk of the output head (lm_head, or the embedding when tied): V for one
  /// chunk. Chunk k holds rows [k R, min(V, (k + 1) R)).
  virtual int64_t head_chunk_rows() const = 0;
  /// Chunk k of the head; valid until the next head_chunk() or layer() call.
  virtual const MatRM<S>& head_chunk(int64_t k) = 0;
};

/// Parameters held in memory (a LlamaParams<S> that outlives the source). Read-only and
/// shareable between threads.
template <typename S>
class InMemoryParams final : public LlamaParamSource<S> {
 public:
  InMemoryParams(const LlamaConfig& c, const LlamaParams<S>& p) : c_(c), p_(p) {}
  const typename LlamaParams<S>::Layer& layer(int64_t l) override { return p_.layers[static_cast<std::size_t>(l)]; }
  void embed_row(int32_t token, S* out) override;
  const Vec<S>& final_norm() override { return p_.final_norm; }
  int64_t head_chunk_rows() const override { return c_.vocab_size; }
  const MatRM<S>& head_chunk(int64_t) override { return c_.tie_word_embeddings ? p_.embed : p_.lm_head; }

 private:
  const LlamaConfig& c_;
  const LlamaParams<S>& p_;
};

/// Float parameters converted from a checkpoint's stored dtype (F32/F16/BF16, mapped by
/// TensorStore) one layer at a time: about one layer in fp32 (808 MB for Llama-2-7B) plus
/// one head chunk of 2^24 weights (64 MiB) are resident, never the whole model. Not
/// thread-safe (one per thread). The store and config must outlive it; call
/// check_llama_checkpoint() first.
class StreamedParams final : public LlamaParamSource<float> {
 public:
  StreamedParams(const LlamaConfig& c, const TensorStore& store);
  const LlamaParams<float>::Layer& layer(int64_t l) override;
  void embed_row(int32_t token, float* out) override;
  const Vec<float>& final_norm() override { return final_norm_; }
  int64_t head_chunk_rows() const override { return head_rows_; }
  const MatRM<float>& head_chunk(int64_t k) override;

 private:
  const LlamaConfig& c_;
  const TensorStore& store_;
  LlamaParams<float>::Layer layer_;
  int64_t layer_index_ = -1;
  Vec<float> final_norm_;
  MatRM<float> head_;
  int64_t head_rows_ = 0, head_index_ = -1;
};

/// One decoder layer's forward (the same operations as llama_loss_and_grad's forward):
/// x [T, H] hidden states entering layer `l` (positions 0..T-1) -> the layer's output [T, H].
/// The observer sees the inputs of the layer's four linear groups (LinearInputObserver).
/// Used by sequential calibrations that carry hidden states from layer to layer (GPTQ,
/// calibration/gptq_calibration.h). S = float or double.
template <typename S>
MatRM<S> llama_layer_forward(const LlamaConfig& c, const typename LlamaParams<S>::Layer& L, int64_t l,
                             const MatRM<S>& x, LinearInputObserver* observer);

/// Checks that `store` holds every tensor of a dense Llama checkpoint of config `c`
/// (llama_tensor_shapes) with config.json's shape and a float dtype (F32, F16, BF16), before
/// any work (first check_config_against_tensors: config sizes against the tensors present).
/// Throws Error(kInput) "<file>: tensor '<name>': ..." naming the shard or config.json.
void check_llama_checkpoint(const LlamaConfig& c, const TensorStore& store);

/// Every parameter of a checked checkpoint converted to fp32 in memory.
LlamaParams<float> load_llama_params(const LlamaConfig& c, const TensorStore& store);

/// Receives the gradients of one backward pass as they are produced, and says which are
/// needed: a layer's weight gradients can be consumed (e.g. squared into a Fisher
/// accumulator) and forgotten before the next layer's are computed. Defaults: nothing is
/// needed.
template <typename S>
class LlamaGradSink {
 public:
  virtual ~LlamaGradSink() = default;
  /// The backward pass stops after this layer (inclusive); layers below need no gradient.
  /// > num_layers - 1 (e.g. the layer count) = no backward pass at all.
  virtual int64_t lowest_layer() const = 0;
  /// Matrix to receive dL/dW of linear i (kLinearNames) of layer l ([out, in]; assigned,
  /// resized by the pass), or nullptr when that gradient is not needed (it is then not
  /// computed).
  virtual MatRM<S>* weight_grad(int64_t /*l*/, int /*i*/) { return nullptr; }
  /// Called when weight_grad(l, i)'s matrix holds the gradient.
  virtual void weight_grad_ready(int64_t /*l*/, int /*i*/) {}
  /// dL/d(bias) [out] of linear i of layer l (assigned) or nullptr.
  virtual Vec<S>* bias_grad(int64_t /*l*/, int /*i*/) { return nullptr; }
  /// dL/d(norm gain) [H], `which` 0 = input_layernorm, 1 = post_attention_layernorm
  /// (accumulated into: the sink zeroes it) or nullptr.
  virtual Vec<S>* norm_grad(int64_t /*l*/, int /*which*/) { return nullptr; }
  /// dL/d(final norm gain) [H] (accumulated into) or nullptr.
  virtual Vec<S>* final_norm_grad() { return nullptr; }
  /// dL/d(embedding) [V, H] (accumulated into; a tied head adds its gradient too) or nullptr.
  virtual MatRM<S>* embed_grad() { return nullptr; }
  /// dL/d(lm_head) [V, H] (assigned; untied models) or nullptr.
  virtual MatRM<S>* head_grad() { return nullptr; }
  /// Memory for time: when true the forward pass keeps only each layer's input [T, H] and
  /// the backward pass recomputes the layer's activations from it (one more forward of the
  /// layers at or above lowest_layer(); the same numbers). Cached activations drop from
  /// about T (6H + 2 kv_dim + 3I + heads T) floats per layer to T H.
  virtual bool keep_only_layer_inputs() const { return false; }
};

/// Mean next-token cross-entropy (nats) of `tokens[0..T)`, T >= 2. When `grad` is not null
/// it receives dL/dparam (overwritten, same shapes as p). Token ids must be in
/// [0, vocab): throws Error(kInput) otherwise. OpenMP inside (heads, GEMMs).
template <typename S>
S llama_loss_and_grad(const LlamaConfig& c, const LlamaParams<S>& p, const int32_t* tokens, int64_t T,
                      LlamaParams<S>* grad, LinearInputObserver* observer = nullptr);

/// The same loss with the parameters read layer by layer from `src` and the gradients
/// delivered to `sink` (nullptr = loss only). Only the layers at or above
/// sink->lowest_layer() are cached for the backward pass. With InMemoryParams and a sink
/// that asks for everything, the numbers are those of the overload above (it is this
/// function); a head in several chunks sums dL/d(final norm output) chunk by chunk.
template <typename S>
S llama_loss_and_grad(const LlamaConfig& c, LlamaParamSource<S>& src, const int32_t* tokens, int64_t T,
                      LlamaGradSink<S>* sink, LinearInputObserver* observer = nullptr);

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
