// FP8 / bf16 / fp16 GEMV and decoders (kernels/cpu/dense_gemv.h).
#include "kernels/cpu/dense_gemv.h"

#include <omp.h>  // omp_in_parallel

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/simd.h"
#include "lib/common/error.h"
#include "lib/numeric/codecs.h"

namespace mpq {
namespace {

constexpr int64_t kRowBlock = 4;
constexpr int64_t kParallelMinWeights = int64_t{1} << 16;

inline std::size_t elem_bytes(DenseKind k) { return k == DenseKind::kFp8 ? 1 : 2; }

// Unscaled fp32 value of element i (fp8: e4m3). 16-bit elements are read at any address
// (safetensors does not align tensor data; the vector paths load unaligned too).
inline float elem(const DenseWeightView& w, int64_t i) {
  const uint8_t* b = static_cast<const uint8_t*>(w.data);
  switch (w.kind) {
    case DenseKind::kFp8: return e4m3_to_fp32(b[i]);
    case DenseKind::kBf16: return bf16_to_fp32(load_u16_le(b + 2 * i));
    default: return fp16_to_fp32(load_u16_le(b + 2 * i));
  }
}

// The factor the unscaled sums are multiplied with (fp8 paths sum e4m3 / 256 in vector code).
inline float row_factor(const DenseWeightView& w, bool div256) {
  return w.kind == DenseKind::kFp8 && div256 ? w.scale * 256.0f : w.scale;
}

template <typename Body>
void for_row_blocks(const DenseWeightView& w, Body body) {
  const int64_t nblk = (w.rows + kRowBlock - 1) / kRowBlock;
  const bool par = w.rows * w.cols >= kParallelMinWeights && nblk > 1 && !omp_in_parallel();
#pragma omp parallel for schedule(static) if (par)
  for (int64_t b = 0; b < nblk; ++b) body(b * kRowBlock, std::min(kRowBlock, w.rows - b * kRowBlock));
}

template <DenseKind K>
MPQ_TARGET_AVX512 inline __m512 load16(const void* base, int64_t i, __mmask16 m) {
  if constexpr (K == DenseKind::kFp8) {
    const __m128i b = _mm_maskz_loadu_epi8(m, static_cast<const uint8_t*>(base) + i);
    const __m256i h = _mm256_cvtepi8_epi16(b);
    return _mm512_cvtph_ps(_mm256_and_si256(_mm256_slli_epi16(h, 7), _mm256_set1_epi16(static_cast<short>(0xBF80))));
  } else if constexpr (K == DenseKind::kBf16) {
    const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + i);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + i));
  }
}

// N rows (1..4) of the block at r0: N is a template parameter so the accumulators stay in
// registers.
template <DenseKind K, int N>
MPQ_TARGET_AVX512 void avx512_rows_n(const DenseWeightView& w, int64_t r0, const float* x, float* y) {
  const int64_t C = w.cols;
  const int64_t eb = static_cast<int64_t>(elem_bytes(K));
  const uint8_t* base = static_cast<const uint8_t*>(w.data) + r0 * C * eb;
  __m512 acc[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= C; k += 16) {
    const __m512 xv = _mm512_loadu_ps(x + k);
    for (int i = 0; i < N; ++i) {
      const uint8_t* row = base + i * C * eb;
      _mm_prefetch(reinterpret_cast<const char*>(row + k * eb) + 1024, _MM_HINT_T0);
      acc[i] = _mm512_fmadd_ps(load16<K>(row, k, 0xFFFF), xv, acc[i]);
    }
  }
  if (k < C) {
    const __mmask16 m = static_cast<__mmask16>((1u << (C - k)) - 1);
    const __m512 xv = _mm512_maskz_loadu_ps(m, x + k);
    for (int i = 0; i < N; ++i) acc[i] = _mm512_fmadd_ps(load16<K>(base + i * C * eb, k, m), xv, acc[i]);
  }
  const float f = row_factor(w, true);
  for (int i = 0; i < N; ++i) y[r0 + i] = _mm512_reduce_add_ps(acc[i]) * f;
}

