// Offline calibration of FGMP's per-layer activation thresholds (mpq-pack --act-calib).
//
// FGMP (fine-grained mixed precision) casts each 16-element block of a linear's input to
// NVFP4 or FP8 at run time: FP8 when its score sum_i g_i (Q_nvfp4(x_i) - Q_fp8(x_i))^2 exceeds
// the module's threshold (lib/quant/act_quant.h), g the module's act_fisher (mean squared
// loss gradient per input channel, calibration/sensitivity.h). Here, per linear module:
//   1. the ORIGINAL fp32 model runs forward over `samples` calibration windows of `seq_len`
//      tokens (sampled starts, calibration/windows.h, seed 0 by default; the text is
//      tokenized with the model's tokenizer, BOS first, as mpq-sensitivity does, or read as
//      .i32 ids), and every linear's input X [T, in] is observed;
//   2. every block score of X is computed with that module's act_fisher;
//   3. threshold = the k-th smallest score, k = round(fp4_fraction * blocks), so that the
//      requested fraction of calibration blocks is NVFP4 (score <= threshold); k = 0 gives
//      -inf (all FP8), k = blocks gives +inf (all NVFP4). Ties at the threshold count as
//      NVFP4, so the achieved fraction can exceed the request; it is reported.
// Every linear module (all 7 projections of every layer) is calibrated, whatever its weight
// format: --exclude keeps weights unquantized, it does not change activation quantization.
// Memory: all scores are kept (4 bytes per block: samples * seq_len * in / 16 per module).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mpq {

/// What mpq-pack --act-calib asks for.
struct ActCalibOptions {
  std::string text;         ///< calibration text (.txt) or int32 ids (.i32); empty = no calibration
  std::string sensitivity;  ///< sensitivity file holding "<module>.act_fisher" F32 [in] for every module
  double fp4_fraction = 0.7;  ///< requested fraction of NVFP4 blocks, in [0, 1]
  int64_t samples = 32;     ///< calibration windows
  int64_t seq_len = 256;    ///< tokens per window
  uint64_t seed = 0;        ///< window sampling (splitmix64)
};

/// The calibration of one linear module.
struct ActModuleCalibration {
  std::vector<float> act_fisher;  ///< [in], copied from the sensitivity file
  float threshold = 0;            ///< FP8 when a block's score > threshold
  int64_t blocks = 0;             ///< calibration blocks scored
  int64_t fp4_blocks = 0;         ///< of which score <= threshold
};

/// The result: per module (by name, "model.layers.0.mlp.down_proj") and the record that goes
/// into quantization_config["activation"] and the manifest: {"method": "fgmp", "block_size":
/// 16, "fp4_fraction", "measured_fp4_fraction", "scales": "dynamic per token",
/// "calibration": {"file", "sha256", "samples", "seq_len", "seed"}, "sensitivity": {"file",
/// "sha256"}}.
struct ActCalibration {
  std::map<std::string, ActModuleCalibration> modules;
  nlohmann::json record;
};

/// The threshold that makes round(fp4_fraction * n) of the n `scores` satisfy score <=
/// threshold (see the file comment; -inf / +inf at the ends; +inf for n = 0).
float fgmp_threshold_for_fraction(std::vector<float> scores, double fp4_fraction);

/// Calibrates every linear module of the dense model in `model_dir` (see the file comment).
/// Throws Error(kUsage) for fp4_fraction outside [0, 1] or an empty `sensitivity`;
/// Error(kInput) naming the file and tensor for a missing model/text/sensitivity file, a
/// missing "<module>.act_fisher", one that is not F32 [in] or holds NaN/Inf/negative
/// values, token ids outside the vocabulary, or a text shorter than one window.
ActCalibration calibrate_act_thresholds(const std::string& model_dir, const ActCalibOptions& opt);

}  // namespace mpq
