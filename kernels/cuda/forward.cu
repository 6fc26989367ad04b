// Device kernels of the Llama forward pass (contract: kernels/cuda/forward_kernels.h; graph:
// lib/model/llama.h, after transformers' modeling_llama). All fp32, one thread per element or
// one block of kThreads threads per row / (query, head); block reductions are plain
// shared-memory trees. No fast-math intrinsics: expf / sqrt are the accurate library versions.
#include "kernels/cuda/forward_kernels.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "kernels/cuda/check.h"

namespace mpq::cuda {
namespace {

constexpr int kThreads = 128;  // threads per block of every kernel here (a power of two)

// Grid of an element-wise kernel over n elements (grid-stride loops cover the rest).
unsigned elementwise_blocks(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
}

// Sum (kMax false) or max (kMax true) of `v` over the block; every thread gets the result.
// `red` is shared scratch of kThreads entries; all threads of the block must call this.
template <bool kMax, typename F>
__device__ F block_reduce(F v, F* red) {
  const int tid = static_cast<int>(threadIdx.x);
  red[tid] = v;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (tid < w) red[tid] = kMax ? (red[tid] > red[tid + w] ? red[tid] : red[tid + w]) : red[tid] + red[tid + w];
    __syncthreads();
  }
  const F r = red[0];
  __syncthreads();  // red may be reused right away
  return r;
}

__global__ void embed_gather_kernel(const int32_t* ids, const float* embed, int64_t H, float* h) {
  const int64_t t = blockIdx.x;
  const float* src = embed + static_cast<int64_t>(ids[t]) * H;
  for (int64_t c = threadIdx.x; c < H; c += kThreads) h[t * H + c] = src[c];
}

__global__ void rms_norm_kernel(const float* x, const float* g, int64_t H, double eps, float* y) {
  __shared__ double red[kThreads];
  const int64_t t = blockIdx.x;
  const float* row = x + t * H;
  double s = 0.0;
  for (int64_t c = threadIdx.x; c < H; c += kThreads) {
    const double v = row[c];
    s += v * v;
  }
  const double ms = block_reduce<false>(s, red) / static_cast<double>(H);
  const float inv = static_cast<float>(1.0 / sqrt(ms + eps));
  for (int64_t c = threadIdx.x; c < H; c += kThreads) y[t * H + c] = (row[c] * inv) * g[c];
}

__global__ void rope_kernel(float* x, const float* cos_t, const float* sin_t, int64_t heads, int64_t d) {
  const int64_t t = blockIdx.x, half = d / 2;
  float* row = x + t * heads * d;
  for (int64_t p = threadIdx.x; p < heads * half; p += kThreads) {
    const int64_t i = p % half;
    float* v = row + (p / half) * d;
    const float c = cos_t[t * half + i], s = sin_t[t * half + i];
    const float a = v[i], b = v[i + half];
    v[i] = a * c - b * s;
    v[i + half] = b * c + a * s;
  }
}

// Block (i, h): query i of head h. p (dynamic shared memory) holds the visible keys' scores,
// then their probabilities.
__global__ void attention_kernel(const float* q, const float* k, const float* v, int64_t nh, int64_t nkv,
                                 int64_t d, int64_t window, float scale, float* out) {
  extern __shared__ float p[];
  __shared__ float red[kThreads];
  const int64_t i = blockIdx.x, h = blockIdx.y, g = h / (nh / nkv);
  const int64_t lo = i - window + 1 > 0 ? i - window + 1 : 0, n = i - lo + 1;
  const float* qi = q + (i * nh + h) * d;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < n; j += kThreads) {
    const float* kj = k + ((lo + j) * nkv + g) * d;
    float s = 0.0f;
    for (int64_t c = 0; c < d; ++c) s += (qi[c] * scale) * kj[c];
    p[j] = s;
    mx = fmaxf(mx, s);
  }
  mx = block_reduce<true>(mx, red);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < n; j += kThreads) {
    p[j] = expf(p[j] - mx);
    sum += p[j];
  }
  sum = block_reduce<false>(sum, red);
  for (int64_t j = threadIdx.x; j < n; j += kThreads) p[j] /= sum;
  __syncthreads();
  for (int64_t c = threadIdx.x; c < d; c += kThreads) {
    float acc = 0.0f;
    for (int64_t j = 0; j < n; ++j) acc += p[j] * v[((lo + j) * nkv + g) * d + c];
    out[(i * nh + h) * d + c] = acc;
  }
}

