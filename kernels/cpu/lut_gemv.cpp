// SqueezeLLM LUT GEMV / GEMM kernels (kernels/cpu/lut_gemv.h): scalar references, a
// portable scalar fast path, and an AVX2+FMA+F16C path compiled with a function target
// attribute and chosen at run time, so a -DMPQ_NATIVE=OFF build still uses it on an AVX2
// machine and never executes it on an older one.
#include "kernels/cpu/lut_gemv.h"

// AVX2 / AVX-512 / FMA / F16C intrinsics (used only under target attributes). GCC 12 reports
// false -Wuninitialized warnings inside its AVX-512 headers (the self-initialized __Y of
// _mm512_undefined_*, GCC bug 105593): silenced for those headers only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <omp.h>  // omp_in_parallel, omp_get_max_threads: lut_gemm's row-block split

#include <Eigen/Dense>  // the per-block GEMMs of lut_gemm
#include <algorithm>
#include <array>
#include <cstring>  // std::memcpy: unaligned byte loads
#include <string>
#include <vector>

#include "kernels/cpu/cpu_features.h"  // cpu_isa_cap (MPQ_CPU_ISA)
#include "lib/common/cpu_features.h"  // cpu_has_f16c
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

// sparse_dot with 8 entries at a time: gathered x, F16C values (the scalar fp16 decode per
// entry made the CSR part cost 40-80% of the dense kernel's time).
MPQ_AVX2 float avx2_sparse_dot(const LutWeightView& w, int64_t r, const float* x) {
  if (!w.rowptr) return 0.0f;
  const int64_t e1 = w.rowptr[r + 1];
  int64_t e = w.rowptr[r];
  __m256 acc = _mm256_setzero_ps();
  for (; e + 8 <= e1; e += 8) {
    const __m256i idx =
        w.col_is_i16
            ? _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const int16_t*>(w.col) + e)))
            : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const int32_t*>(w.col) + e));
    const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.val_f16 + e)));
    acc = _mm256_fmadd_ps(v, _mm256_i32gather_ps(x, idx, 4), acc);
  }
  float s = hsum8(acc);
  for (; e < e1; ++e) s += _cvtsh_ss(w.val_f16[e]) * x[col_at(w, e)];
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

// ---------------------------------------------------------------- kernel column order -

// The AVX-512 path reads x (and, in lut_gemm, writes decoded rows) in "kernel order":
// columns in blocks of 128 = 16 groups of 8; in a block of G groups (G = 16, fewer only in
// the last block) column c0 + 8d + n sits at position c0 + G*n + d. Dword lane d of a
// block register then holds group d's packed bits, and pass n (shift by b*n) yields the 16
// weights of columns c0 + n, c0 + 8 + n, .., which meet x at 16 consecutive positions.
// Positions [C, 8*ceil(C/8)) are padding (x = 0 there).
inline int64_t padded_cols(int64_t C) { return (C + 7) / 8 * 8; }

inline int64_t kernel_pos(int64_t c, int64_t C) {
  const int64_t c0 = c / 128 * 128, w = c - c0;
  const int64_t g = std::min<int64_t>(16, (padded_cols(C) - c0) / 8);
  return c0 + g * (w % 8) + w / 8;
}

// xp[0 .. padded_cols(C)) <- x[0 .. C) in kernel order, padding zero.
void to_kernel_order(const float* x, int64_t C, float* xp) {
  const int64_t Cp = padded_cols(C);
  for (int64_t c0 = 0; c0 < Cp; c0 += 128) {
    const int64_t G = std::min<int64_t>(16, (Cp - c0) / 8);
    for (int64_t d = 0; d < G; ++d)
      for (int64_t n = 0; n < 8; ++n) {
        const int64_t c = c0 + 8 * d + n;
        xp[c0 + G * n + d] = c < C ? x[c] : 0.0f;
      }
  }
}

// ---------------------------------------------------------------- AVX-512 path --------
//
// Per block of 128 weights (16 groups of 8, b bytes each):
//   v  <- the 16b bytes, spread by one vpermb so that dword d holds group d's bits
//         (b = 4: a plain 64-byte load, no vpermb)
//   for n = 0..7:  w16 <- vpermps(v >> b*n, T16);  acc_n%4 += w16 * xp[c0 + 16n ..)
// vpermps reads only bits 0..3 of each dword, so no mask is needed: T16 is the row's LUT
// repeated to 16 fp32 entries (T16[i] = LUT[i mod 2^b]). Per 16 weights: one shift (p0),
// one vpermps (p5), one FMA, one x load -- against ~4 port-5 uops per 8 weights in AVX2.

