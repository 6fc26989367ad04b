// CPU kernels for SqueezeLLM dense-and-sparse weights: y = x W^T straight from the packed
// form, without decoding W to fp32 in memory.
//
// Layout (lib/quant/squeezellm.h is the source of truth; summarized here): W [R, C], R =
// out_features (rows), C = in_features (cols), b = bits in {2, 3, 4}, k = 2^b.
//   qweight  U8  [R, RB], RB = b * ceil(C / 8). Each row is a little-endian bitstream, LSB
//            first: index j of row r occupies bits [j*b, j*b + b) of the row, so every group
//            of 8 indices is exactly b bytes and never crosses a row. Padding indices are 0.
//   lut_f16  F16 [R, k] bit patterns: LUT_r.
//   rowptr   I32 [R + 1] CSR row pointer (rowptr[0] = 0, rowptr[R] = nnz).
//   col      I16 or I32 [nnz] (col_is_i16 says which): the entry's column in [0, C).
//   val_f16  F16 [nnz]: residual added on top of the dense value.
// W[r, c] = LUT_r[idx(r, c)] (+ val for a CSR entry (r, c)).
//
// The CSR part may be absent (rowptr == nullptr): then W is the dense part alone.
//
// Work split (lut_gemv, AVX2 path):
//
//   rows r = 0 .. R-1  -- OpenMP static chunks, one thread per chunk of rows
//     | build LUT_r in fp32 registers (k floats from fp16)
//     | for each whole group g of 8 indices (b bytes):
//     |     8 lanes <- (bytes >> {0, b, .., 7b}) & (k - 1)
//     |     w8      <- permutevar8x32(LUT, lanes)  (b = 4: two halves + blend on bit 3)
//     |     acc     += w8 * x[8g .. 8g+8)          (4 independent accumulators)
//     | scalar tail for C mod 8, then the row's CSR entries
//
// lut_gemm decodes each row once into a per-thread fp32 buffer (C floats, L1/L2 resident)
// and then does T dot products with it, so the packed weights are read once per window.
#pragma once

#include <cstdint>

namespace mpq {

/// A read-only view of one packed SqueezeLLM tensor (pointers into PackedPart::bytes or a
/// mapped checkpoint; all little-endian, as on a little-endian host).
struct LutWeightView {
  int bits = 0;                       ///< b in {2, 3, 4}
  int64_t rows = 0;                   ///< R = out_features
  int64_t cols = 0;                   ///< C = in_features
  const uint8_t* qweight = nullptr;   ///< [R, b * ceil(C / 8)] bytes
  const uint16_t* lut_f16 = nullptr;  ///< [R, 2^b] fp16 bit patterns
  const int32_t* rowptr = nullptr;    ///< [R + 1], or nullptr for no sparse part
  const void* col = nullptr;          ///< [nnz] int16_t (col_is_i16) or int32_t
  bool col_is_i16 = true;
  const uint16_t* val_f16 = nullptr;  ///< [nnz] fp16 bit patterns
};

/// Scalar reference: y[r] = sum_j LUT_r[idx(r, j)] * x[j] + sum_{CSR entries} val * x[col],
/// in fp32, j in order. x: [cols] floats, y: [rows] floats. Throws Error(kUsage) for bits
/// outside {2, 3, 4} or a negative shape.
void lut_gemv_reference(const LutWeightView& w, const float* x, float* y);

/// Fast GEMV (same contract as lut_gemv_reference): AVX2+FMA when the CPU has it (checked
/// at run time), else the portable scalar path. OpenMP over rows for large layers.
void lut_gemv(const LutWeightView& w, const float* x, float* y);

/// Scalar reference for a window: Y[t, r] = lut_gemv_reference of X[t, :]. X: [T, cols]
/// row-major, Y: [T, rows] row-major.
void lut_gemm_reference(const LutWeightView& w, const float* X, int64_t T, float* Y);

/// Fast window product (same contract as lut_gemm_reference): each row of W is decoded once
/// (CSR residuals included) into a per-thread fp32 buffer, then T dot products.
void lut_gemm(const LutWeightView& w, const float* X, int64_t T, float* Y);

/// The two code paths behind lut_gemv / lut_gemm, exposed for tests and benchmarks.
/// The *_avx2 functions require lut_cpu_has_avx2().
bool lut_cpu_has_avx2();
void lut_gemv_scalar(const LutWeightView& w, const float* x, float* y);
void lut_gemv_avx2(const LutWeightView& w, const float* x, float* y);
void lut_gemm_scalar(const LutWeightView& w, const float* X, int64_t T, float* Y);
void lut_gemm_avx2(const LutWeightView& w, const float* X, int64_t T, float* Y);

}  // namespace mpq
