// SqueezeLLM LUT GEMV / GEMM kernels (kernels/cpu/lut_gemv.h): scalar references, a
// portable scalar fast path, and an AVX2+FMA+F16C path compiled with a function target
// attribute and chosen at run time, so a -DMPQ_NATIVE=OFF build still uses it on an AVX2
// machine and never executes it on an older one.
#include "kernels/cpu/lut_gemv.h"

#include <immintrin.h>  // AVX2 / FMA / F16C intrinsics (used only under target attributes)

#include <cstring>  // std::memcpy: unaligned byte loads
#include <string>
#include <vector>

#include "lib/common/error.h"    // Error, ExitCode
#include "lib/numeric/codecs.h"  // fp16_to_fp32

namespace mpq {
namespace {

// Layers below this many weights run on one thread: the OpenMP fork costs more.
constexpr int64_t kParallelMinWeights = int64_t{1} << 16;

void check_view(const LutWeightView& w, const char* fn) {
  if (w.bits < 2 || w.bits > 4 || w.rows < 0 || w.cols < 0)
    throw Error(ExitCode::kUsage, std::string(fn) + ": bad LutWeightView (bits " +
                                      std::to_string(w.bits) + ", shape [" +
                                      std::to_string(w.rows) + ", " + std::to_string(w.cols) +
                                      "])");
}

inline int64_t row_bytes(const LutWeightView& w) { return (w.cols + 7) / 8 * w.bits; }

inline int64_t col_at(const LutWeightView& w, int64_t e) {
  return w.col_is_i16 ? static_cast<const int16_t*>(w.col)[e]
                      : static_cast<const int32_t*>(w.col)[e];
}

// Sum of the row's CSR entries val * x[col] (0 without a sparse part).
inline float sparse_dot(const LutWeightView& w, int64_t r, const float* x) {
  if (!w.rowptr) return 0.0f;
  float s = 0.0f;
  for (int64_t e = w.rowptr[r]; e < w.rowptr[r + 1]; ++e)
    s += fp16_to_fp32(w.val_f16[e]) * x[col_at(w, e)];
  return s;
}

// ---------------------------------------------------------------- reference -----------

// Index j of a packed row, bit by bit from the documented order (bit t of the stream is
// bit t mod 8 of byte t / 8).
inline int ref_index(const uint8_t* row, int64_t j, int bits) {
  int idx = 0;
  for (int t = 0; t < bits; ++t) {
    const int64_t bit = j * bits + t;
    idx |= ((row[bit / 8] >> (bit % 8)) & 1) << t;
  }
  return idx;
}

void ref_row_gemv(const LutWeightView& w, int64_t r, const float* x, float* y) {
  const uint8_t* row = w.qweight + r * row_bytes(w);
  const uint16_t* lut = w.lut_f16 + (r << w.bits);
  float s = 0.0f;
  for (int64_t j = 0; j < w.cols; ++j) s += fp16_to_fp32(lut[ref_index(row, j, w.bits)]) * x[j];
  *y = s + sparse_dot(w, r, x);
}

// ---------------------------------------------------------------- scalar fast path ----

// 8 indices of group g as one little-endian word (b bytes, b <= 4).
// The B bytes holding 8 B-bit indices, as a little-endian integer. B is a template
// parameter so every load is a fixed-size one (a runtime-sized memcpy became a library call
// per group and made the 3-bit kernel ~6x slower than the 4-bit one).
template <int B>
inline uint32_t load_group(const uint8_t* p) {
  if constexpr (B == 4) {
    uint32_t u;
    std::memcpy(&u, p, 4);  // little-endian host
    return u;
  } else if constexpr (B == 3) {
    uint16_t lo;
    std::memcpy(&lo, p, 2);
    return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(p[2]) << 16);
  } else {
    uint16_t u;
    std::memcpy(&u, p, 2);
    return u;
  }
}

template <int B>
float scalar_row_dense(const uint8_t* row, const float* lut, const float* x, int64_t cols) {
  constexpr uint32_t kMask = (1u << B) - 1;
  const int64_t groups = cols / 8;
  float s0 = 0.0f, s1 = 0.0f;
  for (int64_t g = 0; g < groups; ++g) {
    const uint32_t u = load_group<B>(row + g * B);
    const float* xg = x + g * 8;
    s0 += lut[u & kMask] * xg[0] + lut[(u >> B) & kMask] * xg[1] +
          lut[(u >> 2 * B) & kMask] * xg[2] + lut[(u >> 3 * B) & kMask] * xg[3];
    s1 += lut[(u >> 4 * B) & kMask] * xg[4] + lut[(u >> 5 * B) & kMask] * xg[5] +
          lut[(u >> 6 * B) & kMask] * xg[6] + lut[(u >> 7 * B) & kMask] * xg[7];
  }
  if (groups * 8 < cols) {  // partial last group: its padding indices are never read
    const uint32_t u = load_group<B>(row + groups * B);
    for (int64_t j = groups * 8; j < cols; ++j)
      s0 += lut[(u >> ((j - groups * 8) * B)) & kMask] * x[j];
  }
  return s0 + s1;
}

template <int B>
void scalar_row_decode(const uint8_t* row, const float* lut, int64_t cols, float* out) {
  constexpr uint32_t kMask = (1u << B) - 1;
  for (int64_t g = 0; g * 8 < cols; ++g) {
    const uint32_t u = load_group<B>(row + g * B);
    for (int i = 0; i < 8; ++i) out[g * 8 + i] = lut[(u >> (i * B)) & kMask];
  }
}

float scalar_dense(int bits, const uint8_t* row, const float* lut, const float* x, int64_t cols) {
  switch (bits) {
    case 2: return scalar_row_dense<2>(row, lut, x, cols);
    case 3: return scalar_row_dense<3>(row, lut, x, cols);
    default: return scalar_row_dense<4>(row, lut, x, cols);
  }
}

void scalar_decode(int bits, const uint8_t* row, const float* lut, int64_t cols, float* out) {
  switch (bits) {
    case 2: scalar_row_decode<2>(row, lut, cols, out); break;
    case 3: scalar_row_decode<3>(row, lut, cols, out); break;
    default: scalar_row_decode<4>(row, lut, cols, out); break;
  }
}

inline void lut_to_fp32(const uint16_t* h, int k, float* out) {
  for (int i = 0; i < k; ++i) out[i] = fp16_to_fp32(h[i]);
}

// ---------------------------------------------------------------- AVX2 path ----------

#define MPQ_AVX2 __attribute__((target("avx2,fma,f16c")))

MPQ_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The row's table in two registers: lo = entries 0..7 (b = 2: entries 0..3 twice), hi =
// entries 8..15 (b = 4 only).
struct LutRegs {
  __m256 lo, hi;
};

template <int B>
MPQ_AVX2 inline LutRegs load_lut(const uint16_t* h) {
  LutRegs L;
  if constexpr (B == 2) {
    uint64_t q;
    std::memcpy(&q, h, 8);
    const __m128 four = _mm_cvtph_ps(_mm_set1_epi64x(static_cast<long long>(q)));
    L.lo = _mm256_set_m128(four, four);
    L.hi = L.lo;
  } else {
    L.lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h)));
    L.hi = B == 4 ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + 8)))
                  : L.lo;
  }
  return L;
}

