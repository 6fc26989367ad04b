// NVFP4 kernels (kernels/cpu/nvfp4_gemv.h): repack, int8-activation GEMV (scalar, AVX2,
// AVX-512 VNNI, identical results), fp32 row decoder and bf16 panel decoder.
#include "kernels/cpu/nvfp4_gemv.h"

#include <omp.h>  // omp_in_parallel

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/act_int8.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/group_streams.h"
#include "kernels/cpu/panel_gemm.h"  // the panel layout
#include "kernels/cpu/simd.h"
#include "lib/common/error.h"
#include "lib/numeric/codecs.h"  // e2m1_to_fp32, e4m3_to_fp32

namespace mpq {
namespace {

constexpr int64_t kGroup = 16;                          // rows per group
constexpr int64_t kBlock = 16;                          // columns per block
constexpr int64_t kBlockBytes = 128;                    // code bytes per (group, block)
constexpr int64_t kParallelMinWeights = int64_t{1} << 16;  // below: one thread

// u8 weight of a code: 12 + 2 * e2m1(code), so that w * xq sums are VNNI operands.
constexpr uint8_t kU8[16] = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};

// Code of (lane i, column 16b + c) from a group's block bytes.
inline int code_at(const uint8_t* blk, int64_t i, int64_t c) {
  const uint8_t byte = blk[(c >= 8 ? 64 : 0) + 4 * i + (c & 3)];
  return (c & 4) ? byte >> 4 : byte & 0xF;
}

inline float e4m3_div256(uint8_t s) { return e4m3_to_fp32(s) * 0.00390625f; }  // exact

// y for the groups [g0, g1) by `body(g)`: OpenMP for large tensors outside parallel regions.
inline bool gemv_parallel(const Nvfp4Packed& w) {
  return w.rows * w.cols >= kParallelMinWeights && w.groups > 1 && !omp_in_parallel();
}

template <typename Body>
void for_groups(const Nvfp4Packed& w, Body body) {
#pragma omp parallel for schedule(static) if (gemv_parallel(w))
  for (int64_t g = 0; g < w.groups; ++g) body(g);
}

// Stores the valid rows of one group's 16 outputs.
inline void store_group(const Nvfp4Packed& w, int64_t g, const float* v, float* y) {
  const int64_t n = std::min<int64_t>(kGroup, w.rows - g * kGroup);
  for (int64_t i = 0; i < n; ++i) y[g * kGroup + i] = v[i];
}

}  // namespace

Nvfp4Packed nvfp4_repack(const Nvfp4WeightView& v) {
  if (v.rows < 0 || v.cols < 0)
    throw Error(ExitCode::kUsage, "nvfp4_repack: negative shape [" + std::to_string(v.rows) + ", " +
                                      std::to_string(v.cols) + "]");
  if (!std::isfinite(v.scale_2)) throw Error(ExitCode::kInput, "NVFP4 weight_scale_2 is not finite");
  Nvfp4Packed p;
  p.rows = v.rows;
  p.cols = v.cols;
  p.nb = (v.cols + kBlock - 1) / kBlock;
  p.groups = (v.rows + kGroup - 1) / kGroup;
  p.scale_2 = v.scale_2;
  p.codes.assign(static_cast<std::size_t>(p.groups * p.nb * kBlockBytes), 0);
  p.scales.assign(static_cast<std::size_t>(p.groups * p.nb * kGroup), 0);
  const int64_t row_bytes = p.nb * 8;
  for (int64_t r = 0; r < v.rows; ++r) {
    const int64_t g = r / kGroup, i = r % kGroup;
    const uint8_t* src = v.weight + r * row_bytes;
    for (int64_t b = 0; b < p.nb; ++b) {
      const uint8_t s = v.weight_scale[r * p.nb + b];
      if ((s & 0x7F) == 0x7F)
        throw Error(ExitCode::kInput, "NVFP4 weight_scale[" + std::to_string(r) + ", " + std::to_string(b) +
                                          "] is the E4M3 NaN code");
      p.scales[static_cast<std::size_t>((g * p.nb + b) * kGroup + i)] = s;
      // The block's 16 codes as one little-endian u64: code n at bits 4n .. 4n+3.
      uint64_t u;
      std::memcpy(&u, src + b * 8, 8);
      uint8_t* blk = p.codes.data() + (g * p.nb + b) * kBlockBytes + 4 * i;
      for (int c = 0; c < 4; ++c) {
        blk[c] = static_cast<uint8_t>(((u >> (4 * c)) & 0xF) | (((u >> (4 * c + 16)) & 0xF) << 4));
        blk[64 + c] = static_cast<uint8_t>(((u >> (4 * c + 32)) & 0xF) | (((u >> (4 * c + 48)) & 0xF) << 4));
      }
    }
  }
  return p;
}

