// SqueezeLLM int8 kernels (kernels/cpu/lut_vnni.h): repack, GEMV on int8 activations
// (scalar, AVX2, AVX-512 VNNI; identical dense part), exact fp32 row decoder.
#include "kernels/cpu/lut_vnni.h"

#include <omp.h>  // omp_in_parallel

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/act_int8.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/group_streams.h"
#include "kernels/cpu/simd.h"
#include "lib/common/error.h"
#include "lib/numeric/codecs.h"  // fp16_to_fp32

namespace mpq {
namespace {

constexpr int64_t kRows = 4;    // rows per group
constexpr int64_t kUnit = 16;   // columns per unit
constexpr int64_t kUnitsPerBlock = kLutActBlock / kUnit;
constexpr int64_t kParallelMinWeights = int64_t{1} << 16;

// Bytes of a block of 4 units (256 codes): 4-bit two 64-byte chunks; 3-bit the 64-byte
// low-bit plane and four u64 high-bit planes; 2-bit the low-bit plane.
inline int64_t block_bytes(int bits) { return bits == 4 ? 128 : bits == 3 ? 96 : 64; }

// Offset of the bytes holding unit u in a group: 4-bit its 64-byte chunk (unit 2p in the
// low nibbles, 2p + 1 in the high ones); 2/3-bit its block.
inline int64_t unit_offset(int bits, int64_t u) { return bits == 4 ? (u / 2) * 64 : (u / kUnitsPerBlock) * block_bytes(bits); }

int64_t group_bytes(int bits, int64_t units) {
  return bits == 4 ? (units + 1) / 2 * 64 : (units + kUnitsPerBlock - 1) / kUnitsPerBlock * block_bytes(bits);
}

// Whether a GEMV over w runs on the OpenMP threads (large tensors, outside parallel regions).
inline bool gemv_parallel(const LutPacked& w) {
  return w.rows * w.cols >= kParallelMinWeights && w.groups > 1 && !omp_in_parallel();
}

template <typename Body>
void for_groups(const LutPacked& w, Body body) {
#pragma omp parallel for schedule(static) if (gemv_parallel(w))
  for (int64_t g = 0; g < w.groups; ++g) body(g);
}

inline int64_t col_at(const LutPacked& w, int64_t e) { return w.col32.empty() ? w.col16[e] : w.col32[e]; }

// CSR part of row r with fp32 x, in entry order.
inline float sparse_dot_scalar(const LutPacked& w, int64_t r, const float* x) {
  if (w.rowptr.empty()) return 0.0f;
  float s = 0.0f;
  for (int64_t e = w.rowptr[r]; e < w.rowptr[r + 1]; ++e) s += fp16_to_fp32(w.val_f16[e]) * x[col_at(w, e)];
  return s;
}

// The group's 4 row results from the 16 lane accumulators.
inline void finish_group(const LutPacked& w, int64_t g, const float* acc, const float* x, float* y,
                         float (*sparse)(const LutPacked&, int64_t, const float*)) {
  for (int64_t L = 0; L < kRows; ++L) {
    const int64_t r = g * kRows + L;
    if (r >= w.rows) break;
    const float* a = acc + 4 * L;
    y[r] = ((a[0] + a[1]) + (a[2] + a[3])) * w.lut_scale[r] + sparse(w, r, x);
  }
}

}  // namespace

std::size_t LutPacked::bytes() const {
  return codes.size() + lut_i8.size() + lut_scale.size() * sizeof(float) + rowptr.size() * sizeof(int32_t) +
         col16.size() * sizeof(int16_t) + col32.size() * sizeof(int32_t) + val_f16.size() * sizeof(uint16_t);
}

int lut_packed_code(const LutPacked& w, int64_t r, int64_t c) {
  const int64_t g = r / kRows, L = r % kRows, u = c / kUnit, j = c % kUnit;
  const uint8_t* base = w.codes.data() + g * w.group_bytes + unit_offset(w.bits, u);
  if (w.bits == 4) return (u % 2) ? base[16 * L + j] >> 4 : base[16 * L + j] & 0xF;
  const int64_t i = u % kUnitsPerBlock;
  int code = (base[16 * L + j] >> (2 * i)) & 3;
  if (w.bits == 3) code |= ((base[64 + 8 * i + (16 * L + j) / 8] >> ((16 * L + j) % 8)) & 1) << 2;
  return code;
}

LutPacked lut_repack(const LutWeightView& v) {
  if (v.bits < 2 || v.bits > 4 || v.rows < 0 || v.cols < 0)
    throw Error(ExitCode::kUsage, "lut_repack: bad view (bits " + std::to_string(v.bits) + ", shape [" +
                                      std::to_string(v.rows) + ", " + std::to_string(v.cols) + "])");
  LutPacked p;
  p.bits = v.bits;
  p.rows = v.rows;
  p.cols = v.cols;
  p.units = (v.cols + kUnit - 1) / kUnit;
  p.groups = (v.rows + kRows - 1) / kRows;
  p.group_bytes = group_bytes(v.bits, p.units);
  p.codes.assign(static_cast<std::size_t>(p.groups * p.group_bytes), 0);
  p.lut_i8.assign(static_cast<std::size_t>(p.groups * kRows * 16), 0);
  p.lut_scale.assign(static_cast<std::size_t>(p.groups * kRows), 0.0f);
  const int k = 1 << v.bits;
  p.lut_f16.assign(v.lut_f16, v.lut_f16 + v.rows * k);
  const int64_t rb = (v.cols + 7) / 8 * v.bits;
  for (int64_t r = 0; r < v.rows; ++r) {
    float amax = 0.0f;
    for (int i = 0; i < k; ++i) {
      const float c = fp16_to_fp32(v.lut_f16[r * k + i]);
      if (!std::isfinite(c))
        throw Error(ExitCode::kInput, "squeezellm lookup_table row " + std::to_string(r) + " entry " +
                                          std::to_string(i) + " is not finite");
      amax = std::max(amax, std::fabs(c));
    }
    if (amax > 0.0f) {
      const float inv = 127.0f / amax;
      p.lut_scale[r] = amax / 127.0f;
      for (int i = 0; i < k; ++i)
        p.lut_i8[r * 16 + i] = static_cast<int8_t>(std::nearbyint(fp16_to_fp32(v.lut_f16[r * k + i]) * inv));
    }
  }
  // Codes: each row's indices unpacked (groups of 8 indices from b bytes), then written into
  // its lane of the group's units.
  std::vector<uint8_t> idx(static_cast<std::size_t>(p.units * kUnit));
  for (int64_t r = 0; r < v.rows; ++r) {
    const uint8_t* row = v.qweight + r * rb;
    for (int64_t g8 = 0; g8 * 8 < v.cols; ++g8) {  // index j: bits [j*b, j*b + b) of the row, LSB first
      uint32_t word = 0;
      for (int t = 0; t < v.bits; ++t) word |= static_cast<uint32_t>(row[g8 * v.bits + t]) << (8 * t);
      for (int e = 0; e < 8; ++e) idx[static_cast<std::size_t>(g8 * 8 + e)] = static_cast<uint8_t>((word >> (e * v.bits)) & ((1u << v.bits) - 1));
    }
    std::fill(idx.begin() + v.cols, idx.end(), uint8_t{0});  // padding columns: code 0
    const int64_t g = r / kRows, L = r % kRows;
    uint8_t* gbase = p.codes.data() + g * p.group_bytes;
    for (int64_t u = 0; u < p.units; ++u) {
      const uint8_t* iu = idx.data() + u * kUnit;
      uint8_t* base = gbase + unit_offset(p.bits, u);
      if (p.bits == 4) {
        for (int j = 0; j < 16; ++j) base[16 * L + j] |= static_cast<uint8_t>((u % 2) ? iu[j] << 4 : iu[j]);
      } else {
        const int64_t i = u % kUnitsPerBlock;
        uint32_t hi = 0;
        for (int j = 0; j < 16; ++j) {
          base[16 * L + j] |= static_cast<uint8_t>((iu[j] & 3) << (2 * i));
          hi |= static_cast<uint32_t>((iu[j] >> 2) & 1) << j;
        }
        if (p.bits == 3) {
          base[64 + 8 * i + 2 * L] |= static_cast<uint8_t>(hi & 0xFF);
          base[64 + 8 * i + 2 * L + 1] |= static_cast<uint8_t>(hi >> 8);
        }
      }
    }
  }
  if (v.rowptr) {
    const int64_t nnz = v.rowptr[v.rows];
    p.rowptr.assign(v.rowptr, v.rowptr + v.rows + 1);
    p.val_f16.assign(v.val_f16, v.val_f16 + nnz);
    if (v.col_is_i16) {
      const int16_t* c = static_cast<const int16_t*>(v.col);
      p.col16.assign(c, c + nnz);
    } else {
      const int32_t* c = static_cast<const int32_t*>(v.col);
      p.col32.assign(c, c + nnz);
    }
    for (int64_t e = 0; e < nnz; ++e)
      if (!std::isfinite(fp16_to_fp32(p.val_f16[e])))
        throw Error(ExitCode::kInput, "squeezellm sparse_val[" + std::to_string(e) + "] is not finite");
  }
  return p;
}

void lut_prepare_act(const int8_t* q, int64_t nblocks, int8_t* q4, int32_t* corr) {
  for (int64_t u = 0; u < nblocks * kUnitsPerBlock; ++u)
    for (int64_t L = 0; L < kRows; ++L) std::memcpy(q4 + u * 64 + L * 16, q + u * kUnit, kUnit);
  for (int64_t a = 0; a < nblocks; ++a)
    for (int m = 0; m < 4; ++m) {
      int32_t s = 0;
      for (int64_t u = 0; u < kUnitsPerBlock; ++u)
        for (int e = 0; e < 4; ++e) s += q[a * kLutActBlock + u * kUnit + 4 * m + e];
      for (int64_t L = 0; L < kRows; ++L) corr[16 * a + 4 * L + m] = 128 * s;
    }
}

// ---------------------------------------------------------------- GEMV paths ----------

void lut_q8_gemv_scalar(const LutPacked& w, const LutQ8Act& act, float* y) {
  const int64_t nblocks = (w.units + kUnitsPerBlock - 1) / kUnitsPerBlock;
  for_groups(w, [&](int64_t g) {
    float acc[16] = {0};
    for (int64_t a = 0; a < nblocks; ++a) {
      const int64_t u1 = std::min(w.units, (a + 1) * kUnitsPerBlock);
      for (int64_t L = 0; L < kRows; ++L) {
        const int8_t* tab = w.lut_i8.data() + (g * kRows + L) * 16;
        for (int m = 0; m < 4; ++m) {
          int32_t d = 0;
          for (int64_t u = a * kUnitsPerBlock; u < u1; ++u)
            for (int e = 0; e < 4; ++e) {
              const int64_t c = u * kUnit + 4 * m + e;
              // padding columns hold code 0 and meet xq 0
              const int code = c < w.cols ? lut_packed_code(w, g * kRows + L, c) : 0;
              d += tab[code] * act.q[c];
            }
          acc[4 * L + m] = std::fma(static_cast<float>(d), act.scale[a], acc[4 * L + m]);
        }
      }
    }
    finish_group(w, g, acc, act.x, y, sparse_dot_scalar);
  });
}

namespace {

// AVX2: the codes of unit u for lanes {2h, 2h + 1} as bytes (one row per 128-bit lane).
template <int B>
MPQ_TARGET_AVX2 inline __m256i avx2_unit_codes(const uint8_t* gbase, int64_t u, int h) {
  if constexpr (B == 4) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(gbase + (u / 2) * 64 + 32 * h));
    const __m256i lo4 = _mm256_set1_epi8(0x0F);
    return (u % 2) ? _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4) : _mm256_and_si256(v, lo4);
  } else {
    const uint8_t* p = gbase + unit_offset(B, u);
    const int i = static_cast<int>(u % kUnitsPerBlock);
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * h));
    __m256i code = _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * i)), _mm256_set1_epi8(0x03));
    if constexpr (B == 3) {
      // Bits 32h .. 32h+31 of the unit's u64: bit 16L' + j for the local lanes L' = 0, 1.
      uint32_t bits;
      std::memcpy(&bits, p + 64 + 8 * i + 4 * h, 4);
      const __m256i bb = _mm256_set1_epi32(static_cast<int>(bits));
      const __m256i rep = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                           2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
      const __m256i sel = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ull));
      const __m256i hit = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(bb, rep), sel), sel);
      code = _mm256_or_si256(code, _mm256_and_si256(hit, _mm256_set1_epi8(4)));
    }
    return code;
  }
}

