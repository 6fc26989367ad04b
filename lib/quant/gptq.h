// GPTQ: error-compensating quantization of a linear layer over any weight grid.
//
// Source: Frantar, Ashkboos, Hoefler, Alistarh 2023, "GPTQ: Accurate Post-Training
// Quantization for Generative Pre-trained Transformers" (ICLR), Algorithm 1 with the lazy
// batch updates and the Cholesky form of the inverse Hessian; OBQ (Frantar & Alistarh 2022)
// for the update rule. For W [R, C] and the layer-input Hessian H = 2 X^T X [C, C] (X the
// calibration inputs, one row per token):
//   dead inputs (H_ii = 0): H_ii = 1, W[:, i] = 0;  H += damp * mean(diag H) * I
//   (act order: columns processed by decreasing H_ii)
//   U = chol(H^-1) upper, so H^-1 = U^T U
//   for each column j in processing order:   q = Q_grid(w_j)   (every row at once)
//                                            e = (w_j - q) / U_jj
//                                            w_k -= e * U_jk for the columns k after j
// Columns are processed in blocks of `block` with the updates of later blocks batched into
// one matrix product (GPTQ's lazy batch); the result is the same up to rounding.
// The grid decides the values: per-group parameters are set when the pass reaches a group's
// first column, from the weights compensated so far (GPTQ's groupsize), or once up front from
// the original weights (static groups; required with act order). Positions the grid keeps
// exactly (squeezellm's sparse part) keep their stored value (the original as the format stores it), feed no error back, and take
// no updates.
// All arithmetic is float64; the grids round as their formats do.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "lib/quant/quantizer.h"

namespace mpq {

/// Options of gptq_quantize().
struct GptqOptions {
  double damp = 0.01;          ///< fraction of mean(diag H) added to the diagonal (GPTQ's percdamp)
  int64_t block = 128;         ///< columns per lazy-batch block (rounded to a multiple of the group)
  bool act_order = false;      ///< process columns by decreasing H_ii (GPTQ's act-order / desc_act)
  bool static_groups = false;  ///< group parameters from the original weights (forced by act_order)
};

/// The value grid of one format for one tensor, as GPTQ walks it column by column. A grid
/// records the code it chose for every (r, c) and finally encodes them in its format's layout.
class GptqGrid {
 public:
  virtual ~GptqGrid() = default;
  /// Columns per parameter group (0: no group parameters to set during the pass).
  virtual int64_t group_cols() const { return 0; }
  /// Sets group g's parameters (its columns [g*G, min(C, (g+1)*G))) for every row from the
  /// values w: R rows of `n` values, row r at w + r * ld (float64).
  virtual void set_group(int64_t /*g*/, const double* /*w*/, int64_t /*ld*/, int64_t /*n*/) {}
  /// The value (r, c) takes on the grid for the current weight `w` (and records its code).
  virtual double quantize(int64_t r, int64_t c, double w) = 0;
  /// True when (r, c) is stored exactly (kept at its original value, no error feedback).
  virtual bool exact(int64_t /*r*/, int64_t /*c*/) const { return false; }
  /// The stored value of an exact position whose original value is `w0` (the format may
  /// round it, e.g. squeezellm's fp16 residual on top of the LUT entry).
  virtual double exact_value(int64_t /*r*/, int64_t /*c*/, double w0) const { return w0; }
  /// The packed tensor of every recorded code (call after the pass). Throws as the format's
  /// encode() does.
  virtual PackedTensor encode() = 0;
};

/// Runs GPTQ (file comment) on `w` (R x C fp32, row-major; not modified) with the Hessian
/// `h` (C x C float64, row-major, symmetric positive semi-definite: 2 X^T X, any positive
/// multiple gives the same result), recording the codes in `grid`. Returns the dequantized
/// weights (R x C fp32). Throws Error(kInput) naming `name` when h has the wrong size or
/// holds NaN/Inf, or when the damped Hessian is not positive definite; Error(kUsage) for
/// damp <= 0 or block < 1.
std::vector<float> gptq_quantize(const std::string& name, const float* w, int64_t rows, int64_t cols,
                                 const double* h, GptqGrid& grid, const GptqOptions& opt);

/// tr((W - Q) H (W - Q)^T): the increase of the layer's summed squared output error over the
/// calibration tokens that quantizing W to Q causes (for H = 2 X^T X, twice that). Float64.
double gptq_output_error(const float* w, const float* q, int64_t rows, int64_t cols, const double* h);

}  // namespace mpq
