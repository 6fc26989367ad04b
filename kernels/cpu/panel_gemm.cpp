// bf16 panel GEMM on AMX or AVX512_BF16 (kernels/cpu/panel_gemm.h).
#include "kernels/cpu/panel_gemm.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/simd.h"
#include "lib/common/error.h"
#include "lib/numeric/codecs.h"  // fp32_to_bf16

namespace mpq {
namespace {

constexpr int64_t kTokenStep = 32;                        // tokens per microkernel call
constexpr int64_t kRowStep = 32;                          // rows per microkernel call
constexpr int64_t kParallelMinMacs = int64_t{1} << 22;    // below: one thread

// Rows per block: as many as keep the panel (kp * nb bf16) within about 1 MiB of L2, since
// every block streams all of Xb once (T * kp bf16) -- but at least two blocks per thread
// when there are enough rows. A multiple of 32 in [32, 256].
inline int64_t block_rows(int64_t kp, int64_t rows, int64_t threads) {
  int64_t nb = (int64_t{1} << 20) / (2 * kp) / 32 * 32;
  const int64_t share = (rows + 2 * threads - 1) / (2 * threads) / 32 * 32;
  nb = std::min(nb, std::max<int64_t>(share, 32));
  return std::max<int64_t>(32, std::min<int64_t>(256, nb));
}

// ---------------------------------------------------------------- bf16 conversions -----

// fp32 bits -> bf16 bits, round to nearest even, NaN kept quiet (codecs.h fp32_to_bf16).
MPQ_TARGET_AVX512 inline __m256i rne_bf16x16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF),
                                                         _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  const __m512i out = _mm512_mask_or_epi32(_mm512_srli_epi32(r, 16), nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(out);
}

// One row t of the A tiles. (A separate function: Clang outlines an OpenMP region into a
// function without the enclosing target attribute, so no vector value may cross it.)
MPQ_TARGET_AVX512 void x_row_to_bf16_avx512(const float* X, int64_t T, int64_t cols, int64_t kp, uint16_t* Xb,
                                            int64_t t) {
  uint16_t* o = Xb + (t / 16) * (kp / 32) * 512 + (t % 16) * 32;  // A-tile layout (panel_gemm.h)
  for (int64_t c = 0; c < kp; c += 16) {
    const int64_t left = t < T ? cols - c : 0;
    const __mmask16 m = left >= 16 ? 0xFFFF : left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + (c / 32) * 512 + c % 32),
                        rne_bf16x16(_mm512_maskz_loadu_ps(m, X + t * cols + c)));
  }
}

void x_to_bf16_avx512(const float* X, int64_t T, int64_t cols, int64_t Tp, int64_t kp, uint16_t* Xb, bool par) {
#pragma omp parallel for schedule(static) if (par)
  for (int64_t t = 0; t < Tp; ++t) x_row_to_bf16_avx512(X, T, cols, kp, Xb, t);
}

// 16 x 16 transpose of 32-bit elements held in r[0..15] (row i = r[i]).
MPQ_TARGET_AVX512 inline void transpose16x16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // r[4q + s] now holds, in each 128-bit lane L, rows 4q .. 4q+3 of column 4L + s; gather
  // lane L of the four quads into column 4L + s.
  for (int i = 0; i < 4; ++i) {
    const __m512i a = r[i], b = r[4 + i], c = r[8 + i], d = r[12 + i];
    const __m512i ab_lo = _mm512_shuffle_i32x4(a, b, 0x44), ab_hi = _mm512_shuffle_i32x4(a, b, 0xEE);
    const __m512i cd_lo = _mm512_shuffle_i32x4(c, d, 0x44), cd_hi = _mm512_shuffle_i32x4(c, d, 0xEE);
    t[i] = _mm512_shuffle_i32x4(ab_lo, cd_lo, 0x88);       // lane 0 of a, b, c, d
    t[4 + i] = _mm512_shuffle_i32x4(ab_lo, cd_lo, 0xDD);   // lane 1
    t[8 + i] = _mm512_shuffle_i32x4(ab_hi, cd_hi, 0x88);   // lane 2
    t[12 + i] = _mm512_shuffle_i32x4(ab_hi, cd_hi, 0xDD);  // lane 3
  }
  for (int p = 0; p < 16; ++p) r[p] = t[p];  // t[p]: column p, rows 0..15
}