// N groups g[0..N) in lockstep (kernels/cpu/group_streams.h), each with exactly the
// arithmetic of a one-group walk; acc [N * 16].
template <int B, int N>
MPQ_TARGET_AVX2 void avx2_groups(const LutPacked& w, const LutQ8Act& act, const int64_t* g, float* acc) {
  const int64_t nblocks = (w.units + kUnitsPerBlock - 1) / kUnitsPerBlock;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int h = 0; h < 2; ++h) {  // lanes {2h, 2h + 1}: rows 4g + 2h, 4g + 2h + 1
    __m256i tab[N];
    __m256 sum[N];
    for (int k = 0; k < N; ++k) {
      tab[k] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.lut_i8.data() + (g[k] * kRows + 2 * h) * 16));
      sum[k] = _mm256_setzero_ps();
    }
    for (int64_t a = 0; a < nblocks; ++a) {
      const int64_t u1 = std::min(w.units, (a + 1) * kUnitsPerBlock);
      const __m256 xs = _mm256_set1_ps(act.scale[a]);
      for (int k = 0; k < N; ++k) {
        const uint8_t* gbase = w.codes.data() + g[k] * w.group_bytes;
        __m256i d = _mm256_setzero_si256();
        for (int64_t u = a * kUnitsPerBlock; u < u1; ++u) {
          const __m256i xr = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(act.q4 + u * 64));
          const __m256i wq = _mm256_shuffle_epi8(tab[k], avx2_unit_codes<B>(gbase, u, h));
          // |x| * (w with x's sign): u8 * s8 pairs never saturate int16 (127 * 127 * 2 < 32767).
          const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(xr), _mm256_sign_epi8(wq, xr));
          d = _mm256_add_epi32(d, _mm256_madd_epi16(p, ones));
        }
        sum[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), xs, sum[k]);
      }
    }
    for (int k = 0; k < N; ++k) _mm256_storeu_ps(acc + 16 * k + 8 * h, sum[k]);
  }
}