#define MPQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,fma,f16c")))

// vpermb index that moves bytes b*d .. b*d + b-1 of a block into dword d (its 4th byte, for
// b < 4, is a copy of the last one and never read).
template <int B>
constexpr std::array<uint8_t, 64> spread_bytes() {
  std::array<uint8_t, 64> a{};
  for (int j = 0; j < 64; ++j)
    a[j] = static_cast<uint8_t>(B * (j / 4) + (j % 4 < B - 1 ? j % 4 : B - 1));
  return a;
}
template <int B>
alignas(64) inline constexpr std::array<uint8_t, 64> kSpread = spread_bytes<B>();

// T16: the row's 2^b fp16 entries, repeated to fill 16 fp32 lanes.
template <int B>
MPQ_AVX512 inline __m512 load_table16(const uint16_t* h) {
  if constexpr (B == 4) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h)));
  } else {
    __m128i h8;
    if constexpr (B == 3) {
      h8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h));
    } else {
      uint64_t q;
      std::memcpy(&q, h, 8);
      h8 = _mm_set1_epi64x(static_cast<long long>(q));
    }
    return _mm512_cvtph_ps(_mm256_set_m128i(h8, h8));
  }
}

// The first `groups` (<= 16) groups of a block, spread to one group per dword; the masked
// load never touches bytes past them (so never past the row or the buffer).
template <int B>
MPQ_AVX512 inline __m512i load_block(const uint8_t* p, int64_t groups) {
  if (B == 4 && groups == 16) return _mm512_loadu_si512(p);
  const __mmask64 m = groups * B >= 64 ? ~__mmask64{0} : (__mmask64{1} << (groups * B)) - 1;
  const __m512i v = _mm512_maskz_loadu_epi8(m, p);
  if constexpr (B == 4) return v;
  return _mm512_permutexvar_epi8(_mm512_load_si512(kSpread<B>.data()), v);
}

// Pass n of a whole block: 16 weights from v.
template <int B, int N>
MPQ_AVX512 inline __m512 block_pass(__m512i v, __m512 table) {
  return _mm512_permutexvar_ps(N == 0 ? v : _mm512_srli_epi32(v, B * N), table);
}

// Lanes of pass n that are real columns in a last block of `rem` (< 128) columns.
inline __mmask16 tail_lanes(int64_t rem, int n) {
  const int64_t lanes = rem > n ? (rem - n + 7) / 8 : 0;
  return static_cast<__mmask16>((1u << lanes) - 1);
}

// Software prefetch distance of the packed rows (bytes ahead): the hardware prefetchers
// alone leave the kernel ~25-40% below its in-cache speed when the weights stream from DRAM
// (4096 x 4096, one thread; 2-16 KiB ahead measured, 4 KiB best).
constexpr int64_t kPrefetchBytes = 4096;

