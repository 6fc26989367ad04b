// The whole Llama-family forward pass on a CUDA device with the weights in their packed form
// (host API; compiled only when MPQ_HAVE_CUDA, and only by g++: nvcc never sees Eigen).
//
// Graph: exactly LlamaModel::forward's (lib/model/llama.h: RMSNorm, rotate-half RoPE, causal
// GQA attention with optional sliding window, SwiGLU, tied or untied lm_head, optional q/k/v/o
// biases), fp32 activations throughout. Linear layers y = x W^T + b run:
//   - fp8, nvfp4, squeezellm, fgmp: DeviceLinear::gemv (kernels/cuda/gemv.h) on the packed
//     weights, in chunks of kMaxGemvBatch token rows (the weights decode exactly, so only the
//     fp32 summation order differs from the CPU runtime);
//   - dense (f32 / f16 / bf16 checkpoints, excluded modules, plan "source"): fp32 weights and
//     cuBLAS SGEMM in CUBLAS_PEDANTIC_MATH (true fp32, never TF32);
//   - lm_head (or the tied embedding): fp32 SGEMM as well.
// The step kernels (embedding gather, RMSNorm, RoPE, attention, SiLU * up, residual and bias
// adds) are kernels/cuda/forward_kernels.h. RoPE's cos / sin tables are computed on the host in
// float64 from rope_inv_freq() and rounded to fp32, as the CPU runtime does, then uploaded.
// Activation quantization (LlamaModel::set_act_quant) is not supported here.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "lib/model/llama.h"

namespace mpq::cuda {

/// A Llama-family model resident on CUDA device 0 (the current device). Move-only. forward()
/// may be called from several host threads; calls are serialized.
class CudaLlamaModel {
 public:
  /// LlamaModel::load(dir) on the host (all its validation and errors, Error(kInput) naming
  /// the file and tensor), then upload(model, dir).
  static CudaLlamaModel load(const std::string& dir);

  /// Uploads `model`, which must have been loaded from `dir` by LlamaModel::load (default
  /// options or expand_packed): embeddings, norms, biases, dense linears and lm_head as fp32;
  /// squeezellm / fgmp linears from Linear::packed; fp8 / nvfp4 linears re-read packed from
  /// `dir` (read_packed(); LlamaModel::load decodes them to fp32). Throws Error(kInput) naming
  /// the module for a packed tensor DeviceLinear::upload rejects, or a dimension beyond
  /// cuBLAS's int range; Error(kInternal) on a CUDA / cuBLAS failure (e.g. out of memory).
  static CudaLlamaModel upload(const LlamaModel& model, const std::string& dir);

  CudaLlamaModel(CudaLlamaModel&&) noexcept;
  CudaLlamaModel& operator=(CudaLlamaModel&&) noexcept;
  ~CudaLlamaModel();

  const LlamaConfig& config() const;

  /// Logits [T, vocab] (host, fp32) for tokens[0..T) run as one fresh context (positions
  /// 0..T-1), like LlamaModel::forward. Throws Error(kInput) for a token id outside
  /// [0, vocab) (same message as the CPU runtime), Error(kUsage) for T < 1 or T above
  /// max_tokens(), Error(kInternal) on a CUDA / cuBLAS failure. Synchronous.
  MatrixRM forward(const int32_t* tokens, int64_t T) const;

  /// Largest T forward() takes (the attention kernel keeps T fp32 scores in shared memory:
  /// about 58000 on an H100).
  int64_t max_tokens() const;

  struct Impl;

 private:
  explicit CudaLlamaModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mpq::cuda
