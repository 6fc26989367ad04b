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
// Paths, chosen at run time (AVX-512 > AVX2 > scalar; all give the reference's result up to
// fp32 rounding of a different summation order):
//
// lut_gemv, AVX-512 (F, BW, VL, VBMI + FMA + F16C):
//   x -> xp in "kernel order" once per call: per block of 128 columns (16 groups of 8; the
//        last block has G <= 16 groups), column c0 + 8d + n goes to position c0 + G*n + d
//   rows r = 0 .. R-1  -- OpenMP static chunks
//     | T16 <- LUT_r as 16 fp32 lanes (T16[i] = LUT_r[i mod 2^b])
//     | per block: v <- its 16 groups (16b bytes), one group per dword lane (vpermb;
//     |            b = 4: plain load); masked loads, nothing read past the row
//     |    for n = 0..7: acc += vpermps(v >> b*n, T16) * xp[c0 + 16n .. +16)
//     |            (vpermps reads index bits 0..3 only, so no mask: 1 shift, 1 permute,
//     |             1 FMA per 16 weights)
//     | + the row's CSR entries (natural order x)
// lut_gemv, AVX2: per group of 8 indices, broadcast + variable shift + mask + vpermps (two
//   and a blend for b = 4), FMA with x; 4 accumulators. Scalar: the same groups, plain C++.
//
//     | (the packed rows are software-prefetched 4 KiB ahead)
//
// lut_gemm (window of T tokens): rows are decoded in blocks of <= 4 MiB of fp32 into a
// per-thread buffer (CSR residuals added), and each block is one GEMM
// Y[:, block] = X Wblock^T (Eigen, OpenBLAS when built with it; OpenMP over blocks when
// R*C*T >= 2^24 and not nested in a caller's parallel region). The AVX-512 path decodes in
// kernel order and multiplies X put in kernel order once per call.
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

/// Fast GEMV (same contract as lut_gemv_reference): the AVX-512 path when the CPU has it
/// (checked at run time), else AVX2+FMA, else the portable scalar path. OpenMP over rows for
/// large layers.
void lut_gemv(const LutWeightView& w, const float* x, float* y);

/// Scalar reference for a window: Y[t, r] = lut_gemv_reference of X[t, :]. X: [T, cols]
/// row-major, Y: [T, rows] row-major.
void lut_gemm_reference(const LutWeightView& w, const float* X, int64_t T, float* Y);

/// Fast window product (same contract as lut_gemm_reference): blocks of rows of W are
/// decoded once (CSR residuals included) into a per-thread fp32 buffer, then one GEMM per
/// block. Path chosen as in lut_gemv.
void lut_gemm(const LutWeightView& w, const float* X, int64_t T, float* Y);

/// The code paths behind lut_gemv / lut_gemm, exposed for tests and benchmarks (same
/// contracts). The *_avx2 functions require lut_cpu_has_avx2() (AVX2, FMA, F16C), the
/// *_avx512 ones lut_cpu_has_avx512() (also AVX-512 F, BW, VL, VBMI); calling them on a CPU
/// without is undefined (SIGILL).
bool lut_cpu_has_avx2();
bool lut_cpu_has_avx512();
/// The path lut_gemv / lut_gemm take on this CPU, capped by MPQ_CPU_ISA (cpu_isa_cap(),
/// kernels/cpu/cpu_features.h): "avx512", "avx2" or "scalar".
const char* lut_cpu_path();
void lut_gemv_scalar(const LutWeightView& w, const float* x, float* y);
void lut_gemv_avx2(const LutWeightView& w, const float* x, float* y);
void lut_gemv_avx512(const LutWeightView& w, const float* x, float* y);
void lut_gemm_scalar(const LutWeightView& w, const float* X, int64_t T, float* Y);
void lut_gemm_avx2(const LutWeightView& w, const float* X, int64_t T, float* Y);
void lut_gemm_avx512(const LutWeightView& w, const float* X, int64_t T, float* Y);

}  // namespace mpq