template <DenseKind K>
void avx512_rows(const DenseWeightView& w, int64_t r0, int64_t n, const float* x, float* y) {
  switch (n) {
    case 4: return avx512_rows_n<K, 4>(w, r0, x, y);
    case 3: return avx512_rows_n<K, 3>(w, r0, x, y);
    case 2: return avx512_rows_n<K, 2>(w, r0, x, y);
    default: return avx512_rows_n<K, 1>(w, r0, x, y);
  }
}

template <DenseKind K>
MPQ_TARGET_AVX2 inline __m256 load8(const void* base, int64_t i) {
  if constexpr (K == DenseKind::kFp8) {
    const __m128i h = _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const uint8_t*>(base) + i)));
    return _mm256_cvtph_ps(_mm_and_si128(_mm_slli_epi16(h, 7), _mm_set1_epi16(static_cast<short>(0xBF80))));
  } else if constexpr (K == DenseKind::kBf16) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i)));
  }
}

MPQ_TARGET_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <DenseKind K, int N>
MPQ_TARGET_AVX2 void avx2_rows_n(const DenseWeightView& w, int64_t r0, const float* x, float* y) {
  const int64_t C = w.cols, C8 = C / 8 * 8;
  const int64_t eb = static_cast<int64_t>(elem_bytes(K));
  const uint8_t* base = static_cast<const uint8_t*>(w.data) + r0 * C * eb;
  __m256 acc[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < C8; k += 8) {
    const __m256 xv = _mm256_loadu_ps(x + k);
    for (int i = 0; i < N; ++i) acc[i] = _mm256_fmadd_ps(load8<K>(base + i * C * eb, k), xv, acc[i]);
  }
  for (int i = 0; i < N; ++i) {
    float s = hsum8(acc[i]);
    if (K == DenseKind::kFp8) s *= 256.0f;  // the vector sums are in units of e4m3 / 256
    for (int64_t k = C8; k < C; ++k) s += elem(w, (r0 + i) * C + k) * x[k];
    y[r0 + i] = s * w.scale;
  }
}

template <DenseKind K>
void avx2_rows(const DenseWeightView& w, int64_t r0, int64_t n, const float* x, float* y) {
  switch (n) {
    case 4: return avx2_rows_n<K, 4>(w, r0, x, y);
    case 3: return avx2_rows_n<K, 3>(w, r0, x, y);
    case 2: return avx2_rows_n<K, 2>(w, r0, x, y);
    default: return avx2_rows_n<K, 1>(w, r0, x, y);
  }
}

// ------------------------------------------------------- FP8 on bf16 activations -----

// E4M3 magnitude (code & 0x7F) -> the high and low byte of its bf16 bit pattern, exact:
// every E4M3 value, subnormals included (m * 2^-9), is a normal bf16 number.
struct Fp8Bf16Tables {
  alignas(64) uint8_t hi[128];
  alignas(64) uint8_t lo[128];
};

const Fp8Bf16Tables& fp8_bf16_tables() {
  static const Fp8Bf16Tables t = [] {
    Fp8Bf16Tables r{};
    for (int c = 0; c < 128; ++c) {
      const uint16_t b = c == 0x7F ? 0 : fp32_to_bf16(e4m3_to_fp32(static_cast<uint8_t>(c)));  // 0x7F: NaN, rejected at load
      r.hi[c] = static_cast<uint8_t>(b >> 8);
      r.lo[c] = static_cast<uint8_t>(b & 0xFF);
    }
    return r;
  }();
  return t;
}

constexpr int64_t kFp8Chunk = 64;