MPQ_TARGET_AVX2 float sparse_dot_avx2(const LutPacked& w, int64_t r, const float* x) {
  if (w.rowptr.empty()) return 0.0f;
  const int64_t e1 = w.rowptr[r + 1];
  int64_t e = w.rowptr[r];
  __m256 acc = _mm256_setzero_ps();
  for (; e + 8 <= e1; e += 8) {
    const __m256i idx = w.col32.empty()
                            ? _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.col16.data() + e)))
                            : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.col32.data() + e));
    const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.val_f16.data() + e)));
    acc = _mm256_fmadd_ps(v, _mm256_i32gather_ps(x, idx, 4), acc);
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, acc);
  float s = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
  for (; e < e1; ++e) s += fp16_to_fp32(w.val_f16[e]) * x[col_at(w, e)];
  return s;
}

// AVX-512: the 64 codes of unit u (one row per 128-bit lane) as bytes.
template <int B>
MPQ_TARGET_AVX512 inline __m512i avx512_unit_codes(const uint8_t* gbase, int64_t u, __m512i* pair) {
  const __m512i lo4 = _mm512_set1_epi8(0x0F);
  if constexpr (B == 4) {
    if (u % 2 == 0) {
      const __m512i v = _mm512_loadu_si512(gbase + (u / 2) * 64);
      *pair = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
      return _mm512_and_si512(v, lo4);
    }
    return *pair;
  } else {
    const uint8_t* p = gbase + unit_offset(B, u);
    const int i = static_cast<int>(u % kUnitsPerBlock);
    __m512i code = _mm512_and_si512(_mm512_srl_epi16(_mm512_loadu_si512(p), _mm_cvtsi32_si128(2 * i)), _mm512_set1_epi8(0x03));
    if constexpr (B == 3) {
      uint64_t bits;
      std::memcpy(&bits, p + 64 + 8 * i, 8);
      code = _mm512_mask_add_epi8(code, _cvtu64_mask64(bits), code, _mm512_set1_epi8(4));
    }
    return code;
  }
}

