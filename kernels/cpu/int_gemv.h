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

}  // namespace mpq