// N rows (1..4) at r0. xb: the activations as bf16 in the unpack order of each 64-column
// chunk (dense_gemv_fp8_bf16 below): words [0, 32) pair with unpacklo_epi8(L, H), words
// [32, 64) with unpackhi_epi8(L, H).
template <int N>
MPQ_TARGET_AVX512BF16 void fp8_bf16_rows_n(const DenseWeightView& w, int64_t r0, const uint16_t* xb, float* y) {
  const int64_t C = w.cols, chunks = (C + kFp8Chunk - 1) / kFp8Chunk;
  const uint8_t* base = static_cast<const uint8_t*>(w.data) + r0 * C;
  const Fp8Bf16Tables& t = fp8_bf16_tables();
  const __m512i h0 = _mm512_load_si512(t.hi), h1 = _mm512_load_si512(t.hi + 64);
  const __m512i l0 = _mm512_load_si512(t.lo), l1 = _mm512_load_si512(t.lo + 64);
  const __m512i sign = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512 acc[N][2];
  for (int i = 0; i < N; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t k = c * kFp8Chunk, left = C - k;
    const __mmask64 m = left >= 64 ? ~__mmask64{0} : (__mmask64{1} << left) - 1;
    const __m512bh x0 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(xb + k));
    const __m512bh x1 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(xb + k + 32));
    for (int i = 0; i < N; ++i) {
      const uint8_t* row = base + i * C + k;
      _mm_prefetch(reinterpret_cast<const char*>(row) + N * C, _MM_HINT_T0);  // the next row block
      const __m512i code = _mm512_maskz_loadu_epi8(m, row);
      // hi | (code & 0x80): ternary logic A | (B & C) = 0xF8
      const __m512i hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(h0, code, h1), code, sign, 0xF8);
      const __m512i lo = _mm512_permutex2var_epi8(l0, code, l1);
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], reinterpret_cast<__m512bh>(_mm512_unpacklo_epi8(lo, hi)), x0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], reinterpret_cast<__m512bh>(_mm512_unpackhi_epi8(lo, hi)), x1);
    }
  }
  for (int i = 0; i < N; ++i) y[r0 + i] = _mm512_reduce_add_ps(_mm512_add_ps(acc[i][0], acc[i][1])) * w.scale;
}

// x [C] fp32 -> xb [chunks * 64] bf16 (RNE) in the unpack order of fp8_bf16_rows_n, zero
// past C: per chunk, word p of the low half is column 16 (p / 8) + p % 8, of the high half
// column 16 (p / 8) + 8 + p % 8.
MPQ_TARGET_AVX512BF16 void fp8_bf16_prepare_x(const float* x, int64_t C, uint16_t* xb) {
  alignas(64) uint16_t idx[64];
  for (int p = 0; p < 32; ++p) {
    idx[p] = static_cast<uint16_t>(16 * (p / 8) + p % 8);
    idx[32 + p] = static_cast<uint16_t>(16 * (p / 8) + 8 + p % 8);
  }
  const __m512i i0 = _mm512_load_si512(idx), i1 = _mm512_load_si512(idx + 32);
  for (int64_t k = 0; k < C; k += kFp8Chunk) {
    __m512 v[4];
    for (int q = 0; q < 4; ++q) {
      const int64_t left = C - k - 16 * q;
      const __mmask16 m = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                                     : (left <= 0 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << left) - 1));
      v[q] = _mm512_maskz_loadu_ps(m, x + k + 16 * q);
    }
    const __m512i lo = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(v[1], v[0]));  // columns 0..31
    const __m512i hi = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(v[3], v[2]));  // columns 32..63
    _mm512_storeu_si512(xb + k, _mm512_permutex2var_epi16(lo, i0, hi));
    _mm512_storeu_si512(xb + k + 32, _mm512_permutex2var_epi16(lo, i1, hi));
  }
}

void fp8_bf16_rows(const DenseWeightView& w, int64_t r0, int64_t n, const uint16_t* xb, float* y) {
  switch (n) {
    case 4: return fp8_bf16_rows_n<4>(w, r0, xb, y);
    case 3: return fp8_bf16_rows_n<3>(w, r0, xb, y);
    case 2: return fp8_bf16_rows_n<2>(w, r0, xb, y);
    default: return fp8_bf16_rows_n<1>(w, r0, xb, y);
  }
}

}  // namespace

