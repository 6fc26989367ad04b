// FGMP GEMV / GEMM kernels (kernels/cpu/fgmp_gemv.h): scalar references, a portable scalar
// fast path, an AVX2+FMA+F16C path and an AVX-512F path, the vector ones compiled with
// function target attributes and chosen at run time (as in lut_gemv.cpp), so a
// -DMPQ_NATIVE=OFF build still uses them and never executes them on an older CPU.
#include "kernels/cpu/fgmp_gemv.h"

#include <immintrin.h>  // AVX2 / FMA / F16C / AVX-512F intrinsics (under target attributes)

#include <Eigen/Dense>  // the GEMM of a decoded row block with X
#include <algorithm>    // std::fill, std::min, std::max
#include <cmath>        // std::isfinite
#include <cstring>      // std::memcpy
#include <string>
#include <vector>

#include "lib/common/error.h"    // Error, ExitCode, throw_input
#include "lib/numeric/codecs.h"  // e2m1_to_fp32, e4m3_to_fp32

namespace mpq {
namespace {

constexpr int64_t kB = kFgmpBlockSize;
// Layers below this many weights run on one thread: the OpenMP fork costs more.
constexpr int64_t kParallelMinWeights = int64_t{1} << 16;
// fgmp_gemm decodes about this many floats of W per thread at a time (256 KiB, L2).
constexpr int64_t kGemmBlockFloats = int64_t{1} << 16;

void check_view(const FgmpWeightView& w, const char* fn) {
  if (w.rows < 0 || w.cols < 0)
    throw Error(ExitCode::kUsage, std::string(fn) + ": bad FgmpWeightView shape [" +
                                      std::to_string(w.rows) + ", " + std::to_string(w.cols) +
                                      "]");
}

inline int64_t blocks_per_row(const FgmpWeightView& w) { return (w.cols + kB - 1) / kB; }
inline int64_t map_bytes_per_row(const FgmpWeightView& w) { return (blocks_per_row(w) + 7) / 8; }

// Decode tables, built once from codecs.h: E2M1 nibble -> fp32, E4M3 byte -> fp32.
struct Tables {
  alignas(64) float e2m1[16];
  alignas(64) float e4m3[256];
  Tables() {
    for (int i = 0; i < 16; ++i) e2m1[i] = e2m1_to_fp32(static_cast<uint8_t>(i));
    for (int i = 0; i < 256; ++i) e4m3[i] = e4m3_to_fp32(static_cast<uint8_t>(i));
  }
};
const Tables& tables() {
  static const Tables t;
  return t;
}

// Where row r starts in the two block streams.
struct RowStreams {
  const uint8_t* q4;  // [n4, 8] E2M1 nibbles
  const uint8_t* s4;  // [n4] E4M3 block scales
  const uint8_t* q8;  // [n8, 16] E4M3 codes
};
inline RowStreams row_streams(const FgmpWeightView& w, int64_t r) {
  const int64_t k4 = r * blocks_per_row(w) - w.fp8_row_offset[r];
  return {w.fp4 + k4 * 8, w.fp4_scale + k4, w.fp8 + int64_t{w.fp8_row_offset[r]} * kB};
}

// Splits the row's nb blocks by kind without branches: i4 gets the NVFP4 block indices, i8
// the FP8 ones, both ascending (each sized nb). Returns the FP8 count.
inline int64_t split_blocks(const uint8_t* map_row, int64_t nb, int32_t* i4, int32_t* i8) {
  int64_t n4 = 0, n8 = 0;
  for (int64_t i = 0; i < nb; ++i) {
    const int64_t bit = (map_row[i >> 3] >> (i & 7)) & 1;
    i4[n4] = static_cast<int32_t>(i);
    i8[n8] = static_cast<int32_t>(i);
    n8 += bit;
    n4 += bit ^ 1;
  }
  return n8;
}

// Per-thread scratch of a GEMV: the two block lists of a row.
struct RowLists {
  std::vector<int32_t> i4, i8;
  explicit RowLists(int64_t nb)
      : i4(static_cast<std::size_t>(nb)), i8(static_cast<std::size_t>(nb)) {}
};

// x itself when cols is a multiple of 16, else a copy zero-padded to 16 * NB floats (kept
// in `pad`), so every block reads 16 x values and the kernels have no tail.
const float* padded_x(const FgmpWeightView& w, const float* x, std::vector<float>* pad) {
  if (w.cols % kB == 0) return x;
  pad->assign(static_cast<std::size_t>(blocks_per_row(w) * kB), 0.0f);
  std::memcpy(pad->data(), x, static_cast<std::size_t>(w.cols) * sizeof(float));
  return pad->data();
}

// Shared GEMV driver: row_dot(r, lists, x) -> y[r].
template <typename RowDot>
void gemv_driver(const FgmpWeightView& w, const float* x, float* y, RowDot row_dot) {
  const int64_t R = w.rows, nb = blocks_per_row(w);
  std::vector<float> pad;
  const float* xp = padded_x(w, x, &pad);
#pragma omp parallel if (R * w.cols >= kParallelMinWeights && R > 1)
  {
    RowLists lists(nb);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) y[r] = row_dot(r, lists, xp);
  }
}

// Shared GEMM driver: decode(r, out) writes row r (16 * NB floats); blocks of rows are
// decoded into a per-thread buffer and multiplied with X by Eigen.
template <typename DecodeRow>
void gemm_driver(const FgmpWeightView& w, const float* X, int64_t T, float* Y,
                 DecodeRow decode) {
  using MatrixRM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Stride = Eigen::OuterStride<>;
  const int64_t R = w.rows, C = w.cols, ld = blocks_per_row(w) * kB;
  if (R == 0 || T <= 0) return;
  if (C == 0) {
    std::fill(Y, Y + T * R, 0.0f);
    return;
  }
  const int64_t rb = std::max<int64_t>(8, std::min<int64_t>(256, kGemmBlockFloats / ld));
  const int64_t nblk = (R + rb - 1) / rb;
  const Eigen::Map<const MatrixRM> Xm(X, T, C);
#pragma omp parallel if (R * C >= kParallelMinWeights && nblk > 1)
  {
    std::vector<float> buf(static_cast<std::size_t>(std::min(rb, R) * ld));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblk; ++b) {
      const int64_t r0 = b * rb, n = std::min(rb, R - r0);
      for (int64_t i = 0; i < n; ++i) decode(r0 + i, buf.data() + i * ld);
      const Eigen::Map<const MatrixRM, 0, Stride> Wb(buf.data(), n, C, Stride(ld));
      Eigen::Map<MatrixRM, 0, Stride> Yb(Y + r0, T, n, Stride(R));
      Yb.noalias() = Xm * Wb.transpose();
    }
  }
}

