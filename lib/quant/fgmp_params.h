// Parameters of the FGMP quantizer (lib/quant/fgmp.h), in a header of their own so that
// the format table (lib/quant/quantizer.h, FormatSpec) can hold them.
#pragma once

#include <cstdint>
#include <limits>

namespace mpq {

/// Parameters of FgmpQuantizer.
struct FgmpParams {
  /// How blocks are ranked for FP8.
  enum class Selection {
    kFisher,  ///< FGMP's score sum F_i (Q_nvfp4(w_i) - Q_fp8(w_i))^2 (the method)
    kRandom,  ///< ablation: a uniform random score in [0, 1) per block, from `seed`
    kAmax,    ///< ablation: block amax / tensor amax (blocks holding the tensor's largest
              ///< magnitudes, where NVFP4's absolute error is largest), in [0, 1]
  };
  /// How the NVFP4 block scale is chosen.
  enum class Clipping {
    kWeighted,    ///< search alpha on the clip grid minimizing sum F_i (w_i - Q(w_i))^2
    kUnweighted,  ///< the same search with F_i = 1 (ablation)
    kNone,        ///< alpha = 1: plain round-to-nearest NVFP4 scale, as format nvfp4
  };
  /// Fraction of a tensor's blocks stored in FP8 by encode()/encode_weighted(): the
  /// llround(fp8_fraction * R * NB) blocks of largest score. In [0, 1].
  double fp8_fraction = 0.30;
  /// When set (finite), encode()/encode_weighted() instead store in FP8 exactly the blocks
  /// whose score is >= score_threshold (one global threshold shared by many tensors).
  double score_threshold = std::numeric_limits<double>::quiet_NaN();
  Selection selection = Selection::kFisher;
  Clipping clipping = Clipping::kWeighted;
  uint64_t seed = 0;  ///< random selection only
};

}  // namespace mpq