__global__ void silu_mul_kernel(float* gate, const float* up, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < n; i += int64_t{gridDim.x} * kThreads) {
    const float x = gate[i];
    gate[i] = x / (1.0f + expf(-x)) * up[i];
  }
}

__global__ void add_kernel(float* y, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < n; i += int64_t{gridDim.x} * kThreads)
    y[i] += x[i];
}

__global__ void add_bias_kernel(float* y, const float* b, int64_t T, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < T * n; i += int64_t{gridDim.x} * kThreads)
    y[i] += b[i % n];
}

}  // namespace

void embed_gather(const int32_t* ids, int64_t T, const float* embed, int64_t H, float* h) {
  if (T <= 0) return;
  embed_gather_kernel<<<static_cast<unsigned>(T), kThreads>>>(ids, embed, H, h);
  MPQ_CUDA_CHECK(cudaGetLastError());
}

void rms_norm(const float* x, const float* g, int64_t T, int64_t H, double eps, float* y) {
  if (T <= 0) return;
  rms_norm_kernel<<<static_cast<unsigned>(T), kThreads>>>(x, g, H, eps, y);
  MPQ_CUDA_CHECK(cudaGetLastError());
}

void rope_rotate_half(float* x, const float* cos_t, const float* sin_t, int64_t T, int64_t heads, int64_t d) {
  if (T <= 0) return;
  rope_kernel<<<static_cast<unsigned>(T), kThreads>>>(x, cos_t, sin_t, heads, d);
  MPQ_CUDA_CHECK(cudaGetLastError());
}

int64_t max_attention_tokens() {
  int dev = 0, optin = 0;
  MPQ_CUDA_CHECK(cudaGetDevice(&dev));
  MPQ_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  cudaFuncAttributes attr{};
  MPQ_CUDA_CHECK(cudaFuncGetAttributes(&attr, attention_kernel));
  return (static_cast<int64_t>(optin) - static_cast<int64_t>(attr.sharedSizeBytes)) / static_cast<int64_t>(sizeof(float));
}

void causal_attention(const float* q, const float* k, const float* v, int64_t T, int64_t nh, int64_t nkv,
                      int64_t d, int64_t window, float scale, float* out) {
  if (T <= 0) return;
  const int bytes = static_cast<int>(T * static_cast<int64_t>(sizeof(float)));
  MPQ_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>(nh));
  attention_kernel<<<grid, kThreads, static_cast<std::size_t>(bytes)>>>(q, k, v, nh, nkv, d, window, scale, out);
  MPQ_CUDA_CHECK(cudaGetLastError());
}

void silu_mul(float* gate, const float* up, int64_t n) {
  if (n <= 0) return;
  silu_mul_kernel<<<elementwise_blocks(n), kThreads>>>(gate, up, n);
  MPQ_CUDA_CHECK(cudaGetLastError());
}

void add_inplace(float* y, const float* x, int64_t n) {
  if (n <= 0) return;
  add_kernel<<<elementwise_blocks(n), kThreads>>>(y, x, n);
  MPQ_CUDA_CHECK(cudaGetLastError());
}

void add_bias(float* y, const float* b, int64_t T, int64_t n) {
  if (T <= 0 || n <= 0) return;
  add_bias_kernel<<<elementwise_blocks(T * n), kThreads>>>(y, b, T, n);
  MPQ_CUDA_CHECK(cudaGetLastError());
}

}  // namespace mpq::cuda