// ---------------------------------------------------------------- GEMV paths ----------

void nvfp4_gemv_q8_scalar(const Nvfp4Packed& w, const int8_t* q, const float* xs, const int32_t* xsum, float* y) {
  const float f = w.scale_2 * 128.0f;
  for_groups(w, [&](int64_t g) {
    float out[kGroup];
    for (int64_t i = 0; i < kGroup; ++i) {
      float acc = 0.0f;
      for (int64_t b = 0; b < w.nb; ++b) {
        const uint8_t* blk = w.codes.data() + (g * w.nb + b) * kBlockBytes;
        int32_t d = 0;
        for (int64_t c = 0; c < kBlock; ++c) d += kU8[code_at(blk, i, c)] * q[b * kBlock + c];
        d -= 12 * xsum[b];
        const float m = e4m3_div256(w.scales[static_cast<std::size_t>((g * w.nb + b) * kGroup + i)]) * xs[b];
        acc = std::fma(static_cast<float>(d), m, acc);
      }
      out[i] = acc * f;
    }
    store_group(w, g, out, y);
  });
}

namespace {

// The E4M3 bytes of 8 (AVX2) or 16 (AVX-512) lanes as fp16 bit patterns worth e4m3 / 256,
// exactly (sign-extended byte << 7 puts mantissa, exponent and sign in place; subnormals
// become fp16 subnormals): see kernels/cpu/fgmp_gemv.h.
MPQ_TARGET_AVX2 inline __m256 e4m3x8_div256(const uint8_t* s) {
  const __m128i h = _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s)));
  return _mm256_cvtph_ps(_mm_and_si128(_mm_slli_epi16(h, 7), _mm_set1_epi16(static_cast<short>(0xBF80))));
}

MPQ_TARGET_AVX512 inline __m512 e4m3x16_div256(const uint8_t* s) {
  const __m256i h = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
  return _mm512_cvtph_ps(_mm256_and_si256(_mm256_slli_epi16(h, 7), _mm256_set1_epi16(static_cast<short>(0xBF80))));
}

inline int32_t load_i32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Weight streams per thread of the AVX-512 and AVX2 GEMVs (kernels/cpu/group_streams.h).
constexpr int kStreams = kWeightStreams;

// AVX2: N groups g[0..N) in lockstep, each with exactly the arithmetic of a one-group walk;
// out [N * 16] (scaled by s2 * 128).
template <int N>
MPQ_TARGET_AVX2 void avx2_groups(const Nvfp4Packed& w, const int8_t* q, const float* xs, const int32_t* xsum,
                                 const int64_t* g, float* out) {
  const __m256i tbl = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kU8)));
  const __m256i lo4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  const __m256 f = _mm256_set1_ps(w.scale_2 * 128.0f);
  for (int h = 0; h < 2; ++h) {  // rows 0..7, 8..15 of the group: bytes [32h, 32h + 32) of each half block
    __m256 acc[N];
    for (int k = 0; k < N; ++k) acc[k] = _mm256_setzero_ps();
    for (int64_t b = 0; b < w.nb; ++b) {
      const int8_t* xb = q + b * kBlock;
      for (int k = 0; k < N; ++k) {
        const uint8_t* blk = w.codes.data() + (g[k] * w.nb + b) * kBlockBytes;
        const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 32 * h));
        const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 + 32 * h));
        const __m256i wa = _mm256_shuffle_epi8(tbl, _mm256_and_si256(v0, lo4));
        const __m256i wb = _mm256_shuffle_epi8(tbl, _mm256_and_si256(_mm256_srli_epi16(v0, 4), lo4));
        const __m256i wc = _mm256_shuffle_epi8(tbl, _mm256_and_si256(v1, lo4));
        const __m256i wd = _mm256_shuffle_epi8(tbl, _mm256_and_si256(_mm256_srli_epi16(v1, 4), lo4));
        // u8 (<= 24) * s8 pairs never saturate int16 (24 * 127 * 2 < 32767).
        __m256i d = _mm256_madd_epi16(_mm256_maddubs_epi16(wa, _mm256_set1_epi32(load_i32(xb))), ones);
        d = _mm256_add_epi32(d, _mm256_madd_epi16(_mm256_maddubs_epi16(wb, _mm256_set1_epi32(load_i32(xb + 4))), ones));
        d = _mm256_add_epi32(d, _mm256_madd_epi16(_mm256_maddubs_epi16(wc, _mm256_set1_epi32(load_i32(xb + 8))), ones));
        d = _mm256_add_epi32(d, _mm256_madd_epi16(_mm256_maddubs_epi16(wd, _mm256_set1_epi32(load_i32(xb + 12))), ones));
        d = _mm256_sub_epi32(d, _mm256_set1_epi32(12 * xsum[b]));
        const __m256 m = _mm256_mul_ps(e4m3x8_div256(w.scales.data() + (g[k] * w.nb + b) * kGroup + 8 * h),
                                       _mm256_set1_ps(xs[b]));
        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), m, acc[k]);
      }
    }
    for (int k = 0; k < N; ++k) _mm256_storeu_ps(out + kGroup * k + 8 * h, _mm256_mul_ps(acc[k], f));
  }
}

}  // namespace

