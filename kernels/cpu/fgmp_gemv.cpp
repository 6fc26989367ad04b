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
#include <type_traits>  // std::integral_constant
#include <vector>

#include "kernels/cpu/cpu_features.h"  // cpu_isa_cap (MPQ_CPU_ISA)
#include "kernels/cpu/simd.h"          // prefetch_l2
#include "lib/common/cpu_features.h"  // cpu_has_f16c
#include "lib/common/error.h"    // Error, ExitCode, throw_input
#include "lib/numeric/codecs.h"  // e2m1_to_fp32, e4m3_to_fp32

namespace mpq {
namespace {

constexpr int64_t kB = kFgmpBlockSize;
// Layers below this many weights run on one thread: the OpenMP fork costs more.
constexpr int64_t kParallelMinWeights = int64_t{1} << 16;
// fgmp_gemm decodes about this many floats of W per thread at a time (256 KiB, L2) for
// windows of fewer than kLargeWindow rows, 256 rows at a time for larger ones.
constexpr int64_t kGemmBlockFloats = int64_t{1} << 16;
constexpr int64_t kLargeWindow = 64;

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

// Map bytes [byte0, byte0 + 8) of a row as a little-endian word (bytes past mb read as 0).
inline uint64_t map_word(const uint8_t* map_row, int64_t byte0, int64_t mb) {
  uint64_t u = 0;
  if (mb - byte0 >= 8) {
    std::memcpy(&u, map_row + byte0, 8);
  } else {
    for (int64_t b = byte0; b < mb; ++b) u |= uint64_t{map_row[b]} << (8 * (b - byte0));
  }
  return u;
}

using Even = std::integral_constant<int, 0>;
using Odd = std::integral_constant<int, 1>;

// Calls f(i0 + k, parity) for each set bit k of m, ascending; parity (Even / Odd, the bit's
// rank) lets a caller alternate two accumulators.
template <typename F>
__attribute__((always_inline)) inline void for_set_bits(uint64_t m, int64_t i0, F&& f) {
  while (m) {
    f(i0 + __builtin_ctzll(m), Even{});
    if (!(m &= m - 1)) break;
    f(i0 + __builtin_ctzll(m), Odd{});
    m &= m - 1;
  }
}

// Calls words(i0, bits, valid) for row r's map 64 blocks at a time: bits = the FP8 flags of
// blocks i0 .., valid = the blocks that exist.
template <typename Words>
__attribute__((always_inline)) inline void for_map_words(const uint8_t* map_row, int64_t nb, int64_t mb,
                                                         Words&& words) {
  for (int64_t i0 = 0; i0 < nb; i0 += 64) {
    const int64_t n = std::min<int64_t>(64, nb - i0);
    words(i0, map_word(map_row, i0 / 8, mb), n == 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1);
  }
}

// Walks row r's blocks 64 map bits at a time: first f4(i, parity) for each NVFP4 block i,
// then f8(i, parity) for each FP8 block, ascending, with bit scans instead of a branch per
// block (the block kinds are random, so that branch would mispredict about every third
// block). So the callers read each stream strictly in order. The callers are lambdas
// carrying their path's target attribute; the walk is inlined into them.
template <typename F4, typename F8>
__attribute__((always_inline)) inline void walk_row(const uint8_t* map_row, int64_t nb,
                                                    int64_t mb, F4&& f4, F8&& f8) {
  // always_inline down the chain: f4 / f8 carry a target attribute and inline only into
  // code that ends up inside their caller.
  for_map_words(map_row, nb, mb, [&](int64_t i0, uint64_t bits, uint64_t valid) __attribute__((always_inline)) {
    for_set_bits(~bits & valid, i0, f4);
    for_set_bits(bits & valid, i0, f8);
  });
}

// walk_row's FP8 half alone: f8(i, parity) for each FP8 block i of the row, ascending.
template <typename F8>
__attribute__((always_inline)) inline void walk_fp8_blocks(const uint8_t* map_row, int64_t nb, int64_t mb,
                                                           F8&& f8) {
  for_map_words(map_row, nb, mb,
                [&](int64_t i0, uint64_t bits, uint64_t valid)
                    __attribute__((always_inline)) { for_set_bits(bits & valid, i0, f8); });
}

// x itself when cols is a multiple of 16, else a copy zero-padded to 16 * NB floats (kept
// in `pad`), so every block reads 16 x values and the kernels have no tail.
const float* padded_x(const FgmpWeightView& w, const float* x, std::vector<float>* pad) {
  if (w.cols % kB == 0) return x;
  pad->assign(static_cast<std::size_t>(blocks_per_row(w) * kB), 0.0f);
  std::memcpy(pad->data(), x, static_cast<std::size_t>(w.cols) * sizeof(float));
  return pad->data();
}

// Shared GEMV driver: y[r] = row_dot(w, r, padded x).
template <typename RowDot>
void gemv_driver(const FgmpWeightView& w, const float* x, float* y, RowDot row_dot) {
  const int64_t R = w.rows;
  std::vector<float> pad;
  const float* xp = padded_x(w, x, &pad);
#pragma omp parallel for schedule(static) if (R * w.cols >= kParallelMinWeights && R > 1)
  for (int64_t r = 0; r < R; ++r) y[r] = row_dot(w, r, xp);
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
  // Small windows: an L2-sized block of rows. Large ones: 256 rows, so the GEMM's packing
  // of X (T * C floats per call) stays small next to its T * C * rb multiply-adds
  // (measured at T = 512: 16-row blocks ran at ~0.5x the dense GEMM, 256-row ones ~0.9x).
  const int64_t rb = T >= kLargeWindow
                         ? 256
                         : std::max<int64_t>(8, std::min<int64_t>(256, kGemmBlockFloats / ld));
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
float scalar_row_dot(const FgmpWeightView& w, int64_t r, const float* x) {
  const Tables& t = tables();
  RowStreams s = row_streams(w, r);
  float acc4 = 0.0f, acc8 = 0.0f;
  walk_row(
      w.block_map + r * map_bytes_per_row(w), blocks_per_row(w), map_bytes_per_row(w),
      [&](int64_t i, auto) {
        const float* xb = x + i * kB;
        float a = 0.0f, b = 0.0f;
        for (int e = 0; e < 8; e += 2) {
          a += t.e2m1[s.q4[e] & 0xF] * xb[2 * e] + t.e2m1[s.q4[e] >> 4] * xb[2 * e + 1];
          b += t.e2m1[s.q4[e + 1] & 0xF] * xb[2 * e + 2] +
               t.e2m1[s.q4[e + 1] >> 4] * xb[2 * e + 3];
        }
        acc4 += t.e4m3[*s.s4++] * (a + b);
        s.q4 += 8;
      },
      [&](int64_t i, auto) {
        const float* xb = x + i * kB;
        float a = 0.0f, b = 0.0f;
        for (int e = 0; e < kB; e += 2) {
          a += t.e4m3[s.q8[e]] * xb[e];
          b += t.e4m3[s.q8[e + 1]] * xb[e + 1];
        }
        acc8 += a + b;
        s.q8 += kB;
      });
  return w.fp4_scale_2 * acc4 + w.fp8_scale * acc8;
}

void scalar_decode_row(const FgmpWeightView& w, int64_t r, float* out) {
  const Tables& t = tables();
  RowStreams s = row_streams(w, r);
  walk_row(
      w.block_map + r * map_bytes_per_row(w), blocks_per_row(w), map_bytes_per_row(w),
      [&](int64_t i, auto) {  // (e2m1 * e4m3(scale)) * fp4_scale_2, the reference's order
        const float sc = t.e4m3[*s.s4++];
        for (int e = 0; e < 8; ++e) {
          out[i * kB + 2 * e] = t.e2m1[s.q4[e] & 0xF] * sc * w.fp4_scale_2;
          out[i * kB + 2 * e + 1] = t.e2m1[s.q4[e] >> 4] * sc * w.fp4_scale_2;
        }
        s.q4 += 8;
      },
      [&](int64_t i, auto) {
        for (int e = 0; e < kB; ++e) out[i * kB + e] = t.e4m3[s.q8[e]] * w.fp8_scale;
        s.q8 += kB;
      });
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
// (exponent 0) become fp16 subnormals of the same value / 256, which cvtph converts
// exactly. (The NaN codes become +-480.)
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

// The 16 values of an FP8 block as two halves, worth e4m3 / 256.
MPQ_AVX2 inline void e4m3x16(const uint8_t* q, __m256* lo, __m256* hi) {
  const __m256i h = e4m3_to_f16x16(q);
  *lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
  *hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}

MPQ_AVX2 float avx2_row_dot(const FgmpWeightView& w, int64_t r, const float* x) {
  const Tables& t = tables();
  RowStreams s = row_streams(w, r);
  const __m256 mag = _mm256_loadu_ps(t.e2m1);
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
  walk_row(
      w.block_map + r * map_bytes_per_row(w), blocks_per_row(w), map_bytes_per_row(w),
      [&](int64_t i, auto) MPQ_AVX2 {
        __m256 lo, hi;
        e2m1x16(s.q4, mag, &lo, &hi);
        const __m256 sc = _mm256_broadcast_ss(&t.e4m3[*s.s4++]);
        a0 = _mm256_fmadd_ps(_mm256_mul_ps(lo, sc), _mm256_loadu_ps(x + i * kB), a0);
        a1 = _mm256_fmadd_ps(_mm256_mul_ps(hi, sc), _mm256_loadu_ps(x + i * kB + 8), a1);
        s.q4 += 8;
      },
      [&](int64_t i, auto) MPQ_AVX2 {
        __m256 lo, hi;
        e4m3x16(s.q8, &lo, &hi);
        b0 = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x + i * kB), b0);
        b1 = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + i * kB + 8), b1);
        s.q8 += kB;
      });
  return w.fp4_scale_2 * hsum8(_mm256_add_ps(a0, a1)) +
         w.fp8_scale * (256.0f * hsum8(_mm256_add_ps(b0, b1)));
}

