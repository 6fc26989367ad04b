// Dense CPU reference products and the CPU copy-bandwidth reference of mpq-bench and
// bench/bench_lut_gemv.cpp: the baselines a packed format's speed is compared against.
//
// Work split: OpenMP threads over rows (static chunks), each thread reading its rows of W
// once per call, as a batch-1 decode GEMV does. Dense fp16 decodes W with F16C on the fly
// (8 weights per vcvtph2ps) when the CPU has AVX2 + FMA + F16C (checked at run time), else
// with the scalar codec of lib/numeric/codecs.h. Dense fp32 uses Eigen (OpenBLAS when built
// with it) on each thread's block of rows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "lib/common/huge_pages.h"

namespace mpq::bench {

/// Y[b, r] = sum_j fp16(W[r, j]) * X[b, j] for b < batch, r < rows: dense fp16 weights,
/// fp32 activations and accumulation. W: IEEE binary16 bit patterns, row-major [rows, cols];
/// X: fp32 [batch, cols] row-major; Y: fp32 [batch, rows] row-major. batch >= 1. OpenMP over
/// rows; a row is decoded once per call (into a per-thread fp32 buffer when batch > 1).
void f16_gemm(const uint16_t* w, const float* X, int64_t batch, int64_t rows, int64_t cols,
              float* Y);

/// True when f16_gemm takes the F16C path on this CPU (AVX2, FMA and F16C).
bool f16_gemm_has_f16c();

/// Y = X W^T with fp32 W [rows, cols] row-major, X fp32 [batch, cols], Y fp32 [batch, rows]
/// (Eigen row-major products, one block of rows per OpenMP thread).
void f32_gemm(const float* w, const float* X, int64_t batch, int64_t rows, int64_t cols,
              float* Y);

/// memcpy of n bytes, each OpenMP thread copying its contiguous slice [n t / T, n (t+1) / T)
/// (the split bench_lut_gemv.cpp's bandwidth references use, so pages first touched by a
/// thread are later copied by the same thread).
void parallel_memcpy(void* dst, const void* src, std::size_t n);

/// Multi-threaded host copy bandwidth, STREAM "Copy" convention (read + write counted:
/// 2 * bytes / time), GB/s (1e9 bytes/s), median of `reps` parallel_memcpy calls of `bytes`
/// bytes between two freshly allocated buffers (first touched per thread slice, then one
/// untimed warm-up copy). The same definition as cuda::device_copy_bandwidth_gbps
/// (kernels/cuda/gemv.h). Throws Error(kUsage) for bytes == 0 or reps < 1.
double cpu_copy_bandwidth_gbps(std::size_t bytes, int reps);

/// Sum of a[0 .. n) read as `streams` (>= 1) equal parts in lockstep (4 cache lines of each
/// per step) into 8 independent accumulators, so the loop is bound by the loads, not by the
/// add latency (AVX2 when the CPU has it, else scalar). One stream per core is held back by
/// the prefetchers; a GEMV reads several rows at once, so 8 streams is its reference.
float read_sum(const float* a, int64_t n, int streams);

/// Multi-threaded read bandwidth, GB/s (1e9 bytes/s): median of `reps` calls in which each
/// OpenMP thread sums its contiguous slice of a `bytes` buffer with read_sum(..., streams)
/// (first touched by the same split, one untimed warm-up). Use a buffer several times the
/// last-level cache. Throws Error(kUsage) for bytes < 4 or reps < 1.
double cpu_read_bandwidth_gbps(std::size_t bytes, int reps, int streams = 8);

/// The same measurement on a buffer allocated and first-touched once (at construction), so
/// that it can be repeated cheaply between timed runs (mpq-bench --decode measures it
/// before every run). Holds `bytes` of anonymous memory. Throws Error(kUsage) for
/// bytes < 4; measure() for reps < 1.
class ReadBandwidthProbe {
 public:
  explicit ReadBandwidthProbe(std::size_t bytes, int streams = 8);
  /// GB/s: median of `reps` timed passes after one untimed warm-up pass.
  double measure(int reps);
  std::size_t bytes() const { return static_cast<std::size_t>(n_) * 4; }

 private:
  int64_t n_;
  int streams_;
  HugeVector<float> a_;  // huge pages, as the runtime's weight buffers (lib/common/huge_pages.h)
};

}  // namespace mpq::bench
