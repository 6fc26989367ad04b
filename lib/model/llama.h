// The Llama-family decoder graph on CPU, fp32, Eigen + OpenMP.
//
// Graph (transformers' modeling_llama / modeling_qwen2, read as the reference):
//   h = embed[tokens]                                            [T, H]
//   per layer: a = h + o_proj(Attn(RoPE(q_proj(n)), RoPE(k_proj(n)), v_proj(n))),  n = RMSNorm(h)
//              h = a + down_proj(silu(gate_proj(m)) * up_proj(m)),                   m = RMSNorm(a)
//   logits = lm_head(RMSNorm(h))   (lm_head = embed when tie_word_embeddings)
// RMSNorm(x) = x / sqrt(mean(x^2) + eps) * g. RoPE is rotate-half: for pair (i, i + d/2) of a
// head of size d, angle = pos * inv_freq[i], inv_freq[i] = theta^(-2i/d) (scaled per
// rope_scaling). Attention is causal, GQA (query head h reads KV head h / (n_heads/n_kv)),
// softmax(QK^T / sqrt(d)).
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "formats/hf_config.h"
#include "kernels/cpu/fgmp_gemv.h"
#include "kernels/cpu/lut_gemv.h"
#include "lib/model/cpu_linear.h"
#include "lib/quant/act_quant.h"
#include "lib/quant/quantizer.h"

namespace mpq {

/// Row-major fp32 matrix (the PyTorch/safetensors layout).
using MatrixRM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// A packed SqueezeLLM weight kept in its on-disk form, with the LUT-kernel view of it
/// (kernels/cpu/lut_gemv.h). `view` points into `tensor`'s part bytes, so the struct is
/// neither copyable nor movable; share it through std::shared_ptr (make_packed_linear).
struct PackedLinear {
  PackedTensor tensor;  ///< format "squeezellm" or "fgmp", parts as read_packed() validated them
  LutWeightView view;   ///< squeezellm: bits, shape and pointers into tensor.parts
  FgmpWeightView fgmp;  ///< fgmp: shape, scales and pointers into tensor.parts

  bool is_fgmp() const { return tensor.format == "fgmp"; }

  explicit PackedLinear(PackedTensor t);
  PackedLinear(const PackedLinear&) = delete;
  PackedLinear& operator=(const PackedLinear&) = delete;
};

/// A shared PackedLinear for a validated squeezellm or fgmp PackedTensor (read_packed()).
/// Throws Error(kInput) when a squeezellm lookup table's width is not 4, 8 or 16 entries, or
/// an fgmp tensor fails fgmp_check_layout() (kernels/cpu/fgmp_gemv.h: offsets vs map, NaN
/// codes, non-finite tensor scales).
std::shared_ptr<const PackedLinear> make_packed_linear(PackedTensor t);

/// One linear layer y = x W^T + b, logical shape [rows, cols] = [out, in]; b is empty or
/// [out]. Dense and decoded layers hold w, fp32 [rows, cols], and packed is null. Packed
/// squeezellm and fgmp layers (LlamaModel::load without expand_packed) hold packed and leave
/// w EMPTY: the forward pass runs lut_gemm / fgmp_gemm on the packed form. With
/// LoadOptions::cpu_kernels every layer holds `kernel` instead (w empty, packed null): its
/// stored or repacked form behind lib/model/cpu_linear.h. `format` is where the values came
/// from ("f32", "f16", "bf16", "fp8", "nvfp4", "fgmp", "squeezellm"), `stored_bytes` the bytes its
/// on-disk form takes (for bits-per-weight accounting).
struct Linear {
  MatrixRM w;
  Eigen::VectorXf b;
  std::string format = "f32";
  std::size_t stored_bytes = 0;
  int64_t rows = 0;  ///< out_features (always set, also when w is empty)
  int64_t cols = 0;  ///< in_features (always set, also when w is empty)
  std::shared_ptr<const PackedLinear> packed;  ///< set for squeezellm/fgmp kept packed; then w is empty
  std::shared_ptr<const CpuLinear> kernel;     ///< set by LoadOptions::cpu_kernels; then w is empty
  /// FGMP activation calibration (mpq-pack --act-calib; docs/formats.md): the input
  /// channels' act_fisher, fp32 [cols], >= 0, empty when the checkpoint has none, and the
  /// block-score threshold (FP8 when score > threshold; +-inf allowed, NaN when absent).
  std::vector<float> input_act_fisher;
  float input_fgmp_threshold = std::numeric_limits<float>::quiet_NaN();
  /// Static input scale of an engine export (read_input_scale(), formats/packed_checkpoint.h:
  /// ModelOpt's meaning, amax / 448 for FP8, amax / (6 * 448) for NVFP4), NaN when absent.
  /// With activation mode kFp8 / kNvfp4 it replaces the per-token scales.
  float input_scale = std::numeric_limits<float>::quiet_NaN();
  /// What the checkpoint's quantization_config declares the engine does with this linear's
  /// input (declared_activation(), formats/packed_checkpoint.h), used by ActQuantMode::kDeclared;
  /// input_dynamic: per-token scales (input_scale unused).
  ActQuantMode declared_act = ActQuantMode::kNone;
  bool input_dynamic = false;