MPQ_TARGET_AVX512 void panel_from_rows_avx512(const float* src, int64_t n_valid, int64_t ld, int64_t n, int64_t kp,
                                              uint16_t* panel) {
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    for (int64_t c0 = 0; c0 < kp; c0 += 32) {
      __m512i r[16];
      for (int64_t i = 0; i < 16; ++i) {
        if (j0 + i < n_valid) {
          const float* s = src + (j0 + i) * ld + c0;
          const __m256i lo = rne_bf16x16(_mm512_loadu_ps(s)), hi = rne_bf16x16(_mm512_loadu_ps(s + 16));
          r[i] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);  // 16 column pairs of row j0 + i
        } else {
          r[i] = _mm512_setzero_si512();
        }
      }
      transpose16x16(r);  // r[p]: column pair c0/2 + p of rows j0 .. j0+15
      for (int64_t p = 0; p < 16; ++p) _mm512_storeu_si512(panel + panel_line(c0 / 2 + p, j0, n), r[p]);
    }
  }
}

// ---------------------------------------------------------------- microkernels --------

// The tile configuration (Intel SDM, LDTILECFG): palette 1; tiles 0..3: C (16 x 16 fp32),
// 4, 5: A (16 tokens x 32 bf16), 6, 7: B (16 column pairs x 16 rows x 2): 16 rows of 64
// bytes each. Bytes: 0 palette, 1 start row, 16..47 colsb (u16 per tile), 48..63 rows.
// Kept in static storage: GCC 12 dropped the stores into a stack copy before ldtilecfg.
struct alignas(64) TileConfig {
  uint8_t bytes[64];
};
constexpr TileConfig make_tile_config() {
  TileConfig c{};
  c.bytes[0] = 1;
  for (int i = 0; i < 8; ++i) {
    c.bytes[16 + 2 * i] = 64;  // colsb, little-endian u16
    c.bytes[48 + i] = 16;      // rows
  }
  return c;
}
alignas(64) const TileConfig kTileConfig = make_tile_config();

MPQ_TARGET_AMX void amx_configure() { _tile_loadconfig(&kTileConfig); }

MPQ_TARGET_AMX void amx_release() { _tile_release(); }

// C[32 tokens, 32 rows] (ldc floats) = Xb tokens t0 .. t0+32 (Xb points at their first A
// tile) * panel rows j0 .. j0+32. Every tile is contiguous: stride 64 bytes.
MPQ_TARGET_AMX void amx_tile_block(const uint16_t* Xb, int64_t kp, const uint16_t* panel, int64_t nb, int64_t j0,
                                   float* C, int64_t ldc) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int64_t ktiles = kp / 32;
  for (int64_t kt = 0; kt < ktiles; ++kt) {
    _tile_loadd(4, Xb + kt * 512, 64);
    _tile_loadd(5, Xb + (ktiles + kt) * 512, 64);
    const uint16_t* b = panel + (kt * (nb / 16) + j0 / 16) * 512;
    _tile_loadd(6, b, 64);
    _tile_loadd(7, b + 512, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, C, ldc * 4);
  _tile_stored(1, C + 16, ldc * 4);
  _tile_stored(2, C + 16 * ldc, ldc * 4);
  _tile_stored(3, C + 16 * ldc + 16, ldc * 4);
}

MPQ_TARGET_AVX512BF16 void bf16_tile_block(const uint16_t* Xb, int64_t kp, const uint16_t* panel, int64_t nb,
                                           int64_t j0, float* C, int64_t ldc) {
  const int64_t kq = kp / 2;
  for (int64_t t0 = 0; t0 < kTokenStep; t0 += 8) {
    __m512 acc[8][2];
    for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    // Token t0 + i of this 32-token block: A tile (t0 + i) / 16, row (t0 + i) % 16.
    const uint16_t* xt = Xb + (t0 / 16) * (kp / 32) * 512 + (t0 % 16) * 32;
    for (int64_t p = 0; p < kq; ++p) {
      const uint16_t* b = panel + panel_line(p, j0, nb);
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(b), w1 = (__m512bh)_mm512_loadu_si512(b + 512);
      const uint16_t* xp = xt + (p / 16) * 512 + 2 * (p % 16);
      for (int i = 0; i < 8; ++i) {
        int32_t xv;
        std::memcpy(&xv, xp + i * 32, 4);
        const __m512bh xb = (__m512bh)_mm512_set1_epi32(xv);
        acc[i][0] = _mm512_dpbf16_ps(acc[i][0], w0, xb);
        acc[i][1] = _mm512_dpbf16_ps(acc[i][1], w1, xb);
      }
    }
    for (int i = 0; i < 8; ++i) {
      _mm512_storeu_ps(C + (t0 + i) * ldc, acc[i][0]);
      _mm512_storeu_ps(C + (t0 + i) * ldc + 16, acc[i][1]);
    }
  }
}

