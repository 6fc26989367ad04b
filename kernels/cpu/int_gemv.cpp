// CPU kernels of the int format (see int_gemv.h).
#include "kernels/cpu/int_gemv.h"

#include <omp.h>        // omp_in_parallel

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/act_int8.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/simd.h"  // immintrin.h (GCC bug 105593 warnings silenced), target macros
#include "lib/numeric/codecs.h"

namespace mpq {

void int_unpack_row(const IntWeightView& v, int64_t r, uint8_t* codes) {
  const uint8_t* p = v.qweight + r * v.row_bytes;
  const int64_t C = v.cols;
  switch (v.bits) {
    case 8:
      std::memcpy(codes, p, static_cast<std::size_t>(C));
      return;
    case 4:
      for (int64_t c = 0; c < C; ++c) codes[c] = static_cast<uint8_t>((p[c >> 1] >> ((c & 1) * 4)) & 0xF);
      return;
    case 2:
      for (int64_t c = 0; c < C; ++c) codes[c] = static_cast<uint8_t>((p[c >> 2] >> ((c & 3) * 2)) & 0x3);
      return;
    default:  // the generic LSB-first bitstream (b = 3: 8 codes per 3 bytes)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t bit = c * v.bits;
        const uint32_t word = static_cast<uint32_t>(p[bit >> 3]) |
                              (static_cast<uint32_t>((bit >> 3) + 1 < v.row_bytes ? p[(bit >> 3) + 1] : 0) << 8);
        codes[c] = static_cast<uint8_t>((word >> (bit & 7)) & ((1u << v.bits) - 1));
      }
  }
}

void int_decode_rows(const IntWeightView& v, int64_t r0, int64_t n, float* out, int64_t ld) {
  std::vector<uint8_t> codes(static_cast<std::size_t>(v.cols));
  for (int64_t j = 0; j < n; ++j) {
    const int64_t r = r0 + j;
    int_unpack_row(v, r, codes.data());
    float* o = out + j * ld;
    for (int64_t g = 0; g < v.groups; ++g) {
      const float s = fp16_to_fp32(v.scales[r * v.groups + g]);
      const int z = v.zeros[r * v.groups + g];
      const int64_t c1 = std::min(v.cols, (g + 1) * v.group);
      for (int64_t c = g * v.group; c < c1; ++c) o[c] = s * static_cast<float>(static_cast<int>(codes[static_cast<std::size_t>(c)]) - z);
    }
    std::fill(o + v.cols, o + ld, 0.0f);
  }
}

void int_gemv(const IntWeightView& v, const float* x, float* y) {
  std::vector<float> xsum(static_cast<std::size_t>(v.groups), 0.0f);
  for (int64_t g = 0; g < v.groups; ++g) {
    const int64_t c1 = std::min(v.cols, (g + 1) * v.group);
    float s = 0.0f;
    for (int64_t c = g * v.group; c < c1; ++c) s += x[c];
    xsum[static_cast<std::size_t>(g)] = s;
  }
#pragma omp parallel if (v.rows * v.cols >= (int64_t{1} << 18))
  {
    std::vector<uint8_t> codes(static_cast<std::size_t>(v.cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < v.rows; ++r) {
      int_unpack_row(v, r, codes.data());
      float acc = 0.0f;
      for (int64_t g = 0; g < v.groups; ++g) {
        const int64_t c0 = g * v.group, c1 = std::min(v.cols, c0 + v.group);
        float dot = 0.0f;
        for (int64_t c = c0; c < c1; ++c) dot += static_cast<float>(codes[static_cast<std::size_t>(c)]) * x[c];
        acc += fp16_to_fp32(v.scales[r * v.groups + g]) *
               (dot - static_cast<float>(v.zeros[r * v.groups + g]) * xsum[static_cast<std::size_t>(g)]);
      }
      y[r] = acc;
    }
  }
}

// ---- int8 activations -------------------------------------------------------------

void int_prepare_act(const IntWeightView& v, const int8_t* q, const float* scale, float* gsum) {
  for (int64_t g = 0; g < v.groups; ++g) {
    const int64_t c1 = std::min(v.cols, (g + 1) * v.group);
    float s = 0.0f;
    for (int64_t c = g * v.group; c < c1; ++c) s += scale[c / kIntActBlock] * static_cast<float>(q[c]);
    gsum[g] = s;
  }
}

namespace {

constexpr int64_t kIntParallelMinWeights = int64_t{1} << 18;

// sum_g (s_g * z_g) * gsum_g of row r, in group order.
float zero_term_scalar(const IntWeightView& v, const IntQ8Act& a, int64_t r) {
  float t = 0.0f;
  for (int64_t g = 0; g < v.groups; ++g)
    t += fp16_to_fp32(v.scales[r * v.groups + g]) * static_cast<float>(v.zeros[r * v.groups + g]) * a.gsum[g];
  return t;
}

}  // namespace

void int_q8_gemv_scalar(const IntWeightView& v, const IntQ8Act& a, float* y) {
  const int64_t C = v.cols, NG = v.groups;
  const bool par = v.rows * C >= kIntParallelMinWeights && !omp_in_parallel();
#pragma omp parallel if (par)
  {
    std::vector<uint8_t> codes(static_cast<std::size_t>(C));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < v.rows; ++r) {
      int_unpack_row(v, r, codes.data());
      float acc = 0.0f;
      for (int64_t c = 0; c < C; c += 4) {  // one vpdpbusd lane: columns c .. c + 3
        int32_t d = 0;
        for (int64_t e = c; e < std::min(C, c + 4); ++e) d += static_cast<int32_t>(codes[static_cast<std::size_t>(e)]) * a.q[e];
        const int64_t g = std::min(c / v.group, NG - 1);
        acc += static_cast<float>(d) * (fp16_to_fp32(v.scales[r * NG + g]) * a.scale[c / kIntActBlock]);
      }
      y[r] = acc - zero_term_scalar(v, a, r);
    }
  }
}

