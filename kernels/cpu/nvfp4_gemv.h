// CPU kernels for NVFP4 weights: the tensor repacked at load into 16-row groups, a GEMV on
// int8 activations (AVX-512 VNNI, AVX2, scalar), and decoders for the window product
// (kernels/cpu/panel_gemm.h) and for the exact fp32 path.
//
// Source layout (ModelOpt, lib/quant/nvfp4.h): W [R, C], NB = ceil(C / 16) blocks per row;
//   weight        U8      [R, NB * 8]  E2M1 codes, element 2k in the low nibble of byte k
//   weight_scale  F8_E4M3 [R, NB]      block scales
//   weight_scale_2 F32    []           s2
//   W[r, c] = e2m1(code) * e4m3(scale[r, c / 16]) * s2.
//
// Repacked layout (Nvfp4Packed; rows padded to G = ceil(R / 16) groups of 16 with code 0
// and scale 0, so padding rows are 0). Group g holds rows 16g .. 16g+15 ("lane" i = row
// 16g + i), block b = columns 16b .. 16b+15:
//   codes  [G, NB, 128] bytes: byte 4i + c       = code(i, 16b + c)      | code(i, 16b + 4 + c)  << 4
//                              byte 64 + 4i + c  = code(i, 16b + 8 + c)  | code(i, 16b + 12 + c) << 4
//          (c = 0..3), so one 64-byte load masked with 0x0F gives, per 32-bit lane i, the
//          codes of row i at 4 consecutive columns: the operand of one VNNI instruction for 16
//          rows at once.
//   scales [G, NB, 16] E4M3 bytes: scale(i, b). Same byte count as the source.
//
// GEMV (T = 1), the work split (x quantized once per call, kernels/cpu/act_int8.h, block 16):
//   groups g = 0 .. G-1  -- OpenMP static chunks above a size threshold; the AVX-512 and
//     |                     AVX2 paths run each thread's chunk as 3 weight streams in lockstep
//     |                     (kernels/cpu/group_streams.h), the scalar one group by group
//     | acc[16] = 0 (fp32, one lane per row)
//     | per block b: v0, v1 <- 128 code bytes; A, B, C, D = nibble planes (and / shift)
//     |   u8 weights: w = 12 + 2 * e2m1(code), in [0, 24] (one vpshufb per 64 weights)
//     |   d = sum over the 16 columns of w * xq   (4 x vpdpbusd, xq broadcast 4 at a time)
//     |   d -= 12 * sum_b(xq)                     (the offset, exact in int32)
//     |   acc = fma(float(d), (e4m3(scale) / 256) * xscale_b, acc)
//     | y[16g + i] = acc[i] * (s2 * 128)
// which is y = sum_b xscale_b * scale_b * s2 * sum_c 2e2m1 * xq / 2: W exact, x rounded to
// int8 per 16-element block (|x - xscale * xq| <= xscale / 2). The scalar and AVX2 paths do
// the same integer and fp32 operations in the same order: all paths give identical floats.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "lib/common/huge_pages.h"

namespace mpq {

/// A read-only view of an NVFP4 tensor in ModelOpt's layout (pointers into a PackedTensor's
/// parts or a mapped checkpoint).
struct Nvfp4WeightView {
  int64_t rows = 0;
  int64_t cols = 0;
  const uint8_t* weight = nullptr;        ///< [rows, ceil(cols / 16) * 8]
  const uint8_t* weight_scale = nullptr;  ///< [rows, ceil(cols / 16)] E4M3
  float scale_2 = 0.0f;
};

/// An NVFP4 tensor in the kernels' layout (file comment). Owns its bytes.
struct Nvfp4Packed {
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t nb = 0;      ///< blocks per row, ceil(cols / 16)
  int64_t groups = 0;  ///< ceil(rows / 16)
  HugeVector<uint8_t> codes;    ///< [groups, nb, 128], in huge pages (lib/common/huge_pages.h)
  HugeVector<uint8_t> scales;   ///< [groups, nb, 16]
  float scale_2 = 0.0f;
  /// Bytes a product reads (codes + scales + s2).
  std::size_t bytes() const { return codes.size() + scales.size() + sizeof(float); }
};

/// Repacks a view. Throws Error(kInput) "NVFP4 ..." naming the row and block for a block
/// scale holding the E4M3 NaN code (0x7F / 0xFF; the source decoder gives NaN, the kernels
/// would not) and for a non-finite scale_2; Error(kUsage) for a negative shape.
Nvfp4Packed nvfp4_repack(const Nvfp4WeightView& w);

/// y [rows] = W x, x [cols] fp32, through int8 activations (file comment). OpenMP over
/// groups for large tensors when not already inside a parallel region; path from cpu_isa().
void nvfp4_gemv(const Nvfp4Packed& w, const float* x, float* y);

/// The GEMV paths on already quantized activations (act_int8.h with B = 16: q
/// [16 * nb] int8, scale [nb], sum [nb]); identical results. *_avx2 needs CpuIsa::kAvx2,
/// *_avx512 CpuIsa::kAvx512.
void nvfp4_gemv_q8_scalar(const Nvfp4Packed& w, const int8_t* q, const float* scale, const int32_t* sum, float* y);
void nvfp4_gemv_q8_avx2(const Nvfp4Packed& w, const int8_t* q, const float* scale, const int32_t* sum, float* y);
void nvfp4_gemv_q8_avx512(const Nvfp4Packed& w, const int8_t* q, const float* scale, const int32_t* sum, float* y);

/// Rows [r0, r0 + n) of W decoded to fp32, bit for bit the source decoder's
/// e2m1(code) * e4m3(scale) * s2: out [n, ld] row-major, columns [cols, ld) set to 0.
/// Requires 0 <= r0, r0 + n <= rows, ld >= cols.
void nvfp4_decode_rows(const Nvfp4Packed& w, int64_t r0, int64_t n, float* out, int64_t ld);

/// Rows [r0, r0 + n) as a bf16 panel for kernels/cpu/panel_gemm.h: panel [kp / 2, n, 2]
/// (pairs of columns, then rows), kp = the panel's column count (>= cols, a multiple of 32),
/// value e2m1(code) * e4m3(scale), exact in bf16 (the product has at most 6 significant
/// bits); s2 is the panel's output scale. r0 and n multiples of 16 (rows past `rows`
/// decode to 0). The *_scalar and *_avx512 forms give identical bytes.
void nvfp4_decode_panel(const Nvfp4Packed& w, int64_t r0, int64_t n, int64_t kp, uint16_t* panel);
void nvfp4_decode_panel_scalar(const Nvfp4Packed& w, int64_t r0, int64_t n, int64_t kp, uint16_t* panel);
void nvfp4_decode_panel_avx512(const Nvfp4Packed& w, int64_t r0, int64_t n, int64_t kp, uint16_t* panel);

}  // namespace mpq