// ---------------------------------------------------------------- reference -----------

// One dot product X[t] . W[r] with W[r, j] decoded element by element from the layout:
// the row's blocks in map order, k4 / k8 counting its NVFP4 / FP8 blocks so far.
float ref_row_dot(const FgmpWeightView& w, int64_t r, const float* x) {
  const int64_t nb = blocks_per_row(w);
  const uint8_t* map_row = w.block_map + r * map_bytes_per_row(w);
  int64_t k4 = r * nb - w.fp8_row_offset[r], k8 = w.fp8_row_offset[r];
  float s = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    const bool is_fp8 = (map_row[i / 8] >> (i % 8)) & 1;
    for (int64_t e = 0; e < kB && i * kB + e < w.cols; ++e) {
      float wv;
      if (is_fp8) {
        wv = e4m3_to_fp32(w.fp8[k8 * kB + e]) * w.fp8_scale;
      } else {
        const uint8_t byte = w.fp4[k4 * 8 + e / 2];
        const uint8_t nib = (e % 2 == 0) ? (byte & 0xF) : (byte >> 4);
        wv = e2m1_to_fp32(nib) * e4m3_to_fp32(w.fp4_scale[k4]) * w.fp4_scale_2;
      }
      s += wv * x[i * kB + e];
    }
    if (is_fp8)
      ++k8;
    else
      ++k4;
  }
  return s;
}