void dense_gemv_fp8_bf16(const DenseWeightView& w, const float* x, float* y) {
  MPQ_ASSERT(w.kind == DenseKind::kFp8);
  const int64_t C = w.cols, chunks = (C + kFp8Chunk - 1) / kFp8Chunk;
  thread_local std::vector<uint16_t> xb_buf;
  xb_buf.resize(static_cast<std::size_t>(chunks * kFp8Chunk));
  uint16_t* xb = xb_buf.data();  // this thread's buffer: thread_local is not captured below
  fp8_bf16_prepare_x(x, C, xb);
  for_row_blocks(w, [&](int64_t r0, int64_t n) { fp8_bf16_rows(w, r0, n, xb, y); });
}

bool dense_gemv_fp8_bf16_available() { return cpu_isa() >= CpuIsa::kAvx512Bf16; }

void dense_check(const DenseWeightView& w, const std::string& where) {
  if (w.rows < 0 || w.cols < 0) throw_input(where, "negative shape");
  if (!std::isfinite(w.scale)) throw_input(where, "weight_scale is not finite");
  if (w.kind != DenseKind::kFp8) return;
  const uint8_t* b = static_cast<const uint8_t*>(w.data);
  const int64_t n = w.rows * w.cols;
  for (int64_t i = 0; i < n; ++i)
    if ((b[i] & 0x7F) == 0x7F)
      throw_input(where, "FP8 weight[" + std::to_string(i / w.cols) + ", " + std::to_string(i % w.cols) +
                             "] is the E4M3 NaN code");
}

void dense_gemv_scalar(const DenseWeightView& w, const float* x, float* y) {
  for_row_blocks(w, [&](int64_t r0, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      float s0 = 0.0f, s1 = 0.0f;
      const int64_t base = (r0 + i) * w.cols;
      int64_t k = 0;
      for (; k + 2 <= w.cols; k += 2) {
        s0 += elem(w, base + k) * x[k];
        s1 += elem(w, base + k + 1) * x[k + 1];
      }
      if (k < w.cols) s0 += elem(w, base + k) * x[k];
      y[r0 + i] = (s0 + s1) * w.scale;
    }
  });
}

void dense_gemv_avx2(const DenseWeightView& w, const float* x, float* y) {
  for_row_blocks(w, [&](int64_t r0, int64_t n) {
    switch (w.kind) {
      case DenseKind::kFp8: avx2_rows<DenseKind::kFp8>(w, r0, n, x, y); break;
      case DenseKind::kBf16: avx2_rows<DenseKind::kBf16>(w, r0, n, x, y); break;
      default: avx2_rows<DenseKind::kF16>(w, r0, n, x, y); break;
    }
  });
}

void dense_gemv_avx512(const DenseWeightView& w, const float* x, float* y) {
  for_row_blocks(w, [&](int64_t r0, int64_t n) {
    switch (w.kind) {
      case DenseKind::kFp8: avx512_rows<DenseKind::kFp8>(w, r0, n, x, y); break;
      case DenseKind::kBf16: avx512_rows<DenseKind::kBf16>(w, r0, n, x, y); break;
      default: avx512_rows<DenseKind::kF16>(w, r0, n, x, y); break;
    }
  });
}

void dense_gemv(const DenseWeightView& w, const float* x, float* y) {
  const CpuIsa isa = cpu_isa();
  if (isa >= CpuIsa::kAvx512)
    dense_gemv_avx512(w, x, y);
  else if (isa >= CpuIsa::kAvx2)
    dense_gemv_avx2(w, x, y);
  else
    dense_gemv_scalar(w, x, y);
}

void dense_decode_rows(const DenseWeightView& w, int64_t r0, int64_t n, float* out, int64_t ld, bool with_scale) {
  MPQ_ASSERT(r0 >= 0 && n >= 0 && r0 + n <= w.rows && ld >= w.cols);
  const bool scaled = with_scale && w.scale != 1.0f;
  for (int64_t j = 0; j < n; ++j) {
    float* o = out + j * ld;
    const int64_t base = (r0 + j) * w.cols;
    for (int64_t c = 0; c < w.cols; ++c) o[c] = scaled ? elem(w, base + c) * w.scale : elem(w, base + c);
    std::fill(o + w.cols, o + ld, 0.0f);
  }
}

void dense_row_f32(const DenseWeightView& w, int64_t r, float* out) {
  dense_decode_rows(w, r, 1, out, w.cols, true);
}

}  // namespace mpq