// The 8 weights of the group whose packed bits are u.
template <int B>
MPQ_AVX2 inline __m256 group_weights(uint32_t u, const LutRegs& L, __m256i shifts,
                                     __m256i mask) {
  const __m256i idx =
      _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(u)), shifts), mask);
  const __m256 lo = _mm256_permutevar8x32_ps(L.lo, idx);  // uses idx bits 0..2
  if constexpr (B == 4) {
    const __m256 hi = _mm256_permutevar8x32_ps(L.hi, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
  } else {
    return lo;
  }
}

template <int B>
MPQ_AVX2 inline __m256i lane_shifts() {
  return _mm256_setr_epi32(0, B, 2 * B, 3 * B, 4 * B, 5 * B, 6 * B, 7 * B);
}

template <int B>
MPQ_AVX2 float avx2_row_dense(const uint8_t* row, const uint16_t* lut_h, const float* x,
                              int64_t cols) {
  const LutRegs L = load_lut<B>(lut_h);
  const __m256i shifts = lane_shifts<B>();
  const __m256i mask = _mm256_set1_epi32((1 << B) - 1);
  const int64_t groups = cols / 8;
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
         a3 = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 4 <= groups; g += 4) {
    const uint8_t* p = row + g * B;
    const float* xg = x + g * 8;
    a0 = _mm256_fmadd_ps(group_weights<B>(load_group<B>(p), L, shifts, mask),
                         _mm256_loadu_ps(xg), a0);
    a1 = _mm256_fmadd_ps(group_weights<B>(load_group<B>(p + B), L, shifts, mask),
                         _mm256_loadu_ps(xg + 8), a1);
    a2 = _mm256_fmadd_ps(group_weights<B>(load_group<B>(p + 2 * B), L, shifts, mask),
                         _mm256_loadu_ps(xg + 16), a2);
    a3 = _mm256_fmadd_ps(group_weights<B>(load_group<B>(p + 3 * B), L, shifts, mask),
                         _mm256_loadu_ps(xg + 24), a3);
  }
  for (; g < groups; ++g)
    a0 = _mm256_fmadd_ps(group_weights<B>(load_group<B>(row + g * B), L, shifts, mask),
                         _mm256_loadu_ps(x + g * 8), a0);
  float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  if (groups * 8 < cols) {  // partial last group, scalar
    alignas(32) float w8[8];
    _mm256_store_ps(w8, group_weights<B>(load_group<B>(row + groups * B), L, shifts, mask));
    for (int64_t j = groups * 8; j < cols; ++j) s += w8[j - groups * 8] * x[j];
  }
  return s;
}

