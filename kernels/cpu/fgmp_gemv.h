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
#pragma once

#include <cstdint>

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
/// layers; vector code chosen at run time from what the CPU has.
void fgmp_gemv(const FgmpWeightView& w, const float* x, float* y);

/// Fast window product (same contract as fgmp_gemm_reference).
void fgmp_gemm(const FgmpWeightView& w, const float* X, int64_t T, float* Y);

}  // namespace mpq
