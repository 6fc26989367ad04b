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
