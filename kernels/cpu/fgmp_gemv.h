// CPU kernels for FGMP weights (fine-grained mixed precision: every 16-element block of a
// row is either NVFP4 or FP8), y = x W^T straight from the packed form, without decoding W
// to fp32 in memory. Source of the method: Hooper et al., "FGMP: Fine-Grained
// Mixed-Precision Weight and Activation Quantization for Hardware-Accelerated LLM
// Inference" (2025). The byte layout is mpq's own (docs/formats.md, "fgmp"):
//
// W [R, C], R = out_features (rows), C = in_features (cols), block size 16 along C,
// NB = ceil(C / 16) blocks per row (a partial last block is zero-padded to 16 on disk).
// Blocks are numbered in row-major order: block (r, i) is flat block r * NB + i.
// Checkpoint tensors are "<module>.weight_<part>" for the parts below (e.g.
// "model.layers.0.mlp.up_proj.weight_fp4_scale").
//   block_map     U8      [R, MB], MB = ceil(NB / 8). Bit (i % 8) of byte i / 8 of row r
//                         (LSB first) is 1 when block (r, i) is FP8, 0 when it is NVFP4.
//                         Bits past NB are 0.
//   fp8_row_offset I32    [R + 1]: FP8 blocks in rows < r (fp8_row_offset[0] = 0,
//                         fp8_row_offset[R] = N8). Row r's NVFP4 blocks start at NVFP4 block
//                         r * NB - fp8_row_offset[r], so a kernel starts any row without
//                         scanning the map.
//   fp4           U8      [N4, 8]: the NVFP4 blocks in flat block order, E2M1 codes (OCP MX
//                         v1.0), element 2k in the low nibble of byte k, 2k+1 in the high
//                         nibble (ModelOpt's NVFP4 order).
//   fp4_scale     F8_E4M3 [N4]: one E4M3 block scale per NVFP4 block.
//   fp4_scale_2   F32     []: the tensor's NVFP4 global scale.
//   fp8           F8_E4M3 [N8, 16]: the FP8 blocks in flat block order, OCP E4M3 codes.
//   fp8_scale     F32     []: the tensor's FP8 scale.
// Values: NVFP4 element = e2m1(code) * e4m3(fp4_scale[b]) * fp4_scale_2;
//         FP8 element   = e4m3(code) * fp8_scale.
// Padding elements (columns >= C of the last block) hold code 0 and are never read.
//
// Work split (fgmp_gemv, AVX-512 path; the AVX2 and scalar paths have the same shape):
//
//   rows r = 0 .. R-1  -- OpenMP static chunks above a size threshold
//     | split the row's map bits into two ascending lists of block indices (branch free):
//     |   i4 = its NVFP4 blocks, i8 = its FP8 blocks; both streams are then read in order
//     | for each NVFP4 block k (8 bytes + 1 scale byte, at r*NB - fp8_row_offset[r] + k):
//     |     16 nibbles -> 16 lanes -> permutexvar(E2M1 table) * e4m3(scale)   (exact)
//     |     acc4 += that * x[16 i4[k] .. +16)
//     | for each FP8 block k (16 bytes, at fp8_row_offset[r] + k):
//     |     16 E4M3 bytes -> fp16 bits (sign, exponent, mantissa moved, exact) -> cvtph_ps
//     |     acc8 += that * x[16 i8[k] .. +16)                 (units of e4m3 / 256)
//     | y[r] = fp4_scale_2 * sum(acc4) + fp8_scale * 256 * sum(acc8)
//
// A partial last block reads x from a zero-padded copy, so the loop has no tail.
// fgmp_gemm decodes a block of rows at a time (L2-sized for T < 64, 256 rows for larger
// windows) into a per-thread fp32 buffer (weights bit for bit equal to the reference's)
// and multiplies it with X by one Eigen GEMM (OpenBLAS when built with it), so the packed
// weights are read once per window; T = 1 runs the GEMV kernel.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/cpu/nvfp4_gemv.h"  // Nvfp4Packed (the single-token path's NVFP4 part)