MPQ_AVX2 void avx2_decode_row(const FgmpWeightView& w, int64_t r, float* out) {
  const Tables& t = tables();
  RowStreams s = row_streams(w, r);
  const __m256 mag = _mm256_loadu_ps(t.e2m1);
  const __m256 s2 = _mm256_set1_ps(w.fp4_scale_2), s8 = _mm256_set1_ps(w.fp8_scale);
  const __m256 k256 = _mm256_set1_ps(256.0f);
  walk_row(
      w.block_map + r * map_bytes_per_row(w), blocks_per_row(w), map_bytes_per_row(w),
      [&](int64_t i, auto) MPQ_AVX2 {  // (e2m1 * e4m3(scale)) * fp4_scale_2
        __m256 lo, hi;
        e2m1x16(s.q4, mag, &lo, &hi);
        const __m256 sc = _mm256_broadcast_ss(&t.e4m3[*s.s4++]);
        _mm256_storeu_ps(out + i * kB, _mm256_mul_ps(_mm256_mul_ps(lo, sc), s2));
        _mm256_storeu_ps(out + i * kB + 8, _mm256_mul_ps(_mm256_mul_ps(hi, sc), s2));
        s.q4 += 8;
      },
      [&](int64_t i, auto) MPQ_AVX2 {  // (e4m3 / 256 * 256) * fp8_scale
        __m256 lo, hi;
        e4m3x16(s.q8, &lo, &hi);
        _mm256_storeu_ps(out + i * kB, _mm256_mul_ps(_mm256_mul_ps(lo, k256), s8));
        _mm256_storeu_ps(out + i * kB + 8, _mm256_mul_ps(_mm256_mul_ps(hi, k256), s8));
        s.q8 += kB;
      });
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
// (A VBMI multishift instead of unpack + zero-extend measured no faster.)
MPQ_AVX512 inline __m512 e2m1x16_512(const uint8_t* q, __m512 table) {
  return _mm512_maskz_permutexvar_ps(kAll16, _mm512_maskz_cvtepu8_epi32(kAll16, nibbles16(q)),
                                     table);
}

// The 16 values of an FP8 block, worth e4m3 / 256 (see e4m3_to_f16x16).
MPQ_AVX512 inline __m512 e4m3x16_512(const uint8_t* q) {
  return _mm512_maskz_cvtph_ps(kAll16, e4m3_to_f16x16(q));
}

MPQ_AVX512 float avx512_row_dot(const FgmpWeightView& w, int64_t r, const float* x) {
  const Tables& t = tables();
  RowStreams s = row_streams(w, r);
  const __m512 table = _mm512_loadu_ps(t.e2m1);
  __m512 a[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  __m512 b[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  walk_row(
      w.block_map + r * map_bytes_per_row(w), blocks_per_row(w), map_bytes_per_row(w),
      [&](int64_t i, auto parity) MPQ_AVX512 {
        const __m512 v =
            _mm512_mul_ps(e2m1x16_512(s.q4, table), _mm512_set1_ps(t.e4m3[*s.s4++]));
        a[parity] = _mm512_fmadd_ps(v, _mm512_loadu_ps(x + i * kB), a[parity]);
        s.q4 += 8;
      },
      [&](int64_t i, auto parity) MPQ_AVX512 {
        b[parity] = _mm512_fmadd_ps(e4m3x16_512(s.q8), _mm512_loadu_ps(x + i * kB), b[parity]);
        s.q8 += kB;
      });
  return w.fp4_scale_2 * hsum16(_mm512_add_ps(a[0], a[1])) +
         w.fp8_scale * (256.0f * hsum16(_mm512_add_ps(b[0], b[1])));
}

MPQ_AVX512 void avx512_decode_row(const FgmpWeightView& w, int64_t r, float* out) {
  const Tables& t = tables();
  RowStreams s = row_streams(w, r);
  const __m512 table = _mm512_loadu_ps(t.e2m1);
  const __m512 s2 = _mm512_set1_ps(w.fp4_scale_2), s8 = _mm512_set1_ps(w.fp8_scale);
  const __m512 k256 = _mm512_set1_ps(256.0f);
  walk_row(
      w.block_map + r * map_bytes_per_row(w), blocks_per_row(w), map_bytes_per_row(w),
      [&](int64_t i, auto) MPQ_AVX512 {  // (e2m1 * e4m3(scale)) * fp4_scale_2
        const __m512 v =
            _mm512_mul_ps(e2m1x16_512(s.q4, table), _mm512_set1_ps(t.e4m3[*s.s4++]));
        _mm512_storeu_ps(out + i * kB, _mm512_mul_ps(v, s2));
        s.q4 += 8;
      },
      [&](int64_t i, auto) MPQ_AVX512 {  // (e4m3 / 256 * 256) * fp8_scale
        _mm512_storeu_ps(out + i * kB, _mm512_mul_ps(_mm512_mul_ps(e4m3x16_512(s.q8), k256), s8));
        s.q8 += kB;
      });
}

}  // namespace

// ---------------------------------------------------------------- public entry points -

bool fgmp_cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          cpu_has_f16c();
  return has;
}

bool fgmp_cpu_has_avx512() {
  static const bool has = fgmp_cpu_has_avx2() && __builtin_cpu_supports("avx512f");
  return has;
}

namespace {
// The path of fgmp_gemv / fgmp_gemm (what the CPU has, capped by MPQ_CPU_ISA).
CpuIsa fgmp_isa() {
  static const CpuIsa isa = kernel_isa_capped(fgmp_cpu_has_avx512(), fgmp_cpu_has_avx2());
  return isa;
}
}  // namespace

const char* fgmp_cpu_path() { return cpu_isa_name(fgmp_isa()); }

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
  gemv_driver(w, x, y, scalar_row_dot);
}

