// SqueezeLLM dense-and-sparse weight quantization, decoded to fp32 at load time.
//
// Source: Kim et al. 2023, "SqueezeLLM: Dense-and-Sparse Quantization" (arXiv:2306.07629).
// Per tensor W [R, C] (R = out_features, C = in_features), with b in {2, 3, 4}, k = 2^b:
//  1. Sparse set S = the round(outlier_pct% * R*C) weights of largest |w| (selection by
//     std::nth_element; ties at the threshold taken in row-major index order), union, when
//     Fisher sensitivities F are given, the round(sensitive_pct% * R*C) weights of largest F
//     (same tie rule). Without F only the outliers are sparse.
//  2. Dense fit, per output row r: weighted 1-D k-means (lib/quant/kmeans1d.h,
//     kmeans_rows) with k centroids over the row's positions outside S, weighted by F (or 1
//     when F is absent; a row whose dense F are all 0 is fitted with weight 1). S is
//     excluded (weight 0). The centroids are rounded to fp16 (RNE) into the row's lookup
//     table LUT_r (ascending), and EVERY position of the row, sparse ones included, gets the
//     index of its nearest fp16 entry (assign_to_lut: ties to the lower index).
//     Uniform-grid mode (format "uniform", the RTN baseline): LUT_r[j] = fp16(lo + j *
//     (hi - lo) / (k - 1)) with lo/hi the min/max of the row's dense positions; S is empty.
//  3. Sparse values: for (r, c) in S, val = fp16(w - LUT_r[idx]) (the residual), so that
//     decode = LUT_r[idx] + val reconstructs w up to one fp16 rounding of the residual.
//  decode: W'[r, c] = LUT_r[idx(r, c)] (+ val when (r, c) in S), in fp32.
//
// On-disk layout (module prefix <m>; every multi-byte value little-endian, row-major):
//   <m>.qweight        U8  [R, RB]      RB = b * ceil(C / 8): each row is whole groups of 8
//                                       indices, a group being exactly b bytes (8 indices *
//                                       b bits), so a SIMD kernel loads 8 indices from b bytes
//                                       (3 bytes for b = 3) without crossing a row. The row is
//                                       a little-endian bitstream, LSB first: index j occupies
//                                       bits [j*b, j*b + b) of the row, i.e. bit t of the
//                                       stream is bit (t mod 8) of byte t / 8. Padding indices
//                                       (j >= C) are 0.
//   <m>.lookup_table   F16 [R, k]       LUT_r ascending (fp16 bit patterns); k gives b.
//   <m>.sparse_rowptr  I32 [R + 1]      CSR row pointer: row r's entries are
//                                       [rowptr[r], rowptr[r+1]); rowptr[0] = 0,
//                                       non-decreasing, rowptr[R] = nnz.
//   <m>.sparse_col     I16 [nnz] when C < 32768, else I32 [nnz]: column of each entry,
//                                       strictly increasing within a row, in [0, C).
//   <m>.sparse_val     F16 [nnz]        residual w - LUT_r[idx] of each entry.
// The first three parts' shapes depend on R, C and b only. The sparse_col / sparse_val
// shapes depend on nnz, which is data-dependent: a reader takes nnz from sparse_rowptr[R]
// (squeezellm_sparse_layout()). layout(R, C) lists all five parts with the nnz that
// encode() (no Fisher) always produces, round(outlier_pct% * R*C), so layout(), bytes() and
// encode() agree exactly; encode_weighted() with Fisher adds up to round(sensitive_pct% *
// R*C) more entries (the union with the outliers), and then only PackedTensor::bytes() is
// exact. A checkpoint is recognized by "<m>.lookup_table" and needs neither the percentages
// nor the grid mode to load.
//
// Size: R*RB + 2*R*k + 4*(R + 1) + nnz * (2 or 4 + 2) bytes. bpw on a 4096 x 4096 layer,
// b = 4, 0.5% sparse: 4 + 0.0625 + 0.0078 + 0.16 = 4.23 (b = 3: 3.20; b = 2: 2.18).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/lut_gemv.h"  // LutWeightView
#include "lib/quant/quantizer.h"