MPQ_TARGET_AVX2 void nvfp4_gemv_q8_avx2(const Nvfp4Packed& w, const int8_t* q, const float* xs, const int32_t* xsum,
                                         float* y) {
  run_group_streams<kStreams, kGroup>(
      w.groups, gemv_parallel(w),
      [&](auto n, const int64_t* g, float* out) { avx2_groups<decltype(n)::value>(w, q, xs, xsum, g, out); },
      [&](int64_t g, const float* out) { store_group(w, g, out, y); });
}

namespace {

// N groups g[0..N) in lockstep (N concurrent code streams), each with exactly the
// arithmetic of a one-group walk; out [N * 16] (scaled by s2 * 128).
template <int N>
MPQ_TARGET_AVX512 void avx512_groups(const Nvfp4Packed& w, const int8_t* q, const float* xs, const int32_t* xsum,
                                     const int64_t* g, float* out) {
  const __m512i tbl = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kU8)));
  const __m512i lo4 = _mm512_set1_epi8(0x0F);
  const uint8_t* cg[N];
  const uint8_t* sg[N];
  __m512 acc[N];
  for (int k = 0; k < N; ++k) {
    cg[k] = w.codes.data() + g[k] * w.nb * kBlockBytes;
    sg[k] = w.scales.data() + g[k] * w.nb * kGroup;
    acc[k] = _mm512_setzero_ps();
  }
  for (int64_t b = 0; b < w.nb; ++b) {
    const int8_t* xb = q + b * kBlock;
    const __m512i x0 = _mm512_set1_epi32(load_i32(xb)), x1 = _mm512_set1_epi32(load_i32(xb + 4));
    const __m512i x2 = _mm512_set1_epi32(load_i32(xb + 8)), x3 = _mm512_set1_epi32(load_i32(xb + 12));
    const __m512i off = _mm512_set1_epi32(12 * xsum[b]);
    const __m512 xsb = _mm512_set1_ps(xs[b]);
    for (int k = 0; k < N; ++k) {
      const uint8_t* blk = cg[k] + b * kBlockBytes;
      // 16 KiB ahead (128 blocks): on the 7B preset's decode, 2 KiB ahead gave 4.78-5.07
      // tokens/s and 16 KiB 5.08-5.39 (A/B, same session). Prefetches never fault.
      _mm_prefetch(reinterpret_cast<const char*>(blk) + 16384, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(blk) + 16384 + 64, _MM_HINT_T0);
      const __m512i v0 = _mm512_loadu_si512(blk);
      const __m512i v1 = _mm512_loadu_si512(blk + 64);
      const __m512i wa = _mm512_shuffle_epi8(tbl, _mm512_and_si512(v0, lo4));
      const __m512i wb = _mm512_shuffle_epi8(tbl, _mm512_and_si512(_mm512_srli_epi16(v0, 4), lo4));
      const __m512i wc = _mm512_shuffle_epi8(tbl, _mm512_and_si512(v1, lo4));
      const __m512i wd = _mm512_shuffle_epi8(tbl, _mm512_and_si512(_mm512_srli_epi16(v1, 4), lo4));
      __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wa, x0);
      d = _mm512_dpbusd_epi32(d, wb, x1);
      d = _mm512_dpbusd_epi32(d, wc, x2);
      d = _mm512_dpbusd_epi32(d, wd, x3);
      d = _mm512_sub_epi32(d, off);
      const __m512 m = _mm512_mul_ps(e4m3x16_div256(sg[k] + b * kGroup), xsb);
      acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), m, acc[k]);
    }
  }
  const __m512 f = _mm512_set1_ps(w.scale_2 * 128.0f);
  for (int k = 0; k < N; ++k) _mm512_storeu_ps(out + kGroup * k, _mm512_mul_ps(acc[k], f));
}

}  // namespace

