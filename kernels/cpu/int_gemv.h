// CPU kernels of the group-wise integer format "int" (lib/quant/intg.h: GPTQ's asymmetric
// grid, b-bit codes as a little-endian bitstream per row, fp16 scale s and U8 zero z per
// group of G columns). Products run from the packed bytes (no fp32 copy of the matrix):
//   decode:  w[r, c] = s[r, g] * (q[r, c] - z[r, g])                 (exactly the decoder)
//   gemv:    y[r] = sum_g s[r, g] * (sum_{c in g} q[r, c] x[c] - z[r, g] * X_g),
//            X_g = sum_{c in g} x[c] computed once per call for all rows; fp32 sums (the
//            reordering is the only difference from the decoded product).
// Row codes are unpacked into a byte buffer (fast paths for b = 2, 4, 8; the generic
// bitstream reader for b = 3), then a plain fp32 loop the compiler vectorizes.
#pragma once

#include <cstdint>

namespace mpq {

/// A validated view of an int tensor's parts (read_packed / IntGroupQuantizer checked them).
struct IntWeightView {
  int64_t rows = 0, cols = 0;
  int bits = 0;             ///< 2, 3, 4 or 8
  int64_t group = 0;        ///< columns per group (cols for one group per row)
  int64_t groups = 0;       ///< NG = ceil(cols / group)
  int64_t row_bytes = 0;    ///< bits * ceil(cols / 8)
  const uint8_t* qweight = nullptr;  ///< [rows, row_bytes]
  const uint16_t* scales = nullptr;  ///< fp16 bits [rows, groups] (little-endian host)
  const uint8_t* zeros = nullptr;    ///< [rows, groups]
  std::size_t bytes() const {
    return static_cast<std::size_t>(rows) * static_cast<std::size_t>(row_bytes + 3 * groups);
  }
};

/// Codes of row r into codes[0..cols).
void int_unpack_row(const IntWeightView& v, int64_t r, uint8_t* codes);

/// Rows [r0, r0 + n) decoded to fp32, out [n, ld] (columns [cols, ld) set to 0).
void int_decode_rows(const IntWeightView& v, int64_t r0, int64_t n, float* out, int64_t ld);

/// y [rows] = W x (see the file comment), OpenMP over rows for large matrices.
void int_gemv(const IntWeightView& v, const float* x, float* y);

// ---- int8 activations (the runtime's fast single-token path) -------------------------
// x is quantized once per call to int8 per block of kIntActBlock = 64 columns
// (kernels/cpu/act_int8.h: x_c ~ xs_a * xq_c, a = c / 64), and
//   y[r] = sum_a sum_{k < 16} d[r, a, k] * s[r, g(a, k)] * xs_a  -  sum_g s[r, g] z[r, g] Xq_g
// where d[r, a, k] = sum_{e < 4} q[r, 64a + 4k + e] * xq[64a + 4k + e] is exact in int32 (one
// vpdpbusd lane: u8 codes times s8 activations), g(a, k) the group of columns 64a + 4k ..
// 64a + 4k + 3 (every valid group size, 16, 32, 64, 128 or the whole row, keeps them in one
// group) and Xq_g = sum over the group's columns of xs_a * xq_c. That is the product of the
// exactly decoded W with the int8-rounded x, in fp32 sums (llama.cpp's Q8_0 activation scheme;
// the codes unpacked per 64 columns with VBMI byte permutes and multishifts, GPTQ's packing
// order being the plain LSB-first bitstream of lib/quant/intg.h).
constexpr int kIntActBlock = 64;

/// Per-call activation data: q [64 * nb] int8 (padding 0), scale [nb] (act_int8.h), gsum [NG]
/// = Xq_g above (int_prepare_act).
struct IntQ8Act {
  const int8_t* q = nullptr;
  const float* scale = nullptr;
  const float* gsum = nullptr;
};

/// gsum [v.groups] of quantized activations (q, scale as quantize_act_int8 writes them).
void int_prepare_act(const IntWeightView& v, const int8_t* q, const float* scale, float* gsum);

/// True when int_q8_gemv_avx512 can run (cpu_isa() >= CpuIsa::kAvx512: VNNI and VBMI).
bool int_q8_gemv_available();

/// y [rows] through int8 activations (above): quantizes x, then the AVX-512 VNNI path when
/// available, else the scalar one. OpenMP over rows for large matrices.
void int_q8_gemv(const IntWeightView& v, const float* x, float* y);

/// The paths (same sums; the fp32 accumulation order differs: scalar per row in block order,
/// AVX-512 in 16 lanes and two interleaved accumulators). *_avx512 needs
/// int_q8_gemv_available().
void int_q8_gemv_scalar(const IntWeightView& v, const IntQ8Act& a, float* y);
void int_q8_gemv_avx512(const IntWeightView& v, const IntQ8Act& a, float* y);

}  // namespace mpq