// The group's tables in the forms avx512_block_dot indexes (each 128-bit lane its row's
// int8 table xor 0x80, i.e. q + 128 as u8). 4-bit: the table itself. 2/3-bit: an index
// byte holds two units' 2-bit codes (bits 0-1 and 2-3), so lo0[i] = tab[i & 3] and
// lo1[i] = tab[i >> 2] look both units up from one index vector; hi0 / hi1 the same for
// codes 4..7 (3-bit: picked per byte by the unit's high-bit mask).
struct GroupTables {
  __m512i tab, lo0, lo1, hi0, hi1;
};

MPQ_TARGET_AVX512 inline GroupTables group_tables(const LutPacked& w, int64_t g) {
  GroupTables t;
  t.tab = _mm512_xor_si512(_mm512_loadu_si512(w.lut_i8.data() + g * kRows * 16), _mm512_set1_epi8(-128));
  alignas(64) int8_t i_lo0[64], i_lo1[64], i_hi0[64], i_hi1[64];
  for (int j = 0; j < 64; ++j) {
    const int i = j % 16;
    i_lo0[j] = static_cast<int8_t>(i & 3);
    i_lo1[j] = static_cast<int8_t>(i >> 2);
    i_hi0[j] = static_cast<int8_t>(4 + (i & 3));
    i_hi1[j] = static_cast<int8_t>(4 + (i >> 2));
  }
  t.lo0 = _mm512_shuffle_epi8(t.tab, _mm512_load_si512(i_lo0));
  t.lo1 = _mm512_shuffle_epi8(t.tab, _mm512_load_si512(i_lo1));
  t.hi0 = _mm512_shuffle_epi8(t.tab, _mm512_load_si512(i_hi0));
  t.hi1 = _mm512_shuffle_epi8(t.tab, _mm512_load_si512(i_hi1));
  return t;
}

