// The final check of mpq-search (issue [10/12], "a search that cannot lose"): the solved plan
// and every single format that fits the same budget are packed as mpq-pack packs them
// (lib/pack/pack_model.h: the same quantizers, GPTQ pass for "+gptq" candidates) into a
// scratch folder, loaded by the runtime as mpq-eval loads them, and scored by the mean
// KL(base || quantized) in nats per token on held-in calibration windows (the first
// `tokens` ids of the calibration text, windows of `ctx`). The lowest KL wins; a single
// format that beats the plan replaces it, and the plan file says why.
//
// Cost: one pack and one evaluation of base + candidate per entry (on stories260K about
// 1-60 s each; at 7B every single format is a full pack: use --no-check, or --check-formats
// to name fewer).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "calibration/linear_inputs.h"
#include "lib/search/search.h"

namespace mpq {

/// What the check runs on.
struct PlanCheckOptions {
  CalibWindowOptions calib;  ///< calibration text (its first `tokens` ids are scored) and the GPTQ windows
  int64_t tokens = 8192;     ///< held-in tokens scored (whole windows of ctx)
  int64_t ctx = 256;         ///< window length
  std::string work_dir;      ///< scratch folder (created; packed folders are removed after scoring)
  std::string sensitivity;   ///< the search's sensitivity file (weights squeezellm / fgmp fits)
};

/// One scored configuration.
struct PlanCheckEntry {
  std::string label;  ///< "plan" or a candidate label
  double bytes = 0;   ///< linear bytes as packed
  double bpw = 0;     ///< linear bits per weight as packed
  double kl = 0;      ///< mean KL(base || quantized), nats per scored token
  double ppl = 0;     ///< perplexity on the same windows
};

/// Scores `plan_path` (a plan file) and every label of `singles` (single formats, each for
/// every linear). Throws as pack_model and the runtime do (Error(kInput)/kOutput naming the
/// file), Error(kUsage) for a "+gptq" label without calibration text.
std::vector<PlanCheckEntry> check_plan(const std::string& model_dir, const std::string& plan_path,
                                       const std::vector<std::string>& singles, const PlanCheckOptions& opt,
                                       const SearchProgress& progress = nullptr);

}  // namespace mpq
