// Device kernels of the Llama forward pass on CUDA (kernels/cuda/forward.cu), one launcher per
// step of the graph in lib/model/llama.h. Host API, compiled only when MPQ_HAVE_CUDA; kept free
// of Eigen so nvcc never sees it. Every pointer is DEVICE memory, fp32 row-major unless stated;
// every launcher enqueues on the default stream (asynchronous) and checks the launch, throwing
// Error(kInternal) on a CUDA error. Kernels are deliberately naive (one thread per element or
// one block per row / (query, head)): this path exists for perplexity equality with the CPU
// runtime, not speed. Sizes are validated by the caller (CudaLlamaModel).
#pragma once

#include <cstdint>

namespace mpq::cuda {

/// h[t, :] = embed[ids[t], :] for t < T. ids: device int32 [T], each in [0, vocab) (checked
/// on the host by the caller); embed [vocab, H]; h [T, H].
void embed_gather(const int32_t* ids, int64_t T, const float* embed, int64_t H, float* h);

/// y[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * g for t < T: the mean of squares is
/// summed in float64, 1 / sqrt in float64 rounded to fp32 (as LlamaModel's rms_norm).
/// x, y [T, H] (may not alias); g [H].
void rms_norm(const float* x, const float* g, int64_t T, int64_t H, double eps, float* y);

/// Rotate-half RoPE in place on x [T, heads * d] (d even): for every head and i < d/2,
/// (a, b) = (x[i], x[i + d/2]) -> (a cos - b sin, b cos + a sin) with cos_t / sin_t
/// [T, d/2] the angle tables of position t (transformers' apply_rotary_pos_emb).
void rope_rotate_half(float* x, const float* cos_t, const float* sin_t, int64_t T, int64_t heads, int64_t d);

/// Largest T causal_attention() takes: its scores live in shared memory, T floats per block.
int64_t max_attention_tokens();

/// Causal GQA attention. q [T, nh * d], k and v [T, nkv * d], out [T, nh * d]; query head h
/// reads KV head h / (nh / nkv). Query i attends keys j in [max(0, i - window + 1), i]
/// (window >= T: plain causal), softmax(q . k * scale) in fp32 with max subtraction, then
/// out = sum_j p_j v_j. One block per (query, head). T <= max_attention_tokens().
void causal_attention(const float* q, const float* k, const float* v, int64_t T, int64_t nh, int64_t nkv,
                      int64_t d, int64_t window, float scale, float* out);

/// gate[i] = silu(gate[i]) * up[i] = gate / (1 + exp(-gate)) * up, i < n (SwiGLU).
void silu_mul(float* gate, const float* up, int64_t n);

/// y[i] += x[i], i < n (residual add).
void add_inplace(float* y, const float* x, int64_t n);

/// y[t, r] += b[r] for t < T, r < n (linear bias). y [T, n], b [n].
void add_bias(float* y, const float* b, int64_t T, int64_t n);

}  // namespace mpq::cuda
