#include "lib/bench/dense_cpu.h"

#include <immintrin.h>  // F16C / FMA intrinsics, used under a target attribute only
#include <omp.h>

#include <Eigen/Dense>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <vector>

#include "lib/common/cpu_features.h"
#include "lib/common/error.h"
#include "lib/numeric/codecs.h"

namespace mpq::bench {
namespace {

using MatRM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// [j0, j1) of n for the calling OpenMP thread.
void thread_slice(int64_t n, int64_t* j0, int64_t* j1) {
  const int nt = omp_get_num_threads(), t = omp_get_thread_num();
  *j0 = n * t / nt;
  *j1 = n * (t + 1) / nt;
}

float dot_scalar(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
  for (int64_t j = 0; j < n; ++j) s += a[j] * b[j];
  return s;
}

float f16_dot_scalar(const uint16_t* w, const float* x, int64_t n) {
  float s = 0.0f;
  for (int64_t j = 0; j < n; ++j) s += fp16_to_fp32(w[j]) * x[j];
  return s;
}

__attribute__((target("avx2,fma,f16c"))) float hsum8(__m256 v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
}

// sum_j fp16(w[j]) * x[j], 16 weights per step (two accumulators).
__attribute__((target("avx2,fma,f16c"))) float f16_dot_f16c(const uint16_t* w, const float* x,
                                                           int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + j)));
    const __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + j + 8)));
    a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + j), a0);
    a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + j + 8), a1);
  }
  return hsum8(_mm256_add_ps(a0, a1)) + f16_dot_scalar(w + j, x + j, n - j);
}

// out[j] = fp16(w[j]) for j < n.
__attribute__((target("avx2,fma,f16c"))) void f16_decode_f16c(const uint16_t* w, int64_t n,
                                                             float* out) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(out + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + j))));
  for (; j < n; ++j) out[j] = fp16_to_fp32(w[j]);
}

__attribute__((target("avx2,fma,f16c"))) float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8), a1);
  }
  return hsum8(_mm256_add_ps(a0, a1)) + dot_scalar(a + j, b + j, n - j);
}

}  // namespace

bool f16_gemm_has_f16c() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          cpu_has_f16c();
  return has;
}

void f16_gemm(const uint16_t* w, const float* X, int64_t batch, int64_t rows, int64_t cols,
              float* Y) {
  const bool f16c = f16_gemm_has_f16c();
  if (batch == 1) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      Y[r] = f16c ? f16_dot_f16c(w + r * cols, X, cols) : f16_dot_scalar(w + r * cols, X, cols);
    return;
  }
#pragma omp parallel
  {
    std::vector<float> row(static_cast<std::size_t>(cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const uint16_t* wr = w + r * cols;
      if (f16c) {
        f16_decode_f16c(wr, cols, row.data());
        for (int64_t b = 0; b < batch; ++b) Y[b * rows + r] = dot_avx2(row.data(), X + b * cols, cols);
      } else {
        for (int64_t j = 0; j < cols; ++j) row[static_cast<std::size_t>(j)] = fp16_to_fp32(wr[j]);
        for (int64_t b = 0; b < batch; ++b) Y[b * rows + r] = dot_scalar(row.data(), X + b * cols, cols);
      }
    }
  }
}

void f32_gemm(const float* w, const float* X, int64_t batch, int64_t rows, int64_t cols,
              float* Y) {
  const Eigen::Map<const MatRM> W(w, rows, cols);
  const Eigen::Map<const MatRM> Xm(X, batch, cols);
  Eigen::Map<MatRM> Ym(Y, batch, rows);
#pragma omp parallel
  {
    int64_t r0, r1;
    thread_slice(rows, &r0, &r1);
    if (r1 > r0) {
      if (batch == 1) {
        Eigen::Map<Eigen::VectorXf> y(Y + r0, r1 - r0);
        y.noalias() = W.middleRows(r0, r1 - r0) * Eigen::Map<const Eigen::VectorXf>(X, cols);
      } else {
        Ym.middleCols(r0, r1 - r0).noalias() = Xm * W.middleRows(r0, r1 - r0).transpose();
      }
    }
  }
}

void parallel_memcpy(void* dst, const void* src, std::size_t n) {
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
#pragma omp parallel
  {
    int64_t j0, j1;
    thread_slice(static_cast<int64_t>(n), &j0, &j1);
    std::memcpy(d + j0, s + j0, static_cast<std::size_t>(j1 - j0));
  }
}