// ---------------------------------------------------------------- scalar fast path ----

// Units: NVFP4 blocks add e2m1 * e4m3(scale) * x (exact weights before fp4_scale_2), FP8
// blocks add e4m3 * x; the two tensor scales are applied once per row.
float scalar_row_dot(const FgmpWeightView& w, int64_t r, RowLists& L, const float* x) {
  const Tables& t = tables();
  const int64_t nb = blocks_per_row(w);
  const RowStreams s = row_streams(w, r);
  const int64_t n8 = split_blocks(w.block_map + r * map_bytes_per_row(w), nb, L.i4.data(),
                                  L.i8.data());
  const int64_t n4 = nb - n8;
  float acc4 = 0.0f, acc8 = 0.0f;
  for (int64_t k = 0; k < n4; ++k) {
    const uint8_t* q = s.q4 + k * 8;
    const float* xb = x + int64_t{L.i4[k]} * kB;
    float a = 0.0f, b = 0.0f;
    for (int e = 0; e < 8; e += 2) {
      a += t.e2m1[q[e] & 0xF] * xb[2 * e] + t.e2m1[q[e] >> 4] * xb[2 * e + 1];
      b += t.e2m1[q[e + 1] & 0xF] * xb[2 * e + 2] + t.e2m1[q[e + 1] >> 4] * xb[2 * e + 3];
    }
    acc4 += t.e4m3[s.s4[k]] * (a + b);
  }
  for (int64_t k = 0; k < n8; ++k) {
    const uint8_t* q = s.q8 + k * kB;
    const float* xb = x + int64_t{L.i8[k]} * kB;
    float a = 0.0f, b = 0.0f;
    for (int e = 0; e < kB; e += 2) {
      a += t.e4m3[q[e]] * xb[e];
      b += t.e4m3[q[e + 1]] * xb[e + 1];
    }
    acc8 += a + b;
  }
  return w.fp4_scale_2 * acc4 + w.fp8_scale * acc8;
}

// Walks the row's blocks in map order (decode is once per row, so no split is needed).
void scalar_decode_row(const FgmpWeightView& w, int64_t r, float* out) {
  const Tables& t = tables();
  const int64_t nb = blocks_per_row(w);
  const uint8_t* map_row = w.block_map + r * map_bytes_per_row(w);
  RowStreams s = row_streams(w, r);
  for (int64_t i = 0; i < nb; ++i, out += kB) {
    if ((map_row[i >> 3] >> (i & 7)) & 1) {
      for (int e = 0; e < kB; ++e) out[e] = t.e4m3[s.q8[e]] * w.fp8_scale;
      s.q8 += kB;
    } else {
      const float sc = t.e4m3[*s.s4++];
      for (int e = 0; e < 8; ++e) {
        out[2 * e] = t.e2m1[s.q4[e] & 0xF] * sc * w.fp4_scale_2;
        out[2 * e + 1] = t.e2m1[s.q4[e] >> 4] * sc * w.fp4_scale_2;
      }
      s.q4 += 8;
    }
  }
}

// ---------------------------------------------------------------- AVX2 path ----------

#define MPQ_AVX2 __attribute__((target("avx2,fma,f16c")))

MPQ_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The 16 nibbles of an NVFP4 block, one per byte in element order (bytes 2k, 2k+1 hold
// element 2k, 2k+1 in their low 4 bits; the high 4 bits are garbage).
MPQ_AVX2 inline __m128i nibbles16(const uint8_t* q) {
  const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q));
  return _mm_unpacklo_epi8(v, _mm_srli_epi16(v, 4));
}

