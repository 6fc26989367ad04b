// The GPTQ grid of every weight format (lib/quant/gptq.h): how each format's values, scales
// and codes are chosen column by column under error compensation, and encoded at the end in
// the format's own layout (so a GPTQ tensor reads, decodes and runs like an RTN one).
//   fp8         tensor scale amax / 448 from the original weights (or a fused layer's shared
//               amax); q = E4M3(w / s) * s.
//   nvfp4       global scale amax / (6 * 448) as fp8; per 16-element block an E4M3 block scale
//               from the block's amax / (6 * s2), from the original weights (static groups) or
//               the compensated ones at the block's first column; with four_over_six, per
//               block the better of mapping its amax to 6 or to 4 (the smaller squared error
//               over the block's values; Cook et al. 2025, "Four Over Six"), with the global
//               scale amax / (6 * 256) so that the 4-mapping's 1.5x block scale fits E4M3
//               (as the fouroversix reference quantizer); q = E2M1.
//   int         GPTQ's own grid: per group asymmetric min-max (lib/quant/intg.h) from the
//               compensated weights at the group's first column (or the original ones).
//   squeezellm  the per-row lookup tables and the sparse set are fitted first on the original
//   / uniform   weights (Fisher-weighted k-means, SqueezeLLM's dense-and-sparse split), then
//               GPTQ rounds to the nearest table entry; the sparse positions keep their
//               original values (stored exactly as residuals) and are excluded from the updates.
//   fgmp        block precision (FP8 or NVFP4) and NVFP4 block scales chosen first on the
//               original weights (FGMP's Fisher score and clipping), then GPTQ per element.
#pragma once

#include <cmath>
#include <limits>
#include <memory>
#include <string>

#include "lib/quant/gptq.h"
#include "lib/quant/quantizer.h"

namespace mpq {

/// What a grid is built from.
struct GptqGridInput {
  std::string name;                ///< the module (error messages)
  const float* w = nullptr;        ///< original weights, rows x cols fp32 row-major
  const float* fisher = nullptr;   ///< per-weight Fisher (squeezellm / fgmp fits), or nullptr
  int64_t rows = 0, cols = 0;
  /// fp8 / nvfp4: the tensor amax the per-tensor scale comes from (a fused layer's shared
  /// amax in engine exports, >= the tensor's own); NaN = the tensor's own.
  float tensor_amax = std::numeric_limits<float>::quiet_NaN();
  bool four_over_six = false;      ///< nvfp4: per-block choice of max -> 6 or max -> 4
  int64_t fgmp_fp8_blocks = -1;    ///< fgmp: FP8 block count (-1: the quantizer's own rule)
};

/// The grid of quantizer q's format for one tensor (dispatch through the format table, the
/// row's layout). Throws Error(kUsage) for a format without a GPTQ grid, and as q's encode()
/// does for bad weights.
std::unique_ptr<GptqGrid> make_gptq_grid(const Quantizer& q, const GptqGridInput& in);

}  // namespace mpq
