// FGMP weight quantization (format name "fgmp"): fine-grained mixed precision, every
// 16-element block of a row either NVFP4 or FP8 E4M3.
//
// Source: Hooper et al., "FGMP: Fine-Grained Mixed-Precision Weight and Activation
// Quantization for Hardware-Accelerated LLM Inference" (2025):
//   - block score  I_b = sum_{i in b} F_i * (Q_nvfp4(w_i) - Q_fp8(w_i))^2, F the diagonal
//     Fisher (uniform when none is given); Q_nvfp4 is the NVFP4 value actually stored
//     (after clipping), Q_fp8 the FP8 value;
//   - the blocks of largest score are stored in FP8, the rest in NVFP4;
//   - sensitivity-weighted clipping of NVFP4 blocks: the block scale is searched over clip
//     ratios alpha of the block amax to minimize sum_i F_i (w_i - Q(w_i))^2.
// Scales reuse the uniform formats bit for bit: NVFP4 global scale s2 = amax / (6 * 448)
// and block scale E4M3(alpha * block_amax / (6 * s2)) (lib/quant/nvfp4.h; alpha = 1 is
// nvfp4's scale); FP8 scale amax / 448 (lib/quant/fp8.h). So 0% FP8 with clipping "none"
// decodes exactly like nvfp4, and 100% FP8 exactly like fp8.
//
// Byte layout (fixed by kernels/cpu/fgmp_gemv.h, documented in docs/formats.md "fgmp"),
// for W [R, C], NB = ceil(C / 16) blocks per row, MB = ceil(NB / 8), N8 FP8 blocks,
// N4 = R * NB - N8 NVFP4 blocks:
//   weight_block_map      U8      [R, MB]    bit (i % 8) of byte i / 8 of row r = 1 when block
//                                            (r, i) is FP8; bits past NB are 0
//   weight_fp8_row_offset I32     [R + 1]    FP8 blocks in rows < r
//   weight_fp4            U8      [N4, 8]    E2M1 nibbles of the NVFP4 blocks, flat block order
//   weight_fp4_scale      F8_E4M3 [N4]       E4M3 block scales
//   weight_fp4_scale_2    F32     []         NVFP4 global scale s2
//   weight_fp8            F8_E4M3 [N8, 16]   E4M3 codes of the FP8 blocks, flat block order
//   weight_fp8_scale      F32     []         FP8 tensor scale
// Padding elements of a partial last block hold code 0.
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "kernels/cpu/fgmp_gemv.h"  // kFgmpBlockSize and the layout's kernel contract
#include "lib/quant/fgmp_params.h"
#include "lib/quant/quantizer.h"