// The 16 codes of an FP8 block as fp16 bit patterns worth e4m3 / 256, exactly: the sign-
// extended byte shifted left by 7 puts the mantissa at fp16 bits 7-9, the exponent at
// 10-13 and the sign at 15 (bit 14, a copy of the sign, is masked off). E4M3 subnormals
// (exponent 0) become fp16 subnormals of the same value / 256.
MPQ_AVX2 inline __m256i e4m3_to_f16x16(const uint8_t* q) {
  const __m256i h = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
  return _mm256_and_si256(_mm256_slli_epi16(h, 7), _mm256_set1_epi16(static_cast<short>(0xBF80)));
}

// E2M1 of 8 lanes: magnitude from an 8-entry table (bits 0-2), sign from bit 3.
MPQ_AVX2 inline __m256 e2m1x8(__m256i idx, __m256 mag) {
  const __m256 sign = _mm256_castsi256_ps(
      _mm256_and_si256(_mm256_slli_epi32(idx, 28), _mm256_set1_epi32(INT32_MIN)));
  return _mm256_xor_ps(_mm256_permutevar8x32_ps(mag, idx), sign);
}

// The 16 e2m1 values of an NVFP4 block as two halves.
MPQ_AVX2 inline void e2m1x16(const uint8_t* q, __m256 mag, __m256* lo, __m256* hi) {
  const __m128i n = nibbles16(q);
  *lo = e2m1x8(_mm256_cvtepu8_epi32(n), mag);
  *hi = e2m1x8(_mm256_cvtepu8_epi32(_mm_srli_si128(n, 8)), mag);
}

MPQ_AVX2 float avx2_row_dot(const FgmpWeightView& w, int64_t r, RowLists& L, const float* x) {
  const Tables& t = tables();
  const int64_t nb = blocks_per_row(w);
  const RowStreams s = row_streams(w, r);
  const int64_t n8 = split_blocks(w.block_map + r * map_bytes_per_row(w), nb, L.i4.data(),
                                  L.i8.data());
  const int64_t n4 = nb - n8;
  const __m256 mag = _mm256_loadu_ps(t.e2m1);
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  for (int64_t k = 0; k < n4; ++k) {
    const float* xb = x + int64_t{L.i4[k]} * kB;
    __m256 lo, hi;
    e2m1x16(s.q4 + k * 8, mag, &lo, &hi);
    const __m256 sc = _mm256_broadcast_ss(&t.e4m3[s.s4[k]]);
    a0 = _mm256_fmadd_ps(_mm256_mul_ps(lo, sc), _mm256_loadu_ps(xb), a0);
    a1 = _mm256_fmadd_ps(_mm256_mul_ps(hi, sc), _mm256_loadu_ps(xb + 8), a1);
  }
  __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
  for (int64_t k = 0; k < n8; ++k) {
    const float* xb = x + int64_t{L.i8[k]} * kB;
    const __m256i h = e4m3_to_f16x16(s.q8 + k * kB);
    b0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), _mm256_loadu_ps(xb), b0);
    b1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)),
                         _mm256_loadu_ps(xb + 8), b1);
  }
  return w.fp4_scale_2 * hsum8(_mm256_add_ps(a0, a1)) +
         w.fp8_scale * (256.0f * hsum8(_mm256_add_ps(b0, b1)));
}

MPQ_AVX2 void avx2_decode_row(const FgmpWeightView& w, int64_t r, float* out) {
  const Tables& t = tables();
  const int64_t nb = blocks_per_row(w);
  const uint8_t* map_row = w.block_map + r * map_bytes_per_row(w);
  RowStreams s = row_streams(w, r);
  const __m256 mag = _mm256_loadu_ps(t.e2m1);
  const __m256 s2 = _mm256_set1_ps(w.fp4_scale_2), s8 = _mm256_set1_ps(w.fp8_scale);
  const __m256 k256 = _mm256_set1_ps(256.0f);
  for (int64_t i = 0; i < nb; ++i, out += kB) {
    __m256 lo, hi;
    if ((map_row[i >> 3] >> (i & 7)) & 1) {  // e4m3 * fp8_scale (e4m3 = fp16 value * 256)
      const __m256i h = e4m3_to_f16x16(s.q8);
      lo = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), k256), s8);
      hi = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)), k256),
                         s8);
      s.q8 += kB;
    } else {  // (e2m1 * e4m3(scale)) * fp4_scale_2, the reference's order
      e2m1x16(s.q4, mag, &lo, &hi);
      const __m256 sc = _mm256_broadcast_ss(&t.e4m3[*s.s4++]);
      lo = _mm256_mul_ps(_mm256_mul_ps(lo, sc), s2);
      hi = _mm256_mul_ps(_mm256_mul_ps(hi, sc), s2);
      s.q4 += 8;
    }
    _mm256_storeu_ps(out, lo);
    _mm256_storeu_ps(out + 8, hi);
  }
}