MPQ_TARGET_AVX512 void nvfp4_gemv_q8_avx512(const Nvfp4Packed& w, const int8_t* q, const float* xs,
                                             const int32_t* xsum, float* y) {
  run_group_streams<kStreams, kGroup>(
      w.groups, gemv_parallel(w),
      [&](auto n, const int64_t* g, float* out) { avx512_groups<decltype(n)::value>(w, q, xs, xsum, g, out); },
      [&](int64_t g, const float* out) { store_group(w, g, out, y); });
}

void nvfp4_gemv(const Nvfp4Packed& w, const float* x, float* y) {
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> xs;
  thread_local std::vector<int32_t> xsum;
  q.resize(static_cast<std::size_t>(w.nb * kBlock));
  xs.resize(static_cast<std::size_t>(w.nb));
  xsum.resize(static_cast<std::size_t>(w.nb));
  quantize_act_int8(x, w.cols, static_cast<int>(kBlock), q.data(), xs.data(), xsum.data());
  const CpuIsa isa = cpu_isa();
  if (isa >= CpuIsa::kAvx512)
    nvfp4_gemv_q8_avx512(w, q.data(), xs.data(), xsum.data(), y);
  else if (isa >= CpuIsa::kAvx2)
    nvfp4_gemv_q8_avx2(w, q.data(), xs.data(), xsum.data(), y);
  else
    nvfp4_gemv_q8_scalar(w, q.data(), xs.data(), xsum.data(), y);
}

// ---------------------------------------------------------------- decoders ------------

void nvfp4_decode_rows(const Nvfp4Packed& w, int64_t r0, int64_t n, float* out, int64_t ld) {
  MPQ_ASSERT(r0 >= 0 && n >= 0 && r0 + n <= w.rows && ld >= w.cols);
  float e2m1[16];
  for (int c = 0; c < 16; ++c) e2m1[c] = e2m1_to_fp32(static_cast<uint8_t>(c));
  for (int64_t j = 0; j < n; ++j) {
    const int64_t r = r0 + j, g = r / kGroup, i = r % kGroup;
    float* o = out + j * ld;
    for (int64_t b = 0; b < w.nb; ++b) {
      const uint8_t* blk = w.codes.data() + (g * w.nb + b) * kBlockBytes;
      const float s = e4m3_to_fp32(w.scales[static_cast<std::size_t>((g * w.nb + b) * kGroup + i)]);
      const int64_t nc = std::min<int64_t>(kBlock, w.cols - b * kBlock);
      if (nc == kBlock) {
        for (int64_t h = 0; h < 2; ++h) {  // columns 8h .. 8h+7: bytes 64h + 4i .. +3, both nibbles
          const uint8_t* q = blk + 64 * h + 4 * i;
          for (int c = 0; c < 4; ++c) {
            o[b * kBlock + 8 * h + c] = e2m1[q[c] & 0xF] * s * w.scale_2;
            o[b * kBlock + 8 * h + 4 + c] = e2m1[q[c] >> 4] * s * w.scale_2;
          }
        }
      } else {
        for (int64_t c = 0; c < nc; ++c) o[b * kBlock + c] = e2m1[code_at(blk, i, c)] * s * w.scale_2;
      }
    }
    std::fill(o + w.cols, o + ld, 0.0f);
  }
}

namespace {

inline uint16_t bf16_of_exact(float v) {  // truncation: v is exactly representable
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return static_cast<uint16_t>(u >> 16);
}

void check_panel(const Nvfp4Packed& w, int64_t r0, int64_t n, int64_t kp) {
  MPQ_ASSERT(r0 >= 0 && n >= 0 && r0 % kGroup == 0 && n % kGroup == 0);
  MPQ_ASSERT(kp % 32 == 0 && kp >= w.nb * kBlock);
}

}  // namespace