template <int B>
MPQ_AVX512 float avx512_row_dense(const uint8_t* row, const uint16_t* lut_h, const float* xp,
                                  int64_t cols) {
  const __m512 T = load_table16<B>(lut_h);
  const int64_t full = cols / 128;
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(),
         a3 = _mm512_setzero_ps();
  for (int64_t blk = 0; blk < full; ++blk) {
    _mm_prefetch(reinterpret_cast<const char*>(row + blk * 16 * B) + kPrefetchBytes, _MM_HINT_T0);
    const __m512i v = load_block<B>(row + blk * 16 * B, 16);
    const float* xb = xp + blk * 128;
    a0 = _mm512_fmadd_ps(block_pass<B, 0>(v, T), _mm512_loadu_ps(xb), a0);
    a1 = _mm512_fmadd_ps(block_pass<B, 1>(v, T), _mm512_loadu_ps(xb + 16), a1);
    a2 = _mm512_fmadd_ps(block_pass<B, 2>(v, T), _mm512_loadu_ps(xb + 32), a2);
    a3 = _mm512_fmadd_ps(block_pass<B, 3>(v, T), _mm512_loadu_ps(xb + 48), a3);
    a0 = _mm512_fmadd_ps(block_pass<B, 4>(v, T), _mm512_loadu_ps(xb + 64), a0);
    a1 = _mm512_fmadd_ps(block_pass<B, 5>(v, T), _mm512_loadu_ps(xb + 80), a1);
    a2 = _mm512_fmadd_ps(block_pass<B, 6>(v, T), _mm512_loadu_ps(xb + 96), a2);
    a3 = _mm512_fmadd_ps(block_pass<B, 7>(v, T), _mm512_loadu_ps(xb + 112), a3);
  }
  const int64_t rem = cols - full * 128;
  if (rem > 0) {  // last block: G groups, lanes past the row's end masked to zero
    const int64_t G = (rem + 7) / 8;
    const __m512i v = load_block<B>(row + full * 16 * B, G);
    const float* xb = xp + full * 128;
    for (int n = 0; n < 8; ++n) {
      const __mmask16 m = tail_lanes(rem, n);
      const __m512 w16 = _mm512_maskz_permutexvar_ps(
          m, _mm512_srlv_epi32(v, _mm512_set1_epi32(B * n)), T);
      a0 = _mm512_fmadd_ps(w16, _mm512_maskz_loadu_ps(m, xb + G * n), a0);
    }
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// Decodes the row into out[0 .. padded_cols(cols)) in kernel order (padding lanes 0).
template <int B>
MPQ_AVX512 void avx512_row_decode(const uint8_t* row, const uint16_t* lut_h, int64_t cols,
                                  float* out) {
  const __m512 T = load_table16<B>(lut_h);
  const int64_t full = cols / 128;
  for (int64_t blk = 0; blk < full; ++blk) {
    const __m512i v = load_block<B>(row + blk * 16 * B, 16);
    float* ob = out + blk * 128;
    _mm512_storeu_ps(ob, block_pass<B, 0>(v, T));
    _mm512_storeu_ps(ob + 16, block_pass<B, 1>(v, T));
    _mm512_storeu_ps(ob + 32, block_pass<B, 2>(v, T));
    _mm512_storeu_ps(ob + 48, block_pass<B, 3>(v, T));
    _mm512_storeu_ps(ob + 64, block_pass<B, 4>(v, T));
    _mm512_storeu_ps(ob + 80, block_pass<B, 5>(v, T));
    _mm512_storeu_ps(ob + 96, block_pass<B, 6>(v, T));
    _mm512_storeu_ps(ob + 112, block_pass<B, 7>(v, T));
  }
  const int64_t rem = cols - full * 128;
  if (rem > 0) {
    const int64_t G = (rem + 7) / 8;
    const __m512i v = load_block<B>(row + full * 16 * B, G);
    const __mmask16 store = static_cast<__mmask16>((1u << G) - 1);
    for (int n = 0; n < 8; ++n)
      _mm512_mask_storeu_ps(out + full * 128 + G * n, store,
                            _mm512_maskz_permutexvar_ps(
                                tail_lanes(rem, n),
                                _mm512_srlv_epi32(v, _mm512_set1_epi32(B * n)), T));
  }
}

// sparse_dot with 16 entries at a time (masked tail): gathered x, F16C values.
MPQ_AVX512 float avx512_sparse_dot(const LutWeightView& w, int64_t r, const float* x) {
  if (!w.rowptr) return 0.0f;
  const int64_t e1 = w.rowptr[r + 1];
  __m512 acc = _mm512_setzero_ps();
  for (int64_t e = w.rowptr[r]; e < e1; e += 16) {
    const int64_t n = e1 - e < 16 ? e1 - e : 16;
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
    const __m512i idx =
        w.col_is_i16 ? _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(m, static_cast<const int16_t*>(w.col) + e))
                     : _mm512_maskz_loadu_epi32(m, static_cast<const int32_t*>(w.col) + e);
    const __m512 v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w.val_f16 + e));
    acc = _mm512_fmadd_ps(v, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, x, 4), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

float avx512_dense(int bits, const uint8_t* row, const uint16_t* lut, const float* xp,
                   int64_t cols) {
  switch (bits) {
    case 2: return avx512_row_dense<2>(row, lut, xp, cols);
    case 3: return avx512_row_dense<3>(row, lut, xp, cols);
    default: return avx512_row_dense<4>(row, lut, xp, cols);
  }
}

void avx512_decode(int bits, const uint8_t* row, const uint16_t* lut, int64_t cols,
                   float* out) {
  switch (bits) {
    case 2: avx512_row_decode<2>(row, lut, cols, out); break;
    case 3: avx512_row_decode<3>(row, lut, cols, out); break;
    default: avx512_row_decode<4>(row, lut, cols, out); break;
  }
}

// ---------------------------------------------------------------- window product ------

using MatRM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MapRM = Eigen::Map<MatRM, 0, Eigen::OuterStride<>>;
using ConstMapRM = Eigen::Map<const MatRM, 0, Eigen::OuterStride<>>;

// Decoded rows per GEMM block: at most kGemmBlockBytes of fp32 per thread. Larger blocks
// mean fewer GEMM calls, each of which re-packs all of X (4096 x 4096, T = 512, one thread:
// 0.5 MiB blocks 1.3x slower than 2-8 MiB, which measured alike within noise).
constexpr int64_t kGemmBlockBytes = int64_t{4} << 20;
// Multiply-adds below which lut_gemm runs on one thread (~0.2 ms of work).
constexpr int64_t kGemmParallelMacs = int64_t{1} << 24;

// Whether lut_gemm runs on all threads: enough work, and not nested in a caller's region.
inline bool gemm_is_big(const LutWeightView& w, int64_t T) {
  return w.rows * w.cols * T >= kGemmParallelMacs && !omp_in_parallel();
}

// Shared driver of every lut_gemm path: rows are decoded in blocks into a per-thread fp32
// buffer (row stride ld >= K; decode(row, lut, out) writes K' <= ld floats, CSR residuals
// added at pos(col)), and each block is one GEMM Y[:, r0:r1] = Xk Wblock^T with Xk [T, K]
// (row stride ldx). K and the column order of Xk must match the decoded rows.
template <typename Decode, typename Pos>
void gemm_blocked(const LutWeightView& w, const float* Xk, int64_t ldx, int64_t K, int64_t T,
                  float* Y, Decode decode, Pos pos) {
  const int64_t R = w.rows, RB = row_bytes(w), ld = padded_cols(w.cols);
  // A large product outside a parallel region gets at least one block per thread, so that
  // every block GEMM runs inside an active parallel region, where OpenBLAS stays
  // single-threaded instead of waking its own threads per block. Below kGemmParallelMacs
  // (or nested in a caller's region, as mpq-eval's windows are) one thread does it all.
  const bool big = gemm_is_big(w, T);
  const int64_t threads = big ? omp_get_max_threads() : 1;
  const int64_t rb = std::max<int64_t>(
      1, std::min(kGemmBlockBytes / (4 * std::max<int64_t>(ld, 1)), (R + threads - 1) / threads));
  const int64_t nblk = (R + rb - 1) / rb;
  const bool par = big && nblk > 1;
#pragma omp parallel if (par)
  {
    std::vector<float> buf(static_cast<std::size_t>(std::min(rb, R) * ld));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblk; ++b) {
      const int64_t r0 = b * rb, nr = std::min(rb, R - r0);
      for (int64_t i = 0; i < nr; ++i) {
        const int64_t r = r0 + i;
        float* out = buf.data() + i * ld;
        decode(w.qweight + r * RB, w.lut_f16 + (r << w.bits), out);
        if (w.rowptr)
          for (int64_t e = w.rowptr[r]; e < w.rowptr[r + 1]; ++e)
            out[pos(col_at(w, e))] += fp16_to_fp32(w.val_f16[e]);
      }
      MapRM(Y + r0, T, nr, Eigen::OuterStride<>(R)).noalias() =
          ConstMapRM(Xk, T, K, Eigen::OuterStride<>(ldx)) *
          ConstMapRM(buf.data(), nr, K, Eigen::OuterStride<>(ld)).transpose();
    }
  }
}