// The int32 lane sums of one whole activation block (4 units from u0, a multiple of 4) with
// two independent dpbusd chains. 2/3-bit: one 4-bit index vector per pair of units (the
// low-bit plane & 0x0F for units 0, 1; (plane >> 4) & 0x0F for units 2, 3), each unit's
// weights by its own table (lo0 / lo1), and for 3-bit a masked lookup in hi0 / hi1 where
// the unit's high bit is set: no per-unit shift, mask and add.
template <int B>
MPQ_TARGET_AVX512 inline __m512i avx512_block_dot(const uint8_t* gbase, int64_t u0, const int8_t* q4, const GroupTables& t) {
  __m512i wq[4];
  if constexpr (B == 4) {
    const uint8_t* p = gbase + (u0 / 2) * 64;
    const __m512i lo4 = _mm512_set1_epi8(0x0F);
    const __m512i v0 = _mm512_loadu_si512(p), v1 = _mm512_loadu_si512(p + 64);
    wq[0] = _mm512_shuffle_epi8(t.tab, _mm512_and_si512(v0, lo4));
    wq[1] = _mm512_shuffle_epi8(t.tab, _mm512_and_si512(_mm512_srli_epi16(v0, 4), lo4));
    wq[2] = _mm512_shuffle_epi8(t.tab, _mm512_and_si512(v1, lo4));
    wq[3] = _mm512_shuffle_epi8(t.tab, _mm512_and_si512(_mm512_srli_epi16(v1, 4), lo4));
  } else {  // one load of the low-bit plane for the 4 units; unit i at bits 2i, 2i+1
    const uint8_t* p = gbase + unit_offset(B, u0);
    const __m512i v = _mm512_loadu_si512(p), lo4 = _mm512_set1_epi8(0x0F);
    const __m512i i01 = _mm512_and_si512(v, lo4), i23 = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
    wq[0] = _mm512_shuffle_epi8(t.lo0, i01);
    wq[1] = _mm512_shuffle_epi8(t.lo1, i01);
    wq[2] = _mm512_shuffle_epi8(t.lo0, i23);
    wq[3] = _mm512_shuffle_epi8(t.lo1, i23);
    if constexpr (B == 3) {
      uint64_t bits[4];
      std::memcpy(bits, p + 64, 32);
      wq[0] = _mm512_mask_shuffle_epi8(wq[0], _cvtu64_mask64(bits[0]), t.hi0, i01);
      wq[1] = _mm512_mask_shuffle_epi8(wq[1], _cvtu64_mask64(bits[1]), t.hi1, i01);
      wq[2] = _mm512_mask_shuffle_epi8(wq[2], _cvtu64_mask64(bits[2]), t.hi0, i23);
      wq[3] = _mm512_mask_shuffle_epi8(wq[3], _cvtu64_mask64(bits[3]), t.hi1, i23);
    }
  }
  __m512i d[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
  for (int i = 0; i < 4; ++i) d[i % 2] = _mm512_dpbusd_epi32(d[i % 2], wq[i], _mm512_loadu_si512(q4 + (u0 + i) * 64));
  return _mm512_add_epi32(d[0], d[1]);
}

// N groups g[0..N) in lockstep (kernels/cpu/group_streams.h: N concurrent code streams),
// each with exactly the arithmetic of a one-group walk; acc [N * 16].
template <int B, int N>
MPQ_TARGET_AVX512 void avx512_groups(const LutPacked& w, const LutQ8Act& act, const int64_t* g, float* acc) {
  const int64_t nblocks = (w.units + kUnitsPerBlock - 1) / kUnitsPerBlock, full = w.units / kUnitsPerBlock;
  const uint8_t* gbase[N];
  GroupTables tabs[N];
  __m512 sum[N];
  __m512i pair[N];
  for (int k = 0; k < N; ++k) {
    gbase[k] = w.codes.data() + g[k] * w.group_bytes;
    tabs[k] = group_tables(w, g[k]);
    sum[k] = _mm512_setzero_ps();
    pair[k] = _mm512_setzero_si512();
  }
  for (int64_t a = 0; a < nblocks; ++a) {
    const int64_t u0 = a * kUnitsPerBlock, u1 = std::min(w.units, u0 + kUnitsPerBlock);
    const __m512i corr = _mm512_loadu_si512(act.corr + 16 * a);
    const __m512 xs = _mm512_set1_ps(act.scale[a]);
    for (int k = 0; k < N; ++k) {
      // Software prefetch of the code bytes 2 KiB ahead (a block spans 1 to 2 cache lines):
      // the hardware prefetchers alone left the 4-bit kernel well below the 2-bit one's GB/s.
      const char* pf = reinterpret_cast<const char*>(gbase[k] + unit_offset(B, u0)) + 2048;
      _mm_prefetch(pf, _MM_HINT_T0);
      _mm_prefetch(pf + 64, _MM_HINT_T0);
      __m512i d;
      if (a < full) {
        d = avx512_block_dot<B>(gbase[k], u0, act.q4, tabs[k]);
      } else {  // the last, partial block
        d = _mm512_setzero_si512();
        for (int64_t u = u0; u < u1; ++u) {
          const __m512i wq = _mm512_shuffle_epi8(tabs[k].tab, avx512_unit_codes<B>(gbase[k], u, &pair[k]));
          d = _mm512_dpbusd_epi32(d, wq, _mm512_loadu_si512(act.q4 + u * 64));
        }
      }
      // (q + 128) * x summed per lane, minus 128 * the lane's x sum: exactly sum q * x per lane.
      sum[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(d, corr)), xs, sum[k]);
    }
  }
  for (int k = 0; k < N; ++k) _mm512_storeu_ps(acc + 16 * k, sum[k]);
}