void nvfp4_decode_panel_scalar(const Nvfp4Packed& w, int64_t r0, int64_t n, int64_t kp, uint16_t* panel) {
  check_panel(w, r0, n, kp);
  std::memset(panel, 0, static_cast<std::size_t>(kp * n) * sizeof(uint16_t));
  for (int64_t j = 0; j < n; ++j) {
    const int64_t r = r0 + j, g = r / kGroup, i = r % kGroup;
    if (g >= w.groups) continue;
    for (int64_t b = 0; b < w.nb; ++b) {
      const uint8_t* blk = w.codes.data() + (g * w.nb + b) * kBlockBytes;
      const float s = e4m3_to_fp32(w.scales[static_cast<std::size_t>((g * w.nb + b) * kGroup + i)]);
      for (int64_t c = 0; c < kBlock; ++c) {
        const int64_t k = b * kBlock + c;
        panel[panel_index(k, j, n)] =
            bf16_of_exact(e2m1_to_fp32(static_cast<uint8_t>(code_at(blk, i, c))) * s);
      }
    }
  }
}

MPQ_TARGET_AVX512 void nvfp4_decode_panel_avx512(const Nvfp4Packed& w, int64_t r0, int64_t n, int64_t kp,
                                                  uint16_t* panel) {
  check_panel(w, r0, n, kp);
  alignas(64) float e2m1[16];
  for (int c = 0; c < 16; ++c) e2m1[c] = e2m1_to_fp32(static_cast<uint8_t>(c));
  const __m512 tbl = _mm512_load_ps(e2m1);
  const __m512 k256 = _mm512_set1_ps(256.0f);
  // Output word 2i: the high half of lane i of a (row i, column 2m); word 2i + 1: of b.
  alignas(64) uint16_t idx_w[32];
  for (int i = 0; i < 16; ++i) {
    idx_w[2 * i] = static_cast<uint16_t>(2 * i + 1);
    idx_w[2 * i + 1] = static_cast<uint16_t>(32 + 2 * i + 1);
  }
  const __m512i idx = _mm512_load_si512(idx_w);
  for (int64_t j0 = 0; j0 < n; j0 += kGroup) {
    const int64_t g = (r0 + j0) / kGroup;
    if (g >= w.groups) {
      for (int64_t kq = 0; kq < kp / 2; ++kq) std::memset(panel + panel_line(kq, j0, n), 0, 64);
      continue;
    }
    for (int64_t b = 0; b < w.nb; ++b) {
      const uint8_t* blk = w.codes.data() + (g * w.nb + b) * kBlockBytes;
      const __m512i v0 = _mm512_loadu_si512(blk), v1 = _mm512_loadu_si512(blk + 64);
      const __m512 sc = _mm512_mul_ps(e4m3x16_div256(w.scales.data() + (g * w.nb + b) * kGroup), k256);
      __m512 val[16];
      for (int c = 0; c < 16; ++c) {
        const __m512i src = c >= 8 ? v1 : v0;
        const int shift = 8 * (c & 3) + ((c & 4) ? 4 : 0);
        // vpermps reads the index's low 4 bits: the code.
        val[c] = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(src, static_cast<unsigned>(shift)), tbl), sc);
      }
      for (int m = 0; m < 8; ++m) {
        const __m512i pair = _mm512_permutex2var_epi16(_mm512_castps_si512(val[2 * m]), idx,
                                                       _mm512_castps_si512(val[2 * m + 1]));
        _mm512_storeu_si512(panel + panel_line(8 * b + m, j0, n), pair);
      }
    }
    for (int64_t kq = 8 * w.nb; kq < kp / 2; ++kq) std::memset(panel + panel_line(kq, j0, n), 0, 64);
  }
}

void nvfp4_decode_panel(const Nvfp4Packed& w, int64_t r0, int64_t n, int64_t kp, uint16_t* panel) {
  if (cpu_isa() >= CpuIsa::kAvx512)
    nvfp4_decode_panel_avx512(w, r0, n, kp, panel);
  else
    nvfp4_decode_panel_scalar(w, r0, n, kp, panel);
}

}  // namespace mpq