// Decodes the row into out[0 .. 8*ceil(cols/8)) (padding lanes get LUT[0]).
template <int B>
MPQ_AVX2 void avx2_row_decode(const uint8_t* row, const uint16_t* lut_h, int64_t cols,
                              float* out) {
  const LutRegs L = load_lut<B>(lut_h);
  const __m256i shifts = lane_shifts<B>();
  const __m256i mask = _mm256_set1_epi32((1 << B) - 1);
  for (int64_t g = 0; g * 8 < cols; ++g)
    _mm256_storeu_ps(out + g * 8, group_weights<B>(load_group<B>(row + g * B), L, shifts, mask));
}

MPQ_AVX2 float avx2_dot(const float* a, const float* b, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
         a3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), a3);
  }
  for (; i + 8 <= n; i += 8)
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
  float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

float avx2_dense(int bits, const uint8_t* row, const uint16_t* lut, const float* x,
                 int64_t cols) {
  switch (bits) {
    case 2: return avx2_row_dense<2>(row, lut, x, cols);
    case 3: return avx2_row_dense<3>(row, lut, x, cols);
    default: return avx2_row_dense<4>(row, lut, x, cols);
  }
}

void avx2_decode(int bits, const uint8_t* row, const uint16_t* lut, int64_t cols, float* out) {
  switch (bits) {
    case 2: avx2_row_decode<2>(row, lut, cols, out); break;
    case 3: avx2_row_decode<3>(row, lut, cols, out); break;
    default: avx2_row_decode<4>(row, lut, cols, out); break;
  }
}

// Adds the row's CSR residuals into a decoded row.
inline void add_sparse_row(const LutWeightView& w, int64_t r, float* wrow) {
  if (!w.rowptr) return;
  for (int64_t e = w.rowptr[r]; e < w.rowptr[r + 1]; ++e)
    wrow[col_at(w, e)] += fp16_to_fp32(w.val_f16[e]);
}