  /// Logical weight count rows * cols (use this, not w.size(), to count parameters: w is
  /// empty for packed layers).
  int64_t numel() const { return rows * cols; }
};

/// The seven quantizable projections of a layer, in this order.
constexpr std::array<const char*, 7> kLinearNames = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

struct LlamaLayer {
  Eigen::VectorXf input_norm;      ///< [H]
  Eigen::VectorXf post_attn_norm;  ///< [H]
  std::array<Linear, 7> linear;    ///< indexed like kLinearNames
};

struct LlamaWeights {
  MatrixRM embed;                  ///< [V, H]
  std::vector<LlamaLayer> layers;
  Eigen::VectorXf final_norm;      ///< [H]
  MatrixRM lm_head;                ///< [V, H]; empty when tied to embed
  /// LoadOptions::cpu_kernels: the embedding and the LM head, [V, H] each, in their stored
  /// dtype (read in place); then embed and lm_head are empty. A tied model shares one object.
  std::shared_ptr<const CpuLinear> embed_kernel, lm_head_kernel;
};

/// Expected [out, in] shape of linear `index` (see kLinearNames) for a config.
std::array<int64_t, 2> linear_shape(const LlamaConfig& c, int index);

/// Multiply-adds of one attention layer (T^2 * head_dim * heads) below which its per-head
/// loops run on one thread (forward and backward): smaller forks cost more than they save.
constexpr int64_t kParallelAttentionWork = int64_t{1} << 22;
/// The same for decode-sized calls (<= 4 queries), whose per-head loop forks once per layer.
constexpr int64_t kParallelDecodeAttentionWork = int64_t{1} << 17;

/// Threads to run whole windows in parallel (one window per thread) for a model of
/// `params` weights: all OpenMP threads up to 64M weights, whose GEMMs are too small to
/// thread well; 1 above, where the threads go inside each window's GEMMs instead.
int window_threads(int64_t params);

/// Every tensor a dense checkpoint of this config holds, with its shape, in graph order
/// (embedding, per layer: norms, q/k/v/o (+ biases), gate/up/down; final norm; lm_head
/// unless tied). Names are the HF ones ("model.layers.0.self_attn.q_proj.weight").
std::vector<std::pair<std::string, std::vector<int64_t>>> llama_tensor_shapes(const LlamaConfig& c);

/// A LlamaForCausalLM config from its sizes (head_dim = hidden / heads, rms eps 1e-5,
/// rope theta 10000, untied head), for benchmarks and random models. The defaults are the
/// hidden-2048, 8-layer benchmark model of docs/results.md.
LlamaConfig llama_config(int64_t hidden = 2048, int64_t intermediate = 5632, int64_t layers = 8,
                         int64_t heads = 16, int64_t kv_heads = 16, int64_t vocab = 32000);

/// Random fp32 weights for a config (for tests and benchmarks): matrices N(0, std^2),
/// norms 1, deterministic in `seed`.
LlamaWeights random_llama_weights(const LlamaConfig& c, uint64_t seed, float std = 0.02f);

/// Options of LlamaModel::load.
struct LoadOptions {
  /// Decode squeezellm linears to fp32 w at load (the expanded reference) instead of keeping
  /// them packed for the LUT kernels. Needed by anything that reads Linear::w.
  bool expand_packed = false;
  /// Keep every linear, the embedding and the LM head in their stored form and run them
  /// through the CPU kernels (lib/model/cpu_linear.h): dense F32/F16/BF16 tensors read in
  /// place from the mapped files (see copy_dense), nvfp4 and squeezellm repacked for their
  /// int8 kernels, fp8, fgmp and int kept as stored, all of these in huge-page memory
  /// (lib/common/huge_pages.h). No fp32 copy of the model is made, so Linear::w,
  /// LlamaWeights::embed and lm_head stay empty (gradients, to_params() and the CUDA upload
  /// need the default form). Ignored with expand_packed.
  bool cpu_kernels = false;
  /// With cpu_kernels: copy dense linears and a dense LM head (stored dtype) into huge-page
  /// memory at load instead of reading them from the mapping, whose page cache maps mostly
  /// 4 KiB pages: single-token GEMVs read them 20-30 % faster, at the cost of RssAnon equal
  /// to their bytes (docs/results.md section 11, "Huge pages"). The embedding stays mapped
  /// unless it is also the (tied) head. Worth it for decode, not for window products. Also
  /// builds FGMP's single-token NVFP4 repack at load (make_cpu_linear decode_layout).
  bool copy_dense = false;
};

/// Keys and values of every layer for one sequence, positions [0, length()), fp32
/// [capacity, kv_heads * head_dim] per layer (after RoPE), filled by LlamaModel::forward
/// with a cache. Memory: 2 * layers * capacity * kv_heads * head_dim * 4 bytes.
class KvCache {
 public:
  /// Throws Error(kUsage) for capacity < 1.
  KvCache(const LlamaConfig& c, int64_t capacity);
  int64_t length() const { return len_; }
  int64_t capacity() const { return cap_; }
  /// Forgets every position (the memory stays allocated).
  void clear() { len_ = 0; }

