// CPU kernels for SqueezeLLM (LUT) weights on int8 activations: the tensor repacked at load
// into 4-row groups with an int8 copy of each row's lookup table, a GEMV (AVX-512 VNNI,
// AVX2, scalar), and decoders for the window product (kernels/cpu/panel_gemm.h) and for the
// exact fp32 path. The source layout is lib/quant/squeezellm.h (kernels/cpu/lut_gemv.h runs
// it as stored, in fp32).
//
// Repacked layout (LutPacked; rows padded to G = ceil(R / 4) groups of 4, columns to
// U = ceil(C / 16) units of 16; padding codes 0). Group g holds rows 4g .. 4g+3 ("lane" L =
// row 4g + L); a unit u is columns 16u .. 16u+15 of the four rows, 64 codes, one 128-bit lane
// per row, so that one vpshufb looks every code up in its own row's table:
//   b = 4: chunks of two units, 64 bytes: byte 16L + j = code(L, 16(2p) + j) | code(L, 16(2p+1) + j) << 4
//   b = 3: per block of 4 units (u = 4a + i) 96 bytes: bytes 0..63, bits 2i..2i+1 of byte
//          16L + j = code(L, 16u + j) & 3; bytes 64 + 8i .. 64 + 8i + 7 a little-endian u64
//          whose bit 16L + j = bit 2 of code(L, 16u + j)
//   b = 2: per block of 4 units 64 bytes: bits 2i..2i+1 of byte 16L + j = code(L, 16u + j)
// (b * 8 bytes per 64 codes, the source's size; a partial last block of 2/3-bit takes a
// whole block's bytes). One 64-byte load and a shift by 2i give unit i's low bits. Per row: lut_i8 [16] int8, the table scaled
// to the row's amax: q_i = round(LUT_r[i] * 127 / amax_r), and lut_scale_r = amax_r / 127
// (0 for an all-zero table); the fp16 table and the CSR part (rowptr, col, val) as stored.
//
// GEMV (T = 1), the work split (x quantized once per call, kernels/cpu/act_int8.h, block 64):
//   groups g = 0 .. G-1  -- OpenMP static chunks above a size threshold; the AVX-512 and
//     |                     AVX2 paths run each thread's chunk as 3 code streams in lockstep
//     |                     (kernels/cpu/group_streams.h), the scalar one group by group
//     | T = the 4 rows' int8 tables (one per 128-bit lane), xor 0x80 (u8 = q + 128)
//     | per activation block a (4 units):
//     |   d = sum over its units of vpdpbusd(vpshufb(T, codes), xq of the unit in all 4 lanes)
//     |   d -= 128 * (sums of xq over each lane's columns)     exact: d = sum q * xq per lane
//     |   (xq stored 4 times, once per 128-bit lane, and the corrections precomputed per call)
//     |   acc = fma(float(d), xscale_a, acc)                  (lane (L, m): columns 4m..4m+3)
//     | y[4g + L] = ((acc_L0 + acc_L1) + (acc_L2 + acc_L3)) * lut_scale + CSR part (fp32 x)
// W is approximated by lut_scale * q (|error| <= lut_scale / 2; the CSR residuals exact), x
// by int8 per 64-element block. The dense part is identical on every path (scalar, AVX2,
// AVX-512); the CSR part is summed in a path-dependent order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/cpu/lut_gemv.h"  // LutWeightView (the source layout)
#include "lib/common/huge_pages.h"

namespace mpq {

/// Columns per activation block of the LUT GEMV.
constexpr int kLutActBlock = 64;

/// A SqueezeLLM tensor in the kernels' layout (file comment). Owns its bytes.
struct LutPacked {
  int bits = 0;        ///< 2, 3 or 4
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t units = 0;   ///< ceil(cols / 16)
  int64_t groups = 0;  ///< ceil(rows / 4)
  int64_t group_bytes = 0;          ///< code bytes per group
  HugeVector<uint8_t> codes;        ///< [groups, group_bytes], in huge pages (lib/common/huge_pages.h)
  std::vector<int8_t> lut_i8;       ///< [groups * 4, 16]
  std::vector<float> lut_scale;     ///< [groups * 4]
  std::vector<uint16_t> lut_f16;    ///< [rows, 2^bits], the source table
  std::vector<int32_t> rowptr;      ///< [rows + 1], empty without a CSR part
  std::vector<int16_t> col16;       ///< [nnz] when cols < 32768 (as stored)
  std::vector<int32_t> col32;       ///< [nnz] otherwise
  std::vector<uint16_t> val_f16;    ///< [nnz]
  /// Bytes a GEMV reads (codes, int8 tables and scales, CSR part).
  std::size_t bytes() const;
};

/// Repacks a source view. Throws Error(kInput) "squeezellm ..." naming the row for a
/// non-finite table entry or CSR value; Error(kUsage) for bits outside {2, 3, 4} or a
/// negative shape.
LutPacked lut_repack(const LutWeightView& w);

/// y [rows] = W x through int8 activations and tables (file comment). OpenMP over groups
/// for large tensors when not inside a parallel region; path from cpu_isa().
void lut_q8_gemv(const LutPacked& w, const float* x, float* y);

/// Per-call activation data of the paths below: act_int8.h with B = kLutActBlock (q
/// [64 * nblocks] int8, scale [nblocks], sum [nblocks] unused here), q4 [256 * nblocks]:
/// each unit's 16 values repeated 4 times (q4[64u + 16L + j] = q[16u + j], one copy per
/// 128-bit lane, so the kernels load them without a shuffle), and corr [nblocks * 16]: the
/// AVX-512 path's offset correction, corr[16a + 4L + m] = 128 * (sum over the block's units
/// u and e < 4 of q[16u + 4m + e]) for every lane L. x is the fp32 input, for the CSR part.
struct LutQ8Act {
  const int8_t* q = nullptr;
  const int8_t* q4 = nullptr;
  const float* scale = nullptr;
  const int32_t* corr = nullptr;
  const float* x = nullptr;
};

/// q4 and corr of quantized activations q [64 * nblocks] (see LutQ8Act): q4 [256 *
/// nblocks], corr [16 * nblocks].
void lut_prepare_act(const int8_t* q, int64_t nblocks, int8_t* q4, int32_t* corr);

/// The GEMV paths (identical dense part; *_avx2 needs CpuIsa::kAvx2, *_avx512 kAvx512).
void lut_q8_gemv_scalar(const LutPacked& w, const LutQ8Act& a, float* y);
void lut_q8_gemv_avx2(const LutPacked& w, const LutQ8Act& a, float* y);
void lut_q8_gemv_avx512(const LutPacked& w, const LutQ8Act& a, float* y);

/// The index of (row r, column c) in the repacked codes (tests, decoders).
int lut_packed_code(const LutPacked& w, int64_t r, int64_t c);

/// Rows [r0, r0 + n) decoded to fp32 exactly as the source decoder (LUT_r[idx] + CSR
/// residual): out [n, ld], columns [cols, ld) set to 0. Requires 0 <= r0, r0 + n <= rows,
/// ld >= cols.
void lut_decode_rows(const LutPacked& w, int64_t r0, int64_t n, float* out, int64_t ld);

}  // namespace mpq