namespace {

// The 64 codes of one 64-column block of a B-bit row (bytes from p, `avail` of them readable)
// as u8: B = 8 a load; else the 8B bytes spread so that qword i holds bytes B*i .. B*i + 7
// (codes 8i .. 8i + 7 start at bit 0 of it), a multishift by B*j for byte j, a mask.
template <int B>
MPQ_TARGET_AVX512 inline __attribute__((always_inline)) __m512i unpack_block(const uint8_t* p, __mmask64 m, __m512i perm,
                                                                             __m512i ctrl) {
  if constexpr (B == 8) {
    return _mm512_maskz_loadu_epi8(m, p);
  } else {
    // B <= 4: the block's 8B <= 32 bytes by a 256-bit load (a 512-bit one would span the
    // next cache line every other block); bytes past 8B are never selected into a code.
    const __m512i raw = _mm512_zextsi256_si512(_mm256_maskz_loadu_epi8(static_cast<__mmask32>(m), p));
    const __m512i spread = _mm512_permutexvar_epi8(perm, raw);
    return _mm512_and_si512(_mm512_multishift_epi64_epi8(ctrl, spread), _mm512_set1_epi8(static_cast<char>((1 << B) - 1)));
  }
}

// Byte permute (qword i <- bytes B*i .. B*i + 7), multishift counts (byte j of a qword <- bits
// B*j ..) and each lane's group within a block.
struct RowTables {
  alignas(64) int8_t perm[64];
  alignas(64) int8_t ctrl[64];
  alignas(64) int32_t lane[16];
};

// fp32 sums of one 64-column block: the 16 vpdpbusd lanes of codes times xq, converted.
template <int B>
MPQ_TARGET_AVX512 inline __attribute__((always_inline)) __m512 block_dot(const uint8_t* row, __mmask64 m, int64_t b,
                                                                         const int8_t* q, __m512i perm, __m512i ctrl) {
  const __m512i codes = unpack_block<B>(row + b * 8 * B, m, perm, ctrl);
  return _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), codes, _mm512_loadu_si512(q + b * kIntActBlock)));
}

