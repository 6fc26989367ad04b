// Static activation scales of engine exports (mpq-pack --activations static): per linear
// module, the largest |x| of its input over calibration windows, as ModelOpt's max
// calibrator records it ("amax"), from which the exporters derive the scales vLLM reads:
//   ModelOpt FP8 / compressed-tensors FP8   input_scale        = amax / 448
//   ModelOpt NVFP4                          input_scale        = amax / (6 * 448)
//   compressed-tensors NVFP4                input_global_scale = (6 * 448) / amax
// (ModelOpt modelopt/torch/export/quant_utils.py get_activation_scaling_factor; compressed-
// tensors helpers.generate_gparam; docs/formats.md "Engine exports").
// The forward passes run the ORIGINAL dense fp32 model (calibration/linear_inputs.h), as
// ModelOpt calibrates before it quantizes weights. The shards of a fused layer read the same
// input (q/k/v, gate/up), so they get the same amax.
#pragma once

#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "calibration/linear_inputs.h"

namespace mpq {

/// The result: amax per module ("model.layers.0.self_attn.q_proj"), and the record that goes
/// into the manifest: {"method": "max", "calibration": {"file", "sha256", "samples",
/// "seq_len", "seed"}}.
struct InputAmax {
  std::map<std::string, float> amax;
  nlohmann::json record;
};

/// Calibrates every linear module of the dense model at `model_dir` (see the file comment).
/// Throws Error(kInput) naming the file for a missing model or text, token ids outside the
/// vocabulary, a text shorter than one window, or an input amax that is not finite and
/// positive (naming the module: a NaN activation, or a module that never sees a non-zero).
InputAmax calibrate_input_amax(const std::string& model_dir, const CalibWindowOptions& opt);

}  // namespace mpq