// Shared driver for both window paths: decode row r with `decode`, then T dot products.
template <typename Decode, typename Dot>
void gemm_driver(const LutWeightView& w, const float* X, int64_t T, float* Y, Decode decode,
                 Dot dot) {
  const int64_t R = w.rows, C = w.cols, RB = row_bytes(w);
  const bool par = R * C >= kParallelMinWeights && R > 1;
#pragma omp parallel if (par)
  {
    std::vector<float> wrow(static_cast<std::size_t>((C + 7) / 8 * 8));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      decode(w.qweight + r * RB, w.lut_f16 + (r << w.bits), wrow.data());
      add_sparse_row(w, r, wrow.data());
      for (int64_t t = 0; t < T; ++t) Y[t * R + r] = dot(wrow.data(), X + t * C, C);
    }
  }
}

float scalar_dot(const float* a, const float* b, int64_t n) {
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

}  // namespace

// ---------------------------------------------------------------- public entry points -

bool lut_cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
}

void lut_gemv_reference(const LutWeightView& w, const float* x, float* y) {
  check_view(w, "lut_gemv_reference");
  for (int64_t r = 0; r < w.rows; ++r) ref_row_gemv(w, r, x, y + r);
}

void lut_gemm_reference(const LutWeightView& w, const float* X, int64_t T, float* Y) {
  check_view(w, "lut_gemm_reference");
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < w.rows; ++r) ref_row_gemv(w, r, X + t * w.cols, Y + t * w.rows + r);
}

void lut_gemv_scalar(const LutWeightView& w, const float* x, float* y) {
  check_view(w, "lut_gemv_scalar");
  const int64_t R = w.rows, C = w.cols, RB = row_bytes(w);
  const int k = 1 << w.bits;
#pragma omp parallel for schedule(static) if (R * C >= kParallelMinWeights && R > 1)
  for (int64_t r = 0; r < R; ++r) {
    float lut[16];
    lut_to_fp32(w.lut_f16 + r * k, k, lut);
    y[r] = scalar_dense(w.bits, w.qweight + r * RB, lut, x, C) + sparse_dot(w, r, x);
  }
}

void lut_gemv_avx2(const LutWeightView& w, const float* x, float* y) {
  check_view(w, "lut_gemv_avx2");
  const int64_t R = w.rows, C = w.cols, RB = row_bytes(w);
#pragma omp parallel for schedule(static) if (R * C >= kParallelMinWeights && R > 1)
  for (int64_t r = 0; r < R; ++r)
    y[r] = avx2_dense(w.bits, w.qweight + r * RB, w.lut_f16 + (r << w.bits), x, C) +
           sparse_dot(w, r, x);
}

void lut_gemm_scalar(const LutWeightView& w, const float* X, int64_t T, float* Y) {
  check_view(w, "lut_gemm_scalar");
  const int bits = w.bits, k = 1 << bits;
  const int64_t C = w.cols;
  gemm_driver(
      w, X, T, Y,
      [bits, k, C](const uint8_t* row, const uint16_t* lut_h, float* out) {
        float lut[16];
        lut_to_fp32(lut_h, k, lut);
        scalar_decode(bits, row, lut, C, out);
      },
      scalar_dot);
}

void lut_gemm_avx2(const LutWeightView& w, const float* X, int64_t T, float* Y) {
  check_view(w, "lut_gemm_avx2");
  const int bits = w.bits;
  const int64_t C = w.cols;
  gemm_driver(
      w, X, T, Y,
      [bits, C](const uint8_t* row, const uint16_t* lut_h, float* out) {
        avx2_decode(bits, row, lut_h, C, out);
      },
      avx2_dot);
}

void lut_gemv(const LutWeightView& w, const float* x, float* y) {
  if (lut_cpu_has_avx2())
    lut_gemv_avx2(w, x, y);
  else
    lut_gemv_scalar(w, x, y);
}

void lut_gemm(const LutWeightView& w, const float* X, int64_t T, float* Y) {
  if (lut_cpu_has_avx2())
    lut_gemm_avx2(w, X, T, Y);
  else
    lut_gemm_scalar(w, X, T, Y);
}

}  // namespace mpq