// bscale[b] = s[g(b)] * xs_b for every block of one row whose groups hold whole blocks
// (G = 64 or 128: one or two blocks per group; or one group for the row).
MPQ_TARGET_AVX512 inline void fill_block_scales(const uint16_t* s, int64_t NG, int64_t G, int64_t nb, const float* xs,
                                                float* bscale) {
  const int64_t bpg = NG == 1 ? nb : G / kIntActBlock;
  if (NG > 1 && bpg > 2) {  // not a group size the format writes; kept general
    for (int64_t b = 0; b < nb; ++b) bscale[b] = _cvtsh_ss(s[b / bpg]) * xs[b];
    return;
  }
  const __m512i half = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
  for (int64_t b0 = 0; b0 < nb; b0 += 16) {
    const __mmask16 m = nb - b0 >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (nb - b0)) - 1u);
    __m512 sv;
    if (NG == 1) {
      sv = _mm512_set1_ps(_cvtsh_ss(s[0]));
    } else if (bpg == 1) {
      sv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, s + b0));
    } else {
      const int64_t g0 = b0 / 2, n = std::min<int64_t>(8, NG - g0);
      sv = _mm512_permutexvar_ps(half, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1u), s + g0)));
    }
    _mm512_mask_storeu_ps(bscale + b0, m, _mm512_mul_ps(sv, _mm512_maskz_loadu_ps(m, xs + b0)));
  }
}

// y[r0 .. r0 + NR) (NR rows share each block's activation load; NR independent chains);
// bscale [NR * nb] scratch. kSplit: the group size divides 64 (16 or 32), so a block holds
// 64 / G groups and each lane takes its group's scale through `lane_idx`; otherwise whole
// blocks share a group, and bscale[b] = s[g(b)] * xs_b is filled first (fill_block_scales).
template <int B, bool kSplit, int NR>
MPQ_TARGET_AVX512 void rows_q8_avx512(const IntWeightView& v, const IntQ8Act& a, int64_t r0, const RowTables& t,
                                      float* bscale, float* y) {
  const __m512i perm = _mm512_load_si512(t.perm), ctrl = _mm512_load_si512(t.ctrl), lane_idx = _mm512_load_si512(t.lane);
  const int64_t NG = v.groups, G = v.group, nb = (v.cols + kIntActBlock - 1) / kIntActBlock;
  const uint8_t* p[NR];
  const uint16_t* s[NR];
  for (int k = 0; k < NR; ++k) {
    p[k] = v.qweight + (r0 + k) * v.row_bytes;
    s[k] = v.scales + (r0 + k) * NG;
    if constexpr (!kSplit) fill_block_scales(s[k], NG, G, nb, a.scale, bscale + k * nb);
  }
  // Whole blocks (8B bytes each) with one mask; the last block's bytes may be fewer.
  constexpr __mmask64 kFull = B == 8 ? ~__mmask64{0} : (__mmask64{1} << (8 * B)) - 1;
  const int64_t full = v.row_bytes / (8 * B);
  const __mmask64 tail = (__mmask64{1} << (v.row_bytes - full * 8 * B)) - 1;
  const int64_t gpb = kSplit ? kIntActBlock / G : 1;
  constexpr int64_t kPrefetchEvery = B >= 8 ? 1 : 64 / (8 * B);
  __m512 acc[NR];
#pragma GCC unroll 4
  for (int k = 0; k < NR; ++k) acc[k] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const __mmask64 m = b < full ? kFull : tail;
    const __m512i xq = _mm512_loadu_si512(a.q + b * kIntActBlock);
#pragma GCC unroll 4
    for (int k = 0; k < NR; ++k) {
      // The same bytes of the next NR rows into L2 (simd.h prefetch_l2): the hardware
      // prefetchers alone, or a prefetch 1-2 KiB ahead in the same row, left int4-g128 at
      // 11-15 GB/s from DRAM (11008 x 4096, 2 threads), this 23-25 (docs/results.md §11).
      // One prefetch per cache line: a block advances a row by 8B bytes (B = 3: every
      // other block, 48 bytes apart, still touches every line).
      if (b % kPrefetchEvery == 0) prefetch_l2(p[k] + NR * v.row_bytes + b * 8 * B);
      const __m512i codes = unpack_block<B>(p[k] + b * 8 * B, m, perm, ctrl);
      const __m512 d = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), codes, xq));
      __m512 ls;
      if constexpr (kSplit) {
        const int64_t g0 = b * gpb, n = std::min(gpb, NG - g0);
        const __m512 sv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1u), s[k] + g0));
        ls = _mm512_mul_ps(_mm512_permutexvar_ps(lane_idx, sv), _mm512_set1_ps(a.scale[b]));
      } else {
        ls = _mm512_set1_ps(bscale[k * nb + b]);
      }
      acc[k] = _mm512_fmadd_ps(d, ls, acc[k]);
    }
  }
  float dot[NR];