// ---------------------------------------------------------------- AVX-512 path -------

#define MPQ_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))

// The zero-masking forms with an all-ones mask compile to the plain instructions; the plain
// intrinsics start from _mm512_undefined_*(), on which GCC 12 raises a false
// -Wmaybe-uninitialized.
constexpr __mmask16 kAll16 = 0xFFFF;

MPQ_AVX512 inline float hsum16(__m512 v) {
  const __m512d d = _mm512_castps_pd(v);
  return hsum8(_mm256_add_ps(_mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, d, 0)),
                             _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, d, 1))));
}

// The 16 e2m1 values of an NVFP4 block: permutexvar uses the low 4 bits of each lane.
MPQ_AVX512 inline __m512 e2m1x16_512(const uint8_t* q, __m512 table) {
  return _mm512_maskz_permutexvar_ps(kAll16, _mm512_maskz_cvtepu8_epi32(kAll16, nibbles16(q)),
                                     table);
}

// The 16 values of an FP8 block, worth e4m3 / 256 (see e4m3_to_f16x16).
MPQ_AVX512 inline __m512 e4m3x16_512(const uint8_t* q) {
  return _mm512_maskz_cvtph_ps(kAll16, e4m3_to_f16x16(q));
}

MPQ_AVX512 float avx512_row_dot(const FgmpWeightView& w, int64_t r, RowLists& L,
                                const float* x) {
  const Tables& t = tables();
  const int64_t nb = blocks_per_row(w);
  const RowStreams s = row_streams(w, r);
  const int64_t n8 = split_blocks(w.block_map + r * map_bytes_per_row(w), nb, L.i4.data(),
                                  L.i8.data());
  const int64_t n4 = nb - n8;
  const __m512 table = _mm512_loadu_ps(t.e2m1);
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 2 <= n4; k += 2) {
    const __m512 w0 = _mm512_mul_ps(e2m1x16_512(s.q4 + k * 8, table),
                                    _mm512_set1_ps(t.e4m3[s.s4[k]]));
    const __m512 w1 = _mm512_mul_ps(e2m1x16_512(s.q4 + k * 8 + 8, table),
                                    _mm512_set1_ps(t.e4m3[s.s4[k + 1]]));
    a0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + int64_t{L.i4[k]} * kB), a0);
    a1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + int64_t{L.i4[k + 1]} * kB), a1);
  }
  if (k < n4)
    a0 = _mm512_fmadd_ps(
        _mm512_mul_ps(e2m1x16_512(s.q4 + k * 8, table), _mm512_set1_ps(t.e4m3[s.s4[k]])),
        _mm512_loadu_ps(x + int64_t{L.i4[k]} * kB), a0);
  __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
  for (k = 0; k + 2 <= n8; k += 2) {
    b0 = _mm512_fmadd_ps(e4m3x16_512(s.q8 + k * kB), _mm512_loadu_ps(x + int64_t{L.i8[k]} * kB),
                         b0);
    b1 = _mm512_fmadd_ps(e4m3x16_512(s.q8 + (k + 1) * kB),
                         _mm512_loadu_ps(x + int64_t{L.i8[k + 1]} * kB), b1);
  }
  if (k < n8)
    b0 = _mm512_fmadd_ps(e4m3x16_512(s.q8 + k * kB), _mm512_loadu_ps(x + int64_t{L.i8[k]} * kB),
                         b0);
  return w.fp4_scale_2 * hsum16(_mm512_add_ps(a0, a1)) +
         w.fp8_scale * (256.0f * hsum16(_mm512_add_ps(b0, b1)));
}