MPQ_TARGET_AVX512 float sparse_dot_avx512(const LutPacked& w, int64_t r, const float* x) {
  if (w.rowptr.empty()) return 0.0f;
  const int64_t e1 = w.rowptr[r + 1];
  __m512 acc = _mm512_setzero_ps();
  for (int64_t e = w.rowptr[r]; e < e1; e += 16) {
    const int64_t n = e1 - e < 16 ? e1 - e : 16;
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
    const __m512i idx = w.col32.empty() ? _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(m, w.col16.data() + e))
                                        : _mm512_maskz_loadu_epi32(m, w.col32.data() + e);
    const __m512 v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w.val_f16.data() + e));
    acc = _mm512_fmadd_ps(v, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, x, 4), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// Weight streams per thread of the AVX-512 and AVX2 GEMVs (kernels/cpu/group_streams.h).
constexpr int kStreams = kWeightStreams;

template <int B>
void avx512_gemv(const LutPacked& w, const LutQ8Act& act, float* y) {
  run_group_streams<kStreams, 16>(
      w.groups, gemv_parallel(w),
      [&](auto n, const int64_t* g, float* acc) { avx512_groups<B, decltype(n)::value>(w, act, g, acc); },
      [&](int64_t g, const float* acc) { finish_group(w, g, acc, act.x, y, sparse_dot_avx512); });
}