void fgmp_gemv_avx2(const FgmpWeightView& w, const float* x, float* y) {
  check_view(w, "fgmp_gemv_avx2");
  gemv_driver(w, x, y, avx2_row_dot);
}

void fgmp_gemv_avx512(const FgmpWeightView& w, const float* x, float* y) {
  check_view(w, "fgmp_gemv_avx512");
  gemv_driver(w, x, y, avx512_row_dot);
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
  if (T == 1) return fgmp_gemv_scalar(w, X, Y);  // one row of X: the GEMV kernel
  gemm_driver(w, X, T, Y, [&w](int64_t r, float* out) { scalar_decode_row(w, r, out); });
}

void fgmp_gemm_avx2(const FgmpWeightView& w, const float* X, int64_t T, float* Y) {
  check_view(w, "fgmp_gemm_avx2");
  if (T == 1) return fgmp_gemv_avx2(w, X, Y);  // one row of X: the GEMV kernel
  gemm_driver(w, X, T, Y, [&w](int64_t r, float* out) { avx2_decode_row(w, r, out); });
}

void fgmp_gemm_avx512(const FgmpWeightView& w, const float* X, int64_t T, float* Y) {
  check_view(w, "fgmp_gemm_avx512");
  if (T == 1) return fgmp_gemv_avx512(w, X, Y);  // one row of X: the GEMV kernel
  gemm_driver(w, X, T, Y, [&w](int64_t r, float* out) { avx512_decode_row(w, r, out); });
}