// lut_gemm in the natural column order (scalar and AVX2 decoders).
template <typename Decode>
void gemm_natural(const LutWeightView& w, const float* X, int64_t T, float* Y, Decode decode) {
  if (w.rows == 0 || T == 0) return;
  if (w.cols == 0) {
    std::fill(Y, Y + T * w.rows, 0.0f);
    return;
  }
  gemm_blocked(w, X, w.cols, w.cols, T, Y, decode, [](int64_t c) { return c; });
}

}  // namespace

// ---------------------------------------------------------------- public entry points -

bool lut_cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          cpu_has_f16c();
  return has;
}

bool lut_cpu_has_avx512() {
  static const bool has = lut_cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512vbmi");
  return has;
}

namespace {
// The path of lut_gemv / lut_gemm (what the CPU has, capped by MPQ_CPU_ISA).
CpuIsa lut_isa() {
  static const CpuIsa isa = kernel_isa_capped(lut_cpu_has_avx512(), lut_cpu_has_avx2());
  return isa;
}
}  // namespace

const char* lut_cpu_path() { return cpu_isa_name(lut_isa()); }



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
           avx2_sparse_dot(w, r, x);
}

void lut_gemv_avx512(const LutWeightView& w, const float* x, float* y) {
  check_view(w, "lut_gemv_avx512");
  const int64_t R = w.rows, C = w.cols, RB = row_bytes(w);
  std::vector<float> xp(static_cast<std::size_t>(padded_cols(C)));
  to_kernel_order(x, C, xp.data());
#pragma omp parallel for schedule(static) if (R * C >= kParallelMinWeights && R > 1)
  for (int64_t r = 0; r < R; ++r)
    y[r] = avx512_dense(w.bits, w.qweight + r * RB, w.lut_f16 + (r << w.bits), xp.data(), C) +
           avx512_sparse_dot(w, r, x);
}

