// int8 activation quantization (kernels/cpu/act_int8.h): scalar, AVX2 and AVX-512 paths
// doing the same fp32 operations in the same order, so their bytes agree exactly.
#include "kernels/cpu/act_int8.h"

#include <cmath>
#include <cstring>

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/simd.h"
#include "lib/common/error.h"  // MPQ_ASSERT

namespace mpq {
namespace {

void check(int64_t K, int B) {
  MPQ_ASSERT(K >= 0);
  MPQ_ASSERT(B >= 16 && B <= 4096 && B % 16 == 0);
}

// One block from its amax (finite, > 0) and the non-finite flag: scale and the multiplier.
inline void block_scale(float amax, bool nonfinite, float* scale, float* inv) {
  if (nonfinite) {
    *scale = std::nanf("");
    *inv = 0.0f;
  } else if (amax > 0.0f) {
    *scale = amax / 127.0f;
    *inv = 127.0f / amax;
  } else {
    *scale = 0.0f;
    *inv = 0.0f;
  }
}

}  // namespace

void quantize_act_int8_scalar(const float* x, int64_t K, int B, int8_t* q, float* scale, int32_t* sum) {
  check(K, B);
  const int64_t nb = (K + B - 1) / B;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t k0 = b * B, n = K - k0 < B ? K - k0 : B;
    float amax = 0.0f;
    bool nonfinite = false;
    for (int64_t i = 0; i < n; ++i) {
      const float a = std::fabs(x[k0 + i]);
      nonfinite |= !(a < INFINITY);
      amax = a > amax ? a : amax;
    }
    float inv = 0.0f;
    block_scale(amax, nonfinite, &scale[b], &inv);
    int32_t s = 0;
    for (int64_t i = 0; i < B; ++i) {
      int v = 0;
      if (i < n && !nonfinite) {
        v = static_cast<int>(std::nearbyint(x[k0 + i] * inv));
        v = v > 127 ? 127 : v < -127 ? -127 : v;
      }
      q[k0 + i] = static_cast<int8_t>(v);
      s += v;
    }
    sum[b] = s;
  }
}

MPQ_TARGET_AVX2 void quantize_act_int8_avx2(const float* x, int64_t K, int B, int8_t* q, float* scale,
                                            int32_t* sum) {
  check(K, B);
  const int64_t nb = (K + B - 1) / B;
  const __m256 sign = _mm256_set1_ps(-0.0f), inf = _mm256_set1_ps(INFINITY);
  alignas(32) float tmp[16];
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t k0 = b * B, n = K - k0 < B ? K - k0 : B;
    __m256 amax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    for (int64_t i = 0; i < B; i += 8) {
      __m256 v;
      if (i + 8 <= n) {
        v = _mm256_loadu_ps(x + k0 + i);
      } else {  // the block's tail (or padding): zeros past K
        std::memset(tmp, 0, sizeof tmp);
        if (i < n) std::memcpy(tmp, x + k0 + i, static_cast<std::size_t>(n - i) * sizeof(float));
        v = _mm256_load_ps(tmp);
      }
      const __m256 a = _mm256_andnot_ps(sign, v);
      bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ));
      amax = _mm256_max_ps(amax, a);  // a NaN lane is caught by `bad`
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    float inv = 0.0f;
    const bool nonfinite = _mm256_movemask_ps(bad) != 0;
    block_scale(_mm_cvtss_f32(m), nonfinite, &scale[b], &inv);
    if (nonfinite) {  // q 0 (x * 0 would be NaN for the bad lanes)
      std::memset(q + k0, 0, static_cast<std::size_t>(B));
      sum[b] = 0;
      continue;
    }
    const __m256 vinv = _mm256_set1_ps(inv);
    __m256i s = _mm256_setzero_si256();
    for (int64_t i = 0; i < B; i += 16) {
      __m256 v0, v1;
      if (i + 16 <= n) {
        v0 = _mm256_loadu_ps(x + k0 + i);
        v1 = _mm256_loadu_ps(x + k0 + i + 8);
      } else {
        std::memset(tmp, 0, sizeof tmp);
        if (i < n) std::memcpy(tmp, x + k0 + i, static_cast<std::size_t>(n - i) * sizeof(float));
        v0 = _mm256_load_ps(tmp);
        v1 = _mm256_load_ps(tmp + 8);
      }
      // cvtps: round to nearest even (the default MXCSR mode), as std::nearbyint.
      __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vinv));
      __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vinv));
      const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
      i0 = _mm256_min_epi32(_mm256_max_epi32(i0, lo), hi);
      i1 = _mm256_min_epi32(_mm256_max_epi32(i1, lo), hi);
      s = _mm256_add_epi32(s, _mm256_add_epi32(i0, i1));
      // 16 int32 -> 16 int8 (values already in range; packs keep the order after permute)
      const __m256i w16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(i0, i1), 0xD8);
      const __m128i b8 = _mm_packs_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k0 + i), b8);
    }
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
    sum[b] = _mm_cvtsi128_si32(t);
  }
}

MPQ_TARGET_AVX512 void quantize_act_int8_avx512(const float* x, int64_t K, int B, int8_t* q, float* scale,
                                                int32_t* sum) {
  check(K, B);
  const int64_t nb = (K + B - 1) / B;
  const __m512 inf = _mm512_set1_ps(INFINITY);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t k0 = b * B, n = K - k0 < B ? K - k0 : B;
    __m512 amax = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (int64_t i = 0; i < B; i += 16) {
      const int64_t left = n - i;
      const __mmask16 m = left >= 16 ? 0xFFFF : left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1);
      const __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(m, x + k0 + i));
      bad |= _mm512_cmp_ps_mask(a, inf, _CMP_NLT_UQ);
      amax = _mm512_max_ps(amax, a);
    }
    float inv = 0.0f;
    block_scale(_mm512_reduce_max_ps(amax), bad != 0, &scale[b], &inv);
    if (bad) {  // q 0 (x * 0 would be NaN for the bad lanes)
      std::memset(q + k0, 0, static_cast<std::size_t>(B));
      sum[b] = 0;
      continue;
    }
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    __m512i s = _mm512_setzero_si512();
    for (int64_t i = 0; i < B; i += 16) {
      const int64_t left = n - i;
      const __mmask16 m = left >= 16 ? 0xFFFF : left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1);
      __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + k0 + i), vinv));
      v = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
      s = _mm512_add_epi32(s, v);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k0 + i), _mm512_cvtsepi32_epi8(v));
    }
    sum[b] = _mm512_reduce_add_epi32(s);
  }
}

void quantize_act_int8(const float* x, int64_t K, int B, int8_t* q, float* scale, int32_t* sum) {
  const CpuIsa isa = cpu_isa();
  if (isa >= CpuIsa::kAvx512)
    quantize_act_int8_avx512(x, K, B, q, scale, sum);
  else if (isa >= CpuIsa::kAvx2)
    quantize_act_int8_avx2(x, K, B, q, scale, sum);
  else
    quantize_act_int8_scalar(x, K, B, q, scale, sum);
}

}  // namespace mpq
