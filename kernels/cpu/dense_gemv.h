// CPU GEMV kernels for weights kept in their stored 8/16-bit float format, exact in fp32:
// FP8 E4M3 with a per-tensor scale (ModelOpt "FP8", lib/quant/fp8.h), dense bf16 and dense
// fp16 (the Hugging Face dtypes), plus their fp32 row decoders for the window product and
// the exact path.
//
// Layouts (as stored, row-major, little-endian): W [R, C]
//   fp8   U8 E4M3 codes [R, C] and an fp32 scale s: W = e4m3(code) * s
//   bf16  [R, C] bf16 bit patterns: W = bf16
//   f16   [R, C] IEEE binary16 bit patterns: W = f16
//
// GEMV (y = W x, x and y fp32), every path: rows in blocks of 4 sharing each load of x,
// weights widened to fp32 exactly (fp8: the sign-extended byte << 7 is the fp16 bit pattern
// of e4m3 / 256, F16C to fp32; bf16: << 16; f16: F16C), fp32 FMA, the scale applied once per
// row. The weights and x are exact; only the fp32 summation order differs between paths.
// OpenMP over row blocks for large tensors when not inside a parallel region.
// FP8 also has a fast path on bf16 activations (dense_gemv_fp8_bf16: E4M3 -> bf16 through
// two byte tables, vdpbf16ps), the runtime's decode path where AVX512_BF16 is present.
#pragma once

#include <cstdint>
#include <string>

namespace mpq {

/// The stored element types these kernels read.
enum class DenseKind { kFp8, kBf16, kF16 };

/// A read-only view: `data` points at rows * cols elements (1 byte for kFp8, 2 otherwise);
/// scale multiplies every weight (fp8: weight_scale; bf16 / f16: 1).
struct DenseWeightView {
  DenseKind kind = DenseKind::kBf16;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;
  float scale = 1.0f;
};

/// Checks the view once at load: a finite scale; for kFp8 no E4M3 NaN code (0x7F / 0xFF:
/// the reference decodes NaN, the fast paths would not). Throws Error(kInput) "<where>:
/// ..." naming the element.
void dense_check(const DenseWeightView& w, const std::string& where);

/// y [rows] = W x (file comment); path from cpu_isa().
void dense_gemv(const DenseWeightView& w, const float* x, float* y);
void dense_gemv_scalar(const DenseWeightView& w, const float* x, float* y);
void dense_gemv_avx2(const DenseWeightView& w, const float* x, float* y);
void dense_gemv_avx512(const DenseWeightView& w, const float* x, float* y);

/// FP8 only: y [rows] = W x with x rounded to bf16 (round to nearest even) and W exact in
/// bf16 (every E4M3 value is a normal bf16 number), fp32 sums (AVX512_BF16 vdpbf16ps). Per
/// 64 columns of a row: one 64-byte load, two vpermi2b table lookups (high and low byte of
/// the bf16 pattern from the 7-bit magnitude), the sign OR-ed in, two byte unpacks and two
/// vdpbf16ps; x is reordered once per call to the unpacks' order. About half the vector
/// instructions of the exact fp32 path per weight, which is compute-bound on 2 cores
/// (docs/results.md section 11). The runtime's fast decode path for fp8 ("--kernels fast");
/// the exact one is dense_gemv. Requires dense_gemv_fp8_bf16_available() (CpuIsa >=
/// kAvx512Bf16: VBMI and AVX512_BF16) and w.kind == kFp8 (asserted).
void dense_gemv_fp8_bf16(const DenseWeightView& w, const float* x, float* y);
bool dense_gemv_fp8_bf16_available();

/// Rows [r0, r0 + n) as fp32, times `scale` when with_scale (fp8: e4m3(code) * s, the
/// reference decoder's value), else the unscaled element (fp8: e4m3(code), exact in bf16):
/// out [n, ld], columns [cols, ld) set to 0. Requires 0 <= r0, r0 + n <= rows, ld >= cols.
void dense_decode_rows(const DenseWeightView& w, int64_t r0, int64_t n, float* out, int64_t ld, bool with_scale);

/// fp32 [rows] of row r's 1-row decode (embedding lookups): out[c] = W[r, c] * scale.
void dense_row_f32(const DenseWeightView& w, int64_t r, float* out);

}  // namespace mpq