MPQ_AVX512 void avx512_decode_row(const FgmpWeightView& w, int64_t r, float* out) {
  const Tables& t = tables();
  const int64_t nb = blocks_per_row(w);
  const uint8_t* map_row = w.block_map + r * map_bytes_per_row(w);
  RowStreams s = row_streams(w, r);
  const __m512 table = _mm512_loadu_ps(t.e2m1);
  const __m512 s2 = _mm512_set1_ps(w.fp4_scale_2), s8 = _mm512_set1_ps(w.fp8_scale);
  const __m512 k256 = _mm512_set1_ps(256.0f);
  for (int64_t i = 0; i < nb; ++i, out += kB) {
    __m512 v;
    if ((map_row[i >> 3] >> (i & 7)) & 1) {  // e4m3 * fp8_scale
      v = _mm512_mul_ps(_mm512_mul_ps(e4m3x16_512(s.q8), k256), s8);
      s.q8 += kB;
    } else {  // (e2m1 * e4m3(scale)) * fp4_scale_2
      v = _mm512_mul_ps(_mm512_mul_ps(e2m1x16_512(s.q4, table), _mm512_set1_ps(t.e4m3[*s.s4++])),
                        s2);
      s.q4 += 8;
    }
    _mm512_storeu_ps(out, v);
  }
}

}  // namespace

// ---------------------------------------------------------------- public entry points -

bool fgmp_cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
}

bool fgmp_cpu_has_avx512() {
  static const bool has = fgmp_cpu_has_avx2() && __builtin_cpu_supports("avx512f");
  return has;
}

void fgmp_gemv_reference(const FgmpWeightView& w, const float* x, float* y) {
  check_view(w, "fgmp_gemv_reference");
  fgmp_gemm_reference(w, x, 1, y);
}

void fgmp_gemm_reference(const FgmpWeightView& w, const float* X, int64_t T, float* Y) {
  check_view(w, "fgmp_gemm_reference");
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < w.rows; ++r) Y[t * w.rows + r] = ref_row_dot(w, r, X + t * w.cols);
}

void fgmp_gemv_scalar(const FgmpWeightView& w, const float* x, float* y) {
  check_view(w, "fgmp_gemv_scalar");
  gemv_driver(w, x, y, [&w](int64_t r, RowLists& L, const float* xp) {
    return scalar_row_dot(w, r, L, xp);
  });
}

void fgmp_gemv_avx2(const FgmpWeightView& w, const float* x, float* y) {
  check_view(w, "fgmp_gemv_avx2");
  gemv_driver(w, x, y, [&w](int64_t r, RowLists& L, const float* xp) {
    return avx2_row_dot(w, r, L, xp);
  });
}

void fgmp_gemv_avx512(const FgmpWeightView& w, const float* x, float* y) {
  check_view(w, "fgmp_gemv_avx512");
  gemv_driver(w, x, y, [&w](int64_t r, RowLists& L, const float* xp) {
    return avx512_row_dot(w, r, L, xp);
  });
}

void fgmp_decode_row_scalar(const FgmpWeightView& w, int64_t r, float* out) {
  scalar_decode_row(w, r, out);
}
void fgmp_decode_row_avx2(const FgmpWeightView& w, int64_t r, float* out) {
  avx2_decode_row(w, r, out);
}
void fgmp_decode_row_avx512(const FgmpWeightView& w, int64_t r, float* out) {
  avx512_decode_row(w, r, out);
}

void fgmp_gemm_scalar(const FgmpWeightView& w, const float* X, int64_t T, float* Y) {
  check_view(w, "fgmp_gemm_scalar");
  gemm_driver(w, X, T, Y, [&w](int64_t r, float* out) { scalar_decode_row(w, r, out); });
}