namespace mpq {

/// Bytes of one packed qweight row: b * ceil(cols / 8).
inline int64_t squeezellm_row_bytes(int64_t cols, int bits) { return (cols + 7) / 8 * bits; }

/// The sparse column dtype for a layer with `cols` inputs: I16 when cols < 32768, else I32.
inline DType squeezellm_col_dtype(int64_t cols) { return cols < 32768 ? DType::I16 : DType::I32; }

/// Index bits for a lookup table of `entries` entries: 2, 3 or 4 for 4, 8 or 16; 0 otherwise.
int squeezellm_bits_for_lut(int64_t entries);

/// The kernel view (kernels/cpu/lut_gemv.h) of a squeezellm PackedTensor as read_packed() or
/// SqueezeLLMQuantizer::encode() give it: pointers into p's part bytes (p must outlive the
/// view); no CSR pointers when the sparse part is empty. Throws Error(kInput) for a missing
/// part or a lookup table whose width is not 4, 8 or 16 entries.
LutWeightView squeezellm_weight_view(const PackedTensor& p);

/// The variable-size parts for `nnz` sparse entries: sparse_col, sparse_val (bytes empty).
std::vector<PackedPart> squeezellm_sparse_layout(int64_t cols, int64_t nnz);

/// Checks a CSR sparse matrix of a [rows, cols] squeezellm tensor: rowptr (rows + 1 int32
/// little-endian) starts at 0, never decreases and ends at nnz; each column (nnz entries of
/// col_dtype I16 or I32) lies in [0, cols) and columns increase strictly within a row.
/// Returns "" when valid, else a message, and sets *field to the offending part's suffix
/// ("sparse_rowptr" or "sparse_col").
std::string squeezellm_check_sparse(int64_t rows, int64_t cols, const uint8_t* rowptr,
                                    const uint8_t* col, DType col_dtype, int64_t nnz,
                                    std::string* field);

/// SqueezeLLM quantizer: format "squeezellm" (k-means grid) or "uniform" (min-max grid).
/// Encoded tensors carry PackedTensor::format "squeezellm" in both modes (one on-disk layout).
class SqueezeLLMQuantizer final : public Quantizer {
 public:
  enum class Grid { kKMeans, kUniform };
  /// bits in {2, 3, 4}; percentages in [0, 100] (of the tensor's weights). Throws
  /// Error(kUsage) otherwise.
  explicit SqueezeLLMQuantizer(int bits, double outlier_pct = 0.45, double sensitive_pct = 0.05,
                               Grid grid = Grid::kKMeans);

  const FormatInfo& info() const override;
  /// encode_weighted(name, w, nullptr, rows, cols).
  PackedTensor encode(const std::string& name, const float* w, int64_t rows,
                      int64_t cols) const override;
  /// The method of the file comment. Throws Error(kInput) naming `name` for NaN/Inf
  /// weights, |w| > 32752 (the fp16 residual could overflow), or a negative/NaN/Inf Fisher.
  PackedTensor encode_weighted(const std::string& name, const float* w, const float* fisher,
                               int64_t rows, int64_t cols) const override;
  /// Decodes any squeezellm tensor: the bit width comes from the lookup_table width, not
  /// from this quantizer. Throws Error(kInput) for a missing part, a wrong dtype/shape, a
  /// bad CSR structure (squeezellm_check_sparse) or a non-finite table entry or value.
  void decode(const PackedTensor& p, float* out) const override;
  /// qweight, lookup_table, sparse_rowptr for this quantizer's bits, then sparse_col and
  /// sparse_val at nnz = round(outlier_pct% * rows*cols), what encode() produces (see the file
  /// comment; encode_weighted() with Fisher may produce more). Throws Error(kInput)
  /// "<info().name>: invalid shape [rows, cols]".
  std::vector<PackedPart> layout(int64_t rows, int64_t cols) const override;

  int bits() const { return bits_; }
  Grid grid() const { return grid_; }
  double outlier_pct() const { return outlier_pct_; }
  double sensitive_pct() const { return sensitive_pct_; }

 private:
  int bits_;
  double outlier_pct_;
  double sensitive_pct_;
  Grid grid_;
};

}  // namespace mpq