namespace mpq {

/// Clip grid of the NVFP4 block-scale search: alpha = 1.00, 0.99, ..., 0.70 (31 ratios),
/// searched from 1.00 down; a ratio replaces the best so far only when its error is
/// strictly smaller, so ties keep the least clipping.
constexpr double kFgmpClipMin = 0.70;
constexpr double kFgmpClipMax = 1.00;
constexpr double kFgmpClipStep = 0.01;
constexpr int kFgmpClipSteps = 31;

/// "fisher" / "random" / "amax"; parse throws Error(kUsage) for another name.
const char* fgmp_selection_name(FgmpParams::Selection s);
FgmpParams::Selection parse_fgmp_selection(const std::string& name);
/// "weighted" / "unweighted" / "none"; parse throws Error(kUsage) for another name.
const char* fgmp_clipping_name(FgmpParams::Clipping c);
FgmpParams::Clipping parse_fgmp_clipping(const std::string& name);

/// The parts of an fgmp tensor [rows, cols] with n_fp8 FP8 blocks, in encode()'s order
/// (suffix, dtype, shape; bytes empty). Throws Error(kInput) "fgmp: invalid shape ..." for a
/// negative shape, more than 2^31 - 1 blocks (the I32 offsets) or n_fp8 outside
/// [0, rows * ceil(cols / 16)].
std::vector<PackedPart> fgmp_layout(int64_t rows, int64_t cols, int64_t n_fp8);

/// Exact bytes of an fgmp tensor [rows, cols] with n_fp8 FP8 blocks (all seven parts):
/// R * ceil(NB / 8) + 4 (R + 1) + 9 N4 + 16 N8 + 8. Throws as fgmp_layout().
std::size_t fgmp_bytes(int64_t rows, int64_t cols, int64_t n_fp8);

/// N8, the FP8 block count of an fgmp tensor: weight_fp8's first dimension. Throws
/// Error(kInput) when weight_fp8 is missing or not of shape [N8, 16] with
/// 0 <= N8 <= rows * ceil(cols / 16).
int64_t fgmp_fp8_blocks(const PackedTensor& p);

/// Checks the contents of an fgmp tensor whose parts already have fgmp_layout()'s dtypes and
/// shapes: fp8_row_offset[0] = 0, non-decreasing, last entry N8; each row's block-map
/// popcount equals its offset step; map padding bits 0; fp4_scale_2 and fp8_scale finite and
/// >= 0; no E4M3 NaN (0x7F/0xFF) among the block scales and FP8 codes. Returns "" when
/// valid, else a one-line message, with *field set to the offending part's suffix.
std::string fgmp_check(const PackedTensor& p, std::string* field);

/// One tensor's block scores, input of the global FP8 selection.
struct FgmpTensorScores {
  std::string name;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<double> scores;  ///< [rows * ceil(cols / 16)]: FgmpQuantizer::block_scores()
};

/// Result of fgmp_select_global().
struct FgmpSelection {
  std::map<std::string, int64_t> fp8_blocks;  ///< FP8 block count of each tensor, by name
  int64_t fp8_total = 0;                      ///< K, FP8 blocks over all tensors
  int64_t blocks_total = 0;                   ///< all blocks of all tensors
  /// The global threshold: the smallest selected score (NaN when K = 0). Every block
  /// scoring above it is FP8; of the blocks scoring exactly it, the first in tensor order
  /// then flat block order are.
  double score_threshold = std::numeric_limits<double>::quiet_NaN();
  /// fp8_total / blocks_total (0 when there are no blocks).
  double fraction() const;
};

/// FGMP's one global threshold over many tensors: ranks every block of every tensor by
/// score (descending; ties by tensor order, then flat block index) and takes the first K:
/// K = llround(fp8_fraction * blocks_total) when target_bpw <= 0, else the largest K whose
/// bits per weight over all the tensors, 8 * sum fgmp_bytes / sum(rows * cols), is
/// <= target_bpw (each FP8 block costs 7 bytes more than an NVFP4 one). Encoding tensor t
/// with FgmpQuantizer::encode_count(..., fp8_blocks[t]) stores exactly those blocks.
/// Throws Error(kUsage) when fp8_fraction is outside [0, 1] (and no target is given) or
/// target_bpw is below the bits per weight at K = 0 (the message gives that minimum).
FgmpSelection fgmp_select_global(const std::vector<FgmpTensorScores>& tensors, double fp8_fraction,
                                 double target_bpw);

/// FGMP quantizer (format name "fgmp").
/// The kernel view (kernels/cpu/fgmp_gemv.h) of an fgmp PackedTensor as read_packed() or
/// FgmpQuantizer::encode() give it: pointers into p's part bytes (p must outlive the view)
/// and the two fp32 tensor scales. Throws Error(kInput) for a missing part or a tensor scale
/// part that is not 4 bytes; the contents are checked by fgmp_check_layout(), not here.
FgmpWeightView fgmp_weight_view(const PackedTensor& p);

class FgmpQuantizer final : public Quantizer {
 public:
  /// Throws Error(kUsage) when fp8_fraction is outside [0, 1] or NaN.
  explicit FgmpQuantizer(const FgmpParams& params = {});
  const FormatInfo& info() const override;
  const FgmpParams& params() const { return params_; }

  /// encode_weighted(name, w, nullptr, rows, cols).
  PackedTensor encode(const std::string& name, const float* w, int64_t rows,
                      int64_t cols) const override;
  /// Quantizes w (rows x cols fp32) with per-weight Fisher `fisher` (rows x cols, >= 0, or
  /// nullptr for uniform). FP8 blocks: the score_threshold rule when set, else the
  /// llround(fp8_fraction * blocks) largest scores. Throws Error(kInput) naming `name` for
  /// NaN/Inf weights or a negative/NaN/Inf sensitivity.
  PackedTensor encode_weighted(const std::string& name, const float* w, const float* fisher,
                               int64_t rows, int64_t cols) const override;
  /// Like encode_weighted() with exactly n_fp8 FP8 blocks: the largest scores, ties broken
  /// by lower flat block index (what a global ranking restricted to this tensor gives).
  /// n_fp8 is clamped to [0, blocks].
  PackedTensor encode_count(const std::string& name, const float* w, const float* fisher,
                            int64_t rows, int64_t cols, int64_t n_fp8) const;
  /// Block scores [rows * ceil(cols / 16)] in flat block order under params().selection
  /// (and, for "fisher", params().clipping). Same checks and errors as encode_weighted().
  std::vector<double> block_scores(const std::string& name, const float* w, const float* fisher,
                                  int64_t rows, int64_t cols) const;
  /// fp32 rows x cols. Throws Error(kInput) for a missing/mis-shaped part, contents
  /// fgmp_check() rejects, a non-finite or negative tensor scale, or a NaN code.
  void decode(const PackedTensor& p, float* out) const override;
  /// fgmp_layout(rows, cols, llround(fp8_fraction * rows * ceil(cols / 16))): the nominal
  /// size at the configured fraction (the real N8 is the tensor's own).
  std::vector<PackedPart> layout(int64_t rows, int64_t cols) const override;

 private:
  FgmpParams params_;
};

}  // namespace mpq