double cpu_copy_bandwidth_gbps(std::size_t bytes, int reps) {
  if (bytes == 0 || reps < 1) throw Error(ExitCode::kUsage, "copy bandwidth: needs bytes > 0 and reps >= 1");
  std::unique_ptr<char[]> src(new char[bytes]), dst(new char[bytes]);
#pragma omp parallel
  {
    int64_t j0, j1;
    thread_slice(static_cast<int64_t>(bytes), &j0, &j1);
    std::memset(src.get() + j0, 1, static_cast<std::size_t>(j1 - j0));
    std::memset(dst.get() + j0, 0, static_cast<std::size_t>(j1 - j0));
  }
  parallel_memcpy(dst.get(), src.get(), bytes);  // warm-up
  std::vector<double> secs;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    parallel_memcpy(dst.get(), src.get(), bytes);
    secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(secs.begin(), secs.end());
  const std::size_t m = secs.size() / 2;
  const double med = secs.size() % 2 ? secs[m] : 0.5 * (secs[m - 1] + secs[m]);
  // Keep the copy observable so it is not optimized away.
  volatile char sink = dst[bytes / 2];
  (void)sink;
  return 2.0 * static_cast<double>(bytes) / med / 1e9;
}

namespace {

__attribute__((target("avx2"), noinline)) float read_sum_avx2(const float* a, int64_t n, int S) {
  __m256 s[8];
  for (__m256& v : s) v = _mm256_setzero_ps();
  const int64_t part = n / S / 64 * 64;
  for (int64_t j = 0; j < part; j += 64)
    for (int st = 0; st < S; ++st) {
      const float* p = a + st * part + j;
      for (int u = 0; u < 8; ++u) s[u] = _mm256_add_ps(s[u], _mm256_loadu_ps(p + 8 * u));
    }
  for (int u = 1; u < 8; ++u) s[0] = _mm256_add_ps(s[0], s[u]);
  alignas(32) float t[8];
  _mm256_store_ps(t, s[0]);
  float r = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
  for (int64_t j = part * S; j < n; ++j) r += a[j];
  return r;
}

float read_sum_scalar(const float* a, int64_t n) {
  float s[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int u = 0; u < 8; ++u) s[u] += a[j + u];
  float r = 0.0f;
  for (float v : s) r += v;
  for (; j < n; ++j) r += a[j];
  return r;
}

}  // namespace

float read_sum(const float* a, int64_t n, int streams) {
  static const bool avx2 = __builtin_cpu_supports("avx2");
  return avx2 ? read_sum_avx2(a, n, std::max(1, streams)) : read_sum_scalar(a, n);
}

double cpu_read_bandwidth_gbps(std::size_t bytes, int reps, int streams) {
  if (bytes < 4 || reps < 1) throw Error(ExitCode::kUsage, "read bandwidth: needs bytes >= 4 and reps >= 1");
  return ReadBandwidthProbe(bytes, streams).measure(reps);
}

ReadBandwidthProbe::ReadBandwidthProbe(std::size_t bytes, int streams)
    : n_(static_cast<int64_t>(bytes / 4)), streams_(streams) {
  if (bytes < 4) throw Error(ExitCode::kUsage, "read bandwidth: needs bytes >= 4");
  a_.resize(static_cast<std::size_t>(n_));
  float* a = a_.data();
  const int64_t n = n_;
#pragma omp parallel
  {
    int64_t j0, j1;
    thread_slice(n, &j0, &j1);
    for (int64_t j = j0; j < j1; ++j) a[j] = static_cast<float>(j & 1023) * 1e-3f;
  }
}

double ReadBandwidthProbe::measure(int reps) {
  if (reps < 1) throw Error(ExitCode::kUsage, "read bandwidth: needs reps >= 1");
  std::vector<double> secs;
  volatile float sink = 0.0f;
  const float* a = a_.data();
  const int64_t n = n_;
  const int streams = streams_;
  for (int i = 0; i <= reps; ++i) {  // i = 0: warm-up
    const auto t0 = std::chrono::steady_clock::now();
    float s = 0.0f;
#pragma omp parallel reduction(+ : s)
    {
      int64_t j0, j1;
      thread_slice(n, &j0, &j1);
      s += read_sum(a + j0, j1 - j0, streams);
    }
    if (i > 0) secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    sink = sink + s;
  }
  std::sort(secs.begin(), secs.end());
  const std::size_t m = secs.size() / 2;
  const double med = secs.size() % 2 ? secs[m] : 0.5 * (secs[m - 1] + secs[m]);
  return static_cast<double>(n) * 4.0 / med / 1e9;
}

}  // namespace mpq::bench