 private:
  friend class LlamaModel;
  std::vector<MatrixRM> k_, v_;
  int64_t len_ = 0, cap_ = 0;
};

/// A loaded Llama-family model.
class LlamaModel {
 public:
  /// Loads `<dir>/config.json` and its safetensors (single or sharded). Quantized linears in
  /// mpq/ModelOpt layouts (nvfp4, fp8) and fgmp linears are decoded to fp32 at load time; squeezellm linears
  /// are kept packed (Linear::packed, w empty) and run through the CPU LUT kernels, unless
  /// opt.expand_packed asks for fp32 w; with opt.cpu_kernels every weight keeps its stored form
  /// (LoadOptions). Throws Error(kInput) naming the file and tensor for a missing tensor, a shape that
  /// disagrees with config.json, or an unsupported dtype/layout.
  static LlamaModel load(const std::string& dir, const LoadOptions& opt = {});
  LlamaModel(LlamaConfig config, LlamaWeights weights);

  const LlamaConfig& config() const { return config_; }
  const LlamaWeights& weights() const { return weights_; }
  LlamaWeights& mutable_weights() { return weights_; }

  /// Logits [T, vocab] for `tokens[0..T)` run as one fresh context (positions 0..T-1).
  /// Token ids must be in [0, vocab): throws Error(kInput) otherwise. With an activation
  /// mode set (set_act_quant), each linear's input is fake-quantized per token before its
  /// matmul, whatever the weight format, and the blocks are counted; safe to call from
  /// several threads at once.
  MatrixRM forward(const int32_t* tokens, int64_t T) const;

  /// The same graph for `tokens` continuing the sequence in `cache`: positions
  /// cache.length() .. cache.length() + T - 1, attention over the cached keys and the new
  /// ones; the cache grows by T. Returns logits [T, vocab], or [1, vocab] for the last token
  /// only when last_only (a prefill). forward(tokens, T) equals this on an empty cache.
  /// Throws Error(kInput) for a token id outside the vocabulary and Error(kUsage) when the
  /// cache cannot hold T more positions or belongs to another shape.
  MatrixRM forward(const int32_t* tokens, int64_t T, KvCache& cache, bool last_only = false) const;

  /// How CpuLinear layers (cpu_kernels loads) multiply: KernelMode::kFast (default) or
  /// kExact (fp32 products of the exactly decoded weights).
  void set_kernel_mode(KernelMode mode) { kernel_mode_ = mode; }
  KernelMode kernel_mode() const { return kernel_mode_; }

  /// Weights of the model: embedding, LM head (unless tied) and the seven linears of every
  /// layer (from the config; packed layers count their logical shape).
  int64_t parameter_count() const;
  /// Bytes of weights one decode step reads: every linear in its runtime form (kernel
  /// weight_bytes(), or stored_bytes / 4 bytes per fp32 weight otherwise) and the LM head.
  std::size_t decode_weight_bytes() const;

  /// Activation quantization of every linear input in forward() (lib/quant/act_quant.h):
  /// kNone (default, the fp32 path unchanged), kFp8, kNvfp4, or kFgmp, which needs every
  /// linear's input_act_fisher and input_fgmp_threshold: otherwise throws Error(kInput)
  /// "<source>: tensor '<module>.input_fgmp_threshold' missing ...". Resets the counts.
  void set_act_quant(ActQuantMode mode, const std::string& source = "model");
  ActQuantMode act_quant() const { return act_mode_; }
  /// NVFP4 / FP8 activation blocks quantized by forward() since set_act_quant.
  ActBlockCounts act_block_counts() const { return act_counts_.get(); }

 private:
  LlamaConfig config_;
  LlamaWeights weights_;
  std::vector<double> inv_freq_;  ///< [head_dim / 2]
  ActQuantMode act_mode_ = ActQuantMode::kNone;
  KernelMode kernel_mode_ = KernelMode::kFast;
  mutable ActBlockCounter act_counts_;

  MatrixRM forward_impl(const int32_t* tokens, int64_t T, KvCache* cache, bool last_only) const;
};

/// RoPE inverse frequencies [head_dim/2] for a config, rope_scaling applied (float64).
/// Source: transformers modeling_rope_utils (default, linear, llama3).
std::vector<double> rope_inv_freq(const LlamaConfig& c);

}  // namespace mpq