template <int B>
void avx2_gemv(const LutPacked& w, const LutQ8Act& act, float* y) {
  run_group_streams<kStreams, 16>(
      w.groups, gemv_parallel(w),
      [&](auto n, const int64_t* g, float* acc) { avx2_groups<B, decltype(n)::value>(w, act, g, acc); },
      [&](int64_t g, const float* acc) { finish_group(w, g, acc, act.x, y, sparse_dot_avx2); });
}

}  // namespace

void lut_q8_gemv_avx2(const LutPacked& w, const LutQ8Act& act, float* y) {
  switch (w.bits) {
    case 2: return avx2_gemv<2>(w, act, y);
    case 3: return avx2_gemv<3>(w, act, y);
    default: return avx2_gemv<4>(w, act, y);
  }
}

void lut_q8_gemv_avx512(const LutPacked& w, const LutQ8Act& act, float* y) {
  switch (w.bits) {
    case 2: return avx512_gemv<2>(w, act, y);
    case 3: return avx512_gemv<3>(w, act, y);
    default: return avx512_gemv<4>(w, act, y);
  }
}

void lut_q8_gemv(const LutPacked& w, const float* x, float* y) {
  const int64_t nblocks = (w.cols + kLutActBlock - 1) / kLutActBlock;
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> xs;
  thread_local std::vector<int8_t> q4;
  thread_local std::vector<int32_t> xsum, corr;
  q.resize(static_cast<std::size_t>(nblocks * kLutActBlock));
  q4.resize(static_cast<std::size_t>(nblocks * kLutActBlock * 4));
  xs.resize(static_cast<std::size_t>(nblocks));
  xsum.resize(static_cast<std::size_t>(nblocks));
  corr.resize(static_cast<std::size_t>(nblocks * 16));
  quantize_act_int8(x, w.cols, kLutActBlock, q.data(), xs.data(), xsum.data());
  lut_prepare_act(q.data(), nblocks, q4.data(), corr.data());
  const LutQ8Act act{q.data(), q4.data(), xs.data(), corr.data(), x};
  const CpuIsa isa = cpu_isa();
  if (isa >= CpuIsa::kAvx512)
    lut_q8_gemv_avx512(w, act, y);
  else if (isa >= CpuIsa::kAvx2)
    lut_q8_gemv_avx2(w, act, y);
  else
    lut_q8_gemv_scalar(w, act, y);
}