void lut_gemm_scalar(const LutWeightView& w, const float* X, int64_t T, float* Y) {
  check_view(w, "lut_gemm_scalar");
  const int bits = w.bits, k = 1 << bits;
  const int64_t C = w.cols;
  gemm_natural(w, X, T, Y, [bits, k, C](const uint8_t* row, const uint16_t* lut_h, float* out) {
    float lut[16];
    lut_to_fp32(lut_h, k, lut);
    scalar_decode(bits, row, lut, C, out);
  });
}

void lut_gemm_avx2(const LutWeightView& w, const float* X, int64_t T, float* Y) {
  check_view(w, "lut_gemm_avx2");
  const int bits = w.bits;
  const int64_t C = w.cols;
  gemm_natural(w, X, T, Y, [bits, C](const uint8_t* row, const uint16_t* lut_h, float* out) {
    avx2_decode(bits, row, lut_h, C, out);
  });
}

void lut_gemm_avx512(const LutWeightView& w, const float* X, int64_t T, float* Y) {
  check_view(w, "lut_gemm_avx512");
  const int bits = w.bits;
  const int64_t R = w.rows, C = w.cols, Cp = padded_cols(C);
  if (R == 0 || T == 0) return;
  if (C == 0) {
    std::fill(Y, Y + T * R, 0.0f);
    return;
  }
  // X in kernel order once per call (T * C floats), then GEMMs on rows decoded in that order.
  std::vector<float> Xk(static_cast<std::size_t>(T * Cp));
#pragma omp parallel for schedule(static) if (gemm_is_big(w, T))
  for (int64_t t = 0; t < T; ++t) to_kernel_order(X + t * C, C, Xk.data() + t * Cp);
  gemm_blocked(
      w, Xk.data(), Cp, Cp, T, Y,
      [bits, C](const uint8_t* row, const uint16_t* lut_h, float* out) {
        avx512_decode(bits, row, lut_h, C, out);
      },
      [C](int64_t c) { return kernel_pos(c, C); });
}

void lut_gemv(const LutWeightView& w, const float* x, float* y) {
  switch (lut_isa()) {
    case CpuIsa::kAvx512: return lut_gemv_avx512(w, x, y);
    case CpuIsa::kAvx2: return lut_gemv_avx2(w, x, y);
    default: return lut_gemv_scalar(w, x, y);
  }
}

void lut_gemm(const LutWeightView& w, const float* X, int64_t T, float* Y) {
  switch (lut_isa()) {
    case CpuIsa::kAvx512: return lut_gemm_avx512(w, X, T, Y);
    case CpuIsa::kAvx2: return lut_gemm_avx2(w, X, T, Y);
    default: return lut_gemm_scalar(w, X, T, Y);
  }
}

}  // namespace mpq