void fgmp_gemv(const FgmpWeightView& w, const float* x, float* y) {
  switch (fgmp_isa()) {
    case CpuIsa::kAvx512: return fgmp_gemv_avx512(w, x, y);
    case CpuIsa::kAvx2: return fgmp_gemv_avx2(w, x, y);
    default: return fgmp_gemv_scalar(w, x, y);
  }
}

void fgmp_gemm(const FgmpWeightView& w, const float* X, int64_t T, float* Y) {
  switch (fgmp_isa()) {
    case CpuIsa::kAvx512: return fgmp_gemm_avx512(w, X, T, Y);
    case CpuIsa::kAvx2: return fgmp_gemm_avx2(w, X, T, Y);
    default: return fgmp_gemm_scalar(w, X, T, Y);
  }
}

// ---------------------------------------------------------------- int8 activations -----

namespace {

// Row r's FP8 blocks only (walk_fp8_blocks), as the FP8 lambdas of scalar_row_dot and
// avx512_row_dot compute them.
float scalar_fp8_row(const FgmpWeightView& w, int64_t r, const float* x) {
  const Tables& t = tables();
  const uint8_t* q8 = w.fp8 + int64_t{w.fp8_row_offset[r]} * kB;
  float acc = 0.0f;
  walk_fp8_blocks(w.block_map + r * map_bytes_per_row(w), blocks_per_row(w), map_bytes_per_row(w),
                  [&](int64_t i, auto) {
                    const float* xb = x + i * kB;
                    float a = 0.0f, b = 0.0f;
                    for (int e = 0; e < kB; e += 2) {
                      a += t.e4m3[q8[e]] * xb[e];
                      b += t.e4m3[q8[e + 1]] * xb[e + 1];
                    }
                    acc += a + b;
                    q8 += kB;
                  });
  return w.fp8_scale * acc;
}

MPQ_AVX512 float avx512_fp8_row(const FgmpWeightView& w, int64_t r, const float* x) {
  const uint8_t* q8 = w.fp8 + int64_t{w.fp8_row_offset[r]} * kB;
  __m512 b[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  walk_fp8_blocks(w.block_map + r * map_bytes_per_row(w), blocks_per_row(w), map_bytes_per_row(w),
                  [&](int64_t i, auto parity) MPQ_AVX512 {
                    // The FP8 stream 4 KiB ahead into L2 (simd.h prefetch_l2): 12.9-13.7 ->
                    // 14.3-15.4 GB/s for the whole fgmp_gemv_q8 (BM_FgmpQ8Gemv/rows:11008).
                    prefetch_l2(q8 + 4096);
                    b[parity] = _mm512_fmadd_ps(e4m3x16_512(q8), _mm512_loadu_ps(x + i * kB), b[parity]);
                    q8 += kB;
                  });
  return w.fp8_scale * (256.0f * hsum16(_mm512_add_ps(b[0], b[1])));
}

}  // namespace

Nvfp4Packed fgmp_repack_fp4(const FgmpWeightView& w) {
  check_view(w, "fgmp_repack_fp4");
  const int64_t R = w.rows, nb = blocks_per_row(w), mb = map_bytes_per_row(w);
  std::vector<uint8_t> codes(static_cast<std::size_t>(R * nb * 8), 0), scales(static_cast<std::size_t>(R * nb), 0);
  for (int64_t r = 0; r < R; ++r) {
    RowStreams s = row_streams(w, r);
    walk_row(
        w.block_map + r * mb, nb, mb,
        [&](int64_t i, auto) {
          const std::size_t k = static_cast<std::size_t>(r * nb + i);
          std::memcpy(codes.data() + 8 * k, s.q4, 8);
          scales[k] = *s.s4++;
          s.q4 += 8;
        },
        [](int64_t, auto) {});  // FP8 blocks stay zeros
  }
  Nvfp4WeightView v;
  v.rows = R, v.cols = w.cols, v.weight = codes.data(), v.weight_scale = scales.data(), v.scale_2 = w.fp4_scale_2;
  return nvfp4_repack(v);
}

void fgmp_fp8_gemv_add(const FgmpWeightView& w, const float* x, float* y) {
  check_view(w, "fgmp_fp8_gemv_add");
  const int64_t R = w.rows;
  std::vector<float> pad;
  const float* xp = padded_x(w, x, &pad);
  const bool avx512 = fgmp_isa() >= CpuIsa::kAvx512;
#pragma omp parallel for schedule(static) if (R * w.cols >= kParallelMinWeights && R > 1)
  for (int64_t r = 0; r < R; ++r) {
    if (w.fp8_row_offset[r + 1] == w.fp8_row_offset[r]) continue;
    y[r] += avx512 ? avx512_fp8_row(w, r, xp) : scalar_fp8_row(w, r, xp);
  }
}

void fgmp_gemv_q8(const FgmpWeightView& w, const Nvfp4Packed& fp4, const float* x, float* y) {
  MPQ_ASSERT(fp4.rows == w.rows && fp4.cols == w.cols);
  nvfp4_gemv(fp4, x, y);
  fgmp_fp8_gemv_add(w, x, y);
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