void fgmp_gemm_avx2(const FgmpWeightView& w, const float* X, int64_t T, float* Y) {
  check_view(w, "fgmp_gemm_avx2");
  gemm_driver(w, X, T, Y, [&w](int64_t r, float* out) { avx2_decode_row(w, r, out); });
}

void fgmp_gemm_avx512(const FgmpWeightView& w, const float* X, int64_t T, float* Y) {
  check_view(w, "fgmp_gemm_avx512");
  gemm_driver(w, X, T, Y, [&w](int64_t r, float* out) { avx512_decode_row(w, r, out); });
}

void fgmp_gemv(const FgmpWeightView& w, const float* x, float* y) {
  if (fgmp_cpu_has_avx512())
    fgmp_gemv_avx512(w, x, y);
  else if (fgmp_cpu_has_avx2())
    fgmp_gemv_avx2(w, x, y);
  else
    fgmp_gemv_scalar(w, x, y);
}

void fgmp_gemm(const FgmpWeightView& w, const float* X, int64_t T, float* Y) {
  if (fgmp_cpu_has_avx512())
    fgmp_gemm_avx512(w, X, T, Y);
  else if (fgmp_cpu_has_avx2())
    fgmp_gemm_avx2(w, X, T, Y);
  else
    fgmp_gemm_scalar(w, X, T, Y);
}

void fgmp_check_layout(const FgmpWeightView& w, const std::string& where) {
  auto bad = [&where](const std::string& what) { throw_input(where, "FGMP " + what); };
  if (w.rows < 0 || w.cols < 0)
    bad("shape [" + std::to_string(w.rows) + ", " + std::to_string(w.cols) + "] is negative");
  const int64_t R = w.rows, nb = blocks_per_row(w), mb = map_bytes_per_row(w);
  if (!w.fp8_row_offset) bad("fp8_row_offset is missing");
  if (R * nb > 0 && !w.block_map) bad("block_map is missing");
  if (!std::isfinite(w.fp4_scale_2)) bad("fp4_scale_2 is not finite");
  if (!std::isfinite(w.fp8_scale)) bad("fp8_scale is not finite");
  if (w.fp8_row_offset[0] != 0)
    bad("fp8_row_offset[0] = " + std::to_string(w.fp8_row_offset[0]) + ", want 0");
  for (int64_t r = 0; r < R; ++r) {
    const uint8_t* map_row = w.block_map + r * mb;
    int64_t n8 = 0;
    for (int64_t i = 0; i < mb * 8; ++i) {
      const int bit = (map_row[i / 8] >> (i % 8)) & 1;
      if (bit && i >= nb)
        bad("block_map row " + std::to_string(r) + " has bit " + std::to_string(i) +
            " set past its " + std::to_string(nb) + " blocks");
      n8 += bit;
    }
    const int64_t got = int64_t{w.fp8_row_offset[r + 1]} - w.fp8_row_offset[r];
    if (got != n8)
      bad("fp8_row_offset[" + std::to_string(r + 1) + "] - fp8_row_offset[" +
          std::to_string(r) + "] = " + std::to_string(got) + ", but block_map row " +
          std::to_string(r) + " has " + std::to_string(n8) + " FP8 blocks");
  }
  const int64_t n8 = w.fp8_row_offset[R], n4 = R * nb - n8;
  if (n4 > 0 && (!w.fp4 || !w.fp4_scale)) bad("fp4 / fp4_scale is missing");
  if (n8 > 0 && !w.fp8) bad("fp8 is missing");
  for (int64_t k = 0; k < n4; ++k)
    if ((w.fp4_scale[k] & 0x7F) == 0x7F)
      bad("fp4_scale[" + std::to_string(k) + "] is the E4M3 NaN code");
  for (int64_t k = 0; k < n8 * kB; ++k)
    if ((w.fp8[k] & 0x7F) == 0x7F)
      bad("fp8 block " + std::to_string(k / kB) + " element " + std::to_string(k % kB) +
          " is the E4M3 NaN code");
}

}  // namespace mpq
