// Activations quantized to int8 once per matrix product, for the integer (VNNI) GEMV
// kernels (kernels/cpu/nvfp4_gemv.h, kernels/cpu/lut_vnni.h).
//
// Scheme (llama.cpp's Q8_0 activations, with the block size a parameter): x [K] fp32 is cut
// into nb = ceil(K / B) blocks of B elements (the last one zero-padded); per block b
//   amax_b  = max |x_k| over the block
//   scale_b = amax_b / 127                      (fp32 division)
//   q_k     = round_nearest_even(x_k * (127 / amax_b)), in [-127, 127]
//   sum_b   = sum of the block's q_k            (int32; the kernels' offset corrections)
// A block with amax 0 has scale 0 and q 0. A block holding a NaN or +-Inf has scale NaN and
// q 0, so the products it enters become NaN (a non-finite activation is never hidden).
// x_k ~= scale_b * q_k with |error| <= scale_b / 2.
//
// Every path (scalar, AVX2, AVX-512) does the same fp32 operations and gives identical
// bytes (tested).
#pragma once

#include <cstdint>

namespace mpq {

/// Quantizes x [K] (fp32) with block size B (a multiple of 16 in [16, 4096]) into
/// q [nb * B] int8 (padding 0), scale [nb] fp32 and sum [nb] int32, nb = ceil(K / B).
/// The path is chosen at run time (cpu_isa()). Requires K >= 0 (asserted).
void quantize_act_int8(const float* x, int64_t K, int B, int8_t* q, float* scale, int32_t* sum);

/// The paths behind quantize_act_int8 (same contract; *_avx2 needs AVX2, *_avx512 AVX-512).
void quantize_act_int8_scalar(const float* x, int64_t K, int B, int8_t* q, float* scale, int32_t* sum);
void quantize_act_int8_avx2(const float* x, int64_t K, int B, int8_t* q, float* scale, int32_t* sum);
void quantize_act_int8_avx512(const float* x, int64_t K, int B, int8_t* q, float* scale, int32_t* sum);

}  // namespace mpq