#pragma GCC unroll 4
  for (int k = 0; k < NR; ++k) dot[k] = _mm512_reduce_add_ps(acc[k]);  // acc stays in registers
  for (int k = 0; k < NR; ++k) {
    __m512 zt = _mm512_setzero_ps();
    const uint8_t* z = v.zeros + (r0 + k) * NG;
    for (int64_t g = 0; g < NG; g += 16) {
      const __mmask16 m = NG - g >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (NG - g)) - 1u);
      const __m512 sz = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, s[k] + g)),
                                      _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, z + g))));
      zt = _mm512_fmadd_ps(sz, _mm512_maskz_loadu_ps(m, a.gsum + g), zt);
    }
    y[r0 + k] = dot[k] - _mm512_reduce_add_ps(zt);
  }
}

// The OpenMP loop stays outside the target-attributed code: quads of rows, then the rest.
template <int B, bool kSplit>
void gemv_q8_avx512(const IntWeightView& v, const IntQ8Act& a, float* y) {
  constexpr int kQuad = 4;
  RowTables t;
  for (int j = 0; j < 64; ++j) {
    t.perm[j] = static_cast<int8_t>(B * (j / 8) + j % 8);
    t.ctrl[j] = static_cast<int8_t>(B * (j % 8));
  }
  const int64_t lanes_per_group = std::max<int64_t>(1, v.group / 4);
  for (int k = 0; k < 16; ++k) t.lane[k] = static_cast<int32_t>(std::min<int64_t>(15, k / lanes_per_group));
  const bool par = v.rows * v.cols >= kIntParallelMinWeights && !omp_in_parallel();
  const std::size_t nb = static_cast<std::size_t>((v.cols + kIntActBlock - 1) / kIntActBlock);
  const int64_t quads = v.rows / kQuad;
#pragma omp parallel if (par)
  {
    std::vector<float> bscale(kQuad * nb);
#pragma omp for schedule(static)
    for (int64_t q = 0; q < quads; ++q) rows_q8_avx512<B, kSplit, kQuad>(v, a, q * kQuad, t, bscale.data(), y);
#pragma omp single
    for (int64_t r = quads * kQuad; r < v.rows; ++r) rows_q8_avx512<B, kSplit, 1>(v, a, r, t, bscale.data(), y);
  }
}

template <int B>
void gemv_q8_avx512_bits(const IntWeightView& v, const IntQ8Act& a, float* y) {
  if (v.groups > 1 && v.group % kIntActBlock != 0)
    gemv_q8_avx512<B, true>(v, a, y);  // G = 16 or 32
  else
    gemv_q8_avx512<B, false>(v, a, y);
}

}  // namespace

bool int_q8_gemv_available() { return cpu_isa() >= CpuIsa::kAvx512; }

void int_q8_gemv_avx512(const IntWeightView& v, const IntQ8Act& a, float* y) {
  switch (v.bits) {
    case 2: return gemv_q8_avx512_bits<2>(v, a, y);
    case 3: return gemv_q8_avx512_bits<3>(v, a, y);
    case 4: return gemv_q8_avx512_bits<4>(v, a, y);
    default: return gemv_q8_avx512_bits<8>(v, a, y);
  }
}

void int_q8_gemv(const IntWeightView& v, const float* x, float* y) {
  const int64_t nb = (v.cols + kIntActBlock - 1) / kIntActBlock;
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> xs, gsum;
  thread_local std::vector<int32_t> xsum;
  q.resize(static_cast<std::size_t>(nb * kIntActBlock));
  xs.resize(static_cast<std::size_t>(nb));
  xsum.resize(static_cast<std::size_t>(nb));
  gsum.resize(static_cast<std::size_t>(v.groups));
  quantize_act_int8(x, v.cols, kIntActBlock, q.data(), xs.data(), xsum.data());
  int_prepare_act(v, q.data(), xs.data(), gsum.data());
  const IntQ8Act act{q.data(), xs.data(), gsum.data()};
  if (int_q8_gemv_available())
    int_q8_gemv_avx512(v, act, y);
  else
    int_q8_gemv_scalar(v, act, y);
}

}  // namespace mpq