namespace {

// CSR residuals of row r added to its decoded values.
inline void add_sparse(const LutPacked& w, int64_t r, float* o) {
  if (!w.rowptr.empty())
    for (int64_t e = w.rowptr[r]; e < w.rowptr[r + 1]; ++e) o[col_at(w, e)] += fp16_to_fp32(w.val_f16[e]);
}

void decode_rows_scalar(const LutPacked& w, int64_t r0, int64_t n, float* out, int64_t ld) {
  const int k = 1 << w.bits;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t r = r0 + j;
    float lut[16];
    for (int i = 0; i < k; ++i) lut[i] = fp16_to_fp32(w.lut_f16[r * k + i]);
    float* o = out + j * ld;
    for (int64_t c = 0; c < w.cols; ++c) o[c] = lut[lut_packed_code(w, r, c)];
    std::fill(o + w.cols, o + ld, 0.0f);
    add_sparse(w, r, o);
  }
}

// Per group: each unit's 64 codes decoded once, then one vpermps per row of the group.
template <int B>
MPQ_TARGET_AVX512 void decode_rows_avx512(const LutPacked& w, int64_t r0, int64_t n, float* out, int64_t ld) {
  const int k = 1 << B;
  for (int64_t g = r0 / kRows; g * kRows < r0 + n; ++g) {
    const uint8_t* gbase = w.codes.data() + g * w.group_bytes;
    __m512 tab[kRows];
    int64_t L0 = std::max<int64_t>(0, r0 - g * kRows), L1 = std::min<int64_t>(kRows, r0 + n - g * kRows);
    for (int64_t L = L0; L < L1; ++L) {
      alignas(64) float t[16] = {0};
      for (int i = 0; i < k; ++i) t[i] = fp16_to_fp32(w.lut_f16[(g * kRows + L) * k + i]);
      tab[L] = _mm512_load_ps(t);
    }
    __m512i pair = _mm512_setzero_si512();
    for (int64_t u = 0; u < w.units; ++u) {
      alignas(64) uint8_t codes[64];
      _mm512_store_si512(codes, avx512_unit_codes<B>(gbase, u, &pair));
      const int64_t left = w.cols - u * kUnit;
      const __mmask16 m = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
      for (int64_t L = L0; L < L1; ++L) {
        const __m512i idx = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(codes + 16 * L)));
        _mm512_mask_storeu_ps(out + (g * kRows + L - r0) * ld + u * kUnit, m, _mm512_permutexvar_ps(idx, tab[L]));
      }
    }
    for (int64_t L = L0; L < L1; ++L) {
      float* o = out + (g * kRows + L - r0) * ld;
      std::fill(o + w.cols, o + ld, 0.0f);
      add_sparse(w, g * kRows + L, o);
    }
  }
}

}  // namespace

void lut_decode_rows(const LutPacked& w, int64_t r0, int64_t n, float* out, int64_t ld) {
  MPQ_ASSERT(r0 >= 0 && n >= 0 && r0 + n <= w.rows && ld >= w.cols);
  if (cpu_isa() < CpuIsa::kAvx512) return decode_rows_scalar(w, r0, n, out, ld);
  switch (w.bits) {
    case 2: return decode_rows_avx512<2>(w, r0, n, out, ld);
    case 3: return decode_rows_avx512<3>(w, r0, n, out, ld);
    default: return decode_rows_avx512<4>(w, r0, n, out, ld);
  }
}

}  // namespace mpq