// Y[t, j] = scale * C[t, j] for t < nt, j < nr (C has kRowStep columns, Y `ldy`).
MPQ_TARGET_AVX512 void write_block(const float* C, int64_t nt, int64_t nr, float scale, float* Y, int64_t ldy) {
  const __m512 s = _mm512_set1_ps(scale);
  const __mmask16 m0 = nr >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << nr) - 1);
  const __mmask16 m1 = nr >= 32 ? 0xFFFF : nr <= 16 ? 0 : static_cast<__mmask16>((1u << (nr - 16)) - 1);
  for (int64_t t = 0; t < nt; ++t) {
    _mm512_mask_storeu_ps(Y + t * ldy, m0, _mm512_mul_ps(s, _mm512_loadu_ps(C + t * kRowStep)));
    _mm512_mask_storeu_ps(Y + t * ldy + 16, m1, _mm512_mul_ps(s, _mm512_loadu_ps(C + t * kRowStep + 16)));
  }
}

}  // namespace

PanelKernel panel_kernel() {
  const CpuIsa isa = cpu_isa();
  if (isa >= CpuIsa::kAmx) return PanelKernel::kAmx;
  if (isa >= CpuIsa::kAvx512Bf16 && (cpu_features().bf16_dot_fast || cpu_isa_forced(CpuIsa::kAvx512Bf16)))
    return PanelKernel::kAvx512Bf16;
  return PanelKernel::kNone;
}

const char* panel_kernel_name(PanelKernel k) {
  switch (k) {
    case PanelKernel::kAmx: return "amx-bf16";
    case PanelKernel::kAvx512Bf16: return "avx512-bf16";
    default: return "none";
  }
}

void panel_from_rows_scalar(const float* src, int64_t n_valid, int64_t ld, int64_t n, int64_t kp, uint16_t* panel) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = 0; c < kp; ++c)
      panel[panel_index(c, j, n)] = j < n_valid ? fp32_to_bf16(src[j * ld + c]) : uint16_t{0};
}

void panel_from_rows(const float* src, int64_t n_valid, int64_t ld, int64_t n, int64_t kp, uint16_t* panel) {
  MPQ_ASSERT(n % 16 == 0 && kp % 32 == 0 && ld >= kp && n_valid <= n);
  if (cpu_isa() >= CpuIsa::kAvx512)
    panel_from_rows_avx512(src, n_valid, ld, n, kp, panel);
  else
    panel_from_rows_scalar(src, n_valid, ld, n, kp, panel);
}

void panel_gemm(int64_t rows, int64_t cols, const PanelDecoder& decode, float scale, const float* X, int64_t T,
                float* Y, PanelKernel kernel) {
  MPQ_ASSERT(kernel != PanelKernel::kNone && rows >= 0 && cols >= 0 && T >= 0);
  // (cpu_features() also makes the AMX permission request, once per process.)
  MPQ_ASSERT(kernel == PanelKernel::kAmx ? cpu_features().amx : cpu_features().avx512_bf16);
  if (rows == 0 || T == 0) return;
  const int64_t kp = std::max<int64_t>(32, panel_cols(cols));
  const int64_t Tp = (T + kTokenStep - 1) / kTokenStep * kTokenStep;
  const bool par = rows * cols * T >= kParallelMinMacs && !omp_in_parallel() && omp_get_max_threads() > 1;
  const int64_t nb = block_rows(kp, rows, par ? omp_get_max_threads() : 1);
  const int64_t nblk = (rows + nb - 1) / nb;
  std::vector<uint16_t> Xb(static_cast<std::size_t>(Tp * kp));
  x_to_bf16_avx512(X, T, cols, Tp, kp, Xb.data(), par);
#pragma omp parallel if (par && nblk > 1)
  {
    std::vector<uint16_t> panel(static_cast<std::size_t>(kp * nb));
    alignas(64) float C[kTokenStep * kRowStep];
    if (kernel == PanelKernel::kAmx) amx_configure();
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nblk; ++blk) {
      const int64_t r0 = blk * nb;
      decode(r0, nb, kp, panel.data());
      for (int64_t t0 = 0; t0 < Tp; t0 += kTokenStep) {
        for (int64_t j0 = 0; j0 < nb && r0 + j0 < rows; j0 += kRowStep) {
          if (kernel == PanelKernel::kAmx)
            amx_tile_block(Xb.data() + t0 * kp, kp, panel.data(), nb, j0, C, kRowStep);
          else
            bf16_tile_block(Xb.data() + t0 * kp, kp, panel.data(), nb, j0, C, kRowStep);  // (t0 / 16) * kp / 32 * 512 = t0 * kp
          const int64_t nt = std::min(kTokenStep, T - t0), nr = std::min(kRowStep, rows - r0 - j0);
          write_block(C, nt, nr, scale, Y + t0 * rows + r0 + j0, rows);
        }
      }
    }
    if (kernel == PanelKernel::kAmx) amx_release();
  }
}

}  // namespace mpq