namespace mpq {

/// FGMP block size (elements along cols), as in NVFP4.
constexpr int kFgmpBlockSize = 16;

/// A read-only view of one packed FGMP tensor (pointers into PackedPart::bytes or a mapped
/// checkpoint; little-endian, as on a little-endian host). Layout above.
struct FgmpWeightView {
  int64_t rows = 0;                        ///< R = out_features
  int64_t cols = 0;                        ///< C = in_features (logical, before padding)
  const uint8_t* block_map = nullptr;      ///< [R, ceil(ceil(C/16) / 8)]
  const int32_t* fp8_row_offset = nullptr; ///< [R + 1]
  const uint8_t* fp4 = nullptr;            ///< [N4, 8] E2M1 nibbles
  const uint8_t* fp4_scale = nullptr;      ///< [N4] E4M3 block scales
  float fp4_scale_2 = 0.0f;                ///< NVFP4 global scale
  const uint8_t* fp8 = nullptr;            ///< [N8, 16] E4M3 codes
  float fp8_scale = 0.0f;                  ///< FP8 tensor scale
};

/// Scalar reference: y[r] = sum_j W[r, j] * x[j] with W decoded element by element from the
/// layout (scanning the block map), accumulated in fp32 in column order. x: [cols] floats,
/// y: [rows] floats. Throws Error(kUsage) for a negative shape.
void fgmp_gemv_reference(const FgmpWeightView& w, const float* x, float* y);

/// Scalar reference for a window: Y[t, r] = fgmp_gemv_reference of X[t, :]. X: [T, cols]
/// row-major, Y: [T, rows] row-major.
void fgmp_gemm_reference(const FgmpWeightView& w, const float* X, int64_t T, float* Y);

/// Fast GEMV (same contract as fgmp_gemv_reference; sums may be reassociated, so results
/// agree with the reference to fp32 rounding, not bit for bit). OpenMP over rows for large
/// layers; vector code chosen at run time from what the CPU has, capped by MPQ_CPU_ISA
/// (cpu_isa_cap(), kernels/cpu/cpu_features.h).
void fgmp_gemv(const FgmpWeightView& w, const float* x, float* y);

/// Fast window product (same contract as fgmp_gemm_reference).
void fgmp_gemm(const FgmpWeightView& w, const float* X, int64_t T, float* Y);

/// The single-token fast path's NVFP4 part: every block of w in the NVFP4 GEMV's 16-row
/// layout (kernels/cpu/nvfp4_gemv.h, nvfp4_repack), an NVFP4 block with its codes and block
/// scale, an FP8 block as 16 E2M1 zeros with block scale 0 (value 0); scale_2 = fp4_scale_2.
/// 0.5625 bytes per weight, held next to the checkpoint's parts: for 30 % FP8 blocks the
/// product reads 0.5625 + 0.3 instead of 0.69 bytes per weight, but at the NVFP4 kernel's
/// int8 VNNI rate instead of the fp32 loop's (docs/results.md section 11, "FGMP on int8
/// activations"). Throws Error(kInput) from nvfp4_repack for an E4M3 NaN block scale
/// (fgmp_check_layout rejects those first), Error(kUsage) for a negative shape.
Nvfp4Packed fgmp_repack_fp4(const FgmpWeightView& w);

/// y[r] += fp8_scale * sum over row r's FP8 blocks of e4m3(code) * x (fp32 FMA, the FP8 half
/// of fgmp_gemv's loop; blocks walked through the map bits). x: [cols] floats, y: [rows]
/// floats. AVX-512F path when the CPU has it (capped by MPQ_CPU_ISA), else scalar. OpenMP
/// over rows for large layers.
void fgmp_fp8_gemv_add(const FgmpWeightView& w, const float* x, float* y);

/// The single-token fast product on int8 activations: y = nvfp4_gemv(fp4, x) (the NVFP4
/// blocks; activations quantized to int8 per 16 columns, kernels/cpu/act_int8.h) followed by
/// fgmp_fp8_gemv_add(w, x, y). fp4 must be fgmp_repack_fp4(w). Agrees with
/// fgmp_gemv_reference within the activation rounding of the NVFP4 blocks (tests).
void fgmp_gemv_q8(const FgmpWeightView& w, const Nvfp4Packed& fp4, const float* x, float* y);

/// Checks what the kernels trust, once per tensor at load time: shape >= 0; block_map and
/// fp8_row_offset present; fp8_row_offset[0] = 0 and fp8_row_offset[r + 1] -
/// fp8_row_offset[r] = the number of set bits in row r of block_map; the map bits past NB
/// are 0; fp4_scale_2 and fp8_scale finite; no NaN code (0x7F / 0xFF) among the fp4_scale
/// and fp8 bytes (the fast paths decode a NaN FP8 code as +-480, the reference as NaN).
/// The part sizes themselves (N4 = R * NB - fp8_row_offset[R], N8 = fp8_row_offset[R])
/// are the loader's to check against the file. Throws Error(kInput) "<where>: ..." naming
/// the part and the row or block.
void fgmp_check_layout(const FgmpWeightView& w, const std::string& where);

/// The code paths behind fgmp_gemv / fgmp_gemm, exposed for tests and benchmarks. The
/// *_avx2 functions require fgmp_cpu_has_avx2() (AVX2, FMA, F16C), the *_avx512 ones
/// fgmp_cpu_has_avx512() (AVX-512F). All gemm paths share the Eigen product.
bool fgmp_cpu_has_avx2();
bool fgmp_cpu_has_avx512();
/// The path fgmp_gemv / fgmp_gemm take on this CPU, capped by MPQ_CPU_ISA (cpu_isa_cap(),
/// kernels/cpu/cpu_features.h): "avx512", "avx2" or "scalar".
const char* fgmp_cpu_path();
void fgmp_gemv_scalar(const FgmpWeightView& w, const float* x, float* y);
void fgmp_gemv_avx2(const FgmpWeightView& w, const float* x, float* y);
void fgmp_gemv_avx512(const FgmpWeightView& w, const float* x, float* y);
void fgmp_gemm_scalar(const FgmpWeightView& w, const float* X, int64_t T, float* Y);
void fgmp_gemm_avx2(const FgmpWeightView& w, const float* X, int64_t T, float* Y);
void fgmp_gemm_avx512(const FgmpWeightView& w, const float* X, int64_t T, float* Y);

/// Row r of W decoded to fp32 by each path's block decoders (the ones fgmp_gemm uses):
/// out: [16 * ceil(cols / 16)] floats, padding columns decoded from their codes (0).
/// Equal bit for bit to e2m1_to_fp32(code) * e4m3_to_fp32(scale) * fp4_scale_2 (NVFP4,
/// that order) and e4m3_to_fp32(code) * fp8_scale (FP8) for every code but the NaN ones.
/// Requires 0 <= r < rows.
void fgmp_decode_row_scalar(const FgmpWeightView& w, int64_t r, float* out);
void fgmp_decode_row_avx2(const FgmpWeightView& w, int64_t r, float* out);
void fgmp_decode_row_avx512(const FgmpWeightView& w, int64_t r, float* out);

}  // namespace mpq
