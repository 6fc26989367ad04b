// mpq-pack's engine: quantize the linear projections of a Hugging Face Llama-family folder
// and write a packed Hugging Face folder, atomically (staged folder, then rename).
//
// Output folder (docs/formats.md):
//   model.safetensors     packed linears under ModelOpt names (lib/quant/*.h), every other
//                         tensor copied unchanged; __metadata__ {"format": "pt",
//                         "mpq_format_version": "1", "mpq_logical_shapes": JSON of padded tensors}
//   config.json           the input's, plus "quantization_config" as ModelOpt writes it
//                         (squeezellm/uniform: {"quant_method": "squeezellm", "wbits", "grid",
//                         "outlier_pct", "sensitive_pct", "fisher_weighted", "exclude_modules",
//                         "producer"})
//                         (fgmp: {"quant_method": "fgmp", "block_size": 16, "fp8_fraction",
//                         "fp8_blocks", "total_blocks", "target_bpw" (if given), "selection",
//                         "clipping", "clip_grid", "fisher_weighted", "score_threshold", ...})
//   hf_quant_config.json  ModelOpt's producer/quantization record (older vLLM loaders read
//                         it); not written for squeezellm/uniform/fgmp
//   mpq_manifest.json     tool version, command line, sha256 of every input file, per-tensor
//                         format, logical shape, bytes and bits per weight, totals
//   tokenizer files       copied (tokenizer.model, tokenizer_config.json, ...)
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lib/quant/fgmp.h"
#include "lib/pack/act_calibration.h"
#include "lib/pack/export.h"
#include "calibration/linear_inputs.h"
#include "lib/quant/quantizer.h"

namespace mpq {

/// One module's entry of a mixed-precision plan (mpq-search's plan.json, docs/formats.md).
struct PlanEntry {
  std::string candidate;                       ///< the plan's candidate label, e.g. "squeezellm-3bit"
  std::string format;                          ///< a format_table() name, or "source" (kept as stored)
  std::shared_ptr<const Quantizer> quantizer;  ///< null for "source"
  nlohmann::json params;                       ///< recorded per module in quantization_config
};

struct PackOptions {
  /// A format_table() name: "nvfp4", "fp8", "squeezellm", "uniform", "fgmp"; or "plan" with
  /// `plan` set (one format per module).
  std::string format;
  QuantizerParams params;            ///< bits and sparse percentages (squeezellm, uniform)
  /// Sensitivity file (formats/sensitivity_file.h) whose "<module>.fisher" F32 [out, in]
  /// weights the squeezellm fit; empty = uniform weights (then sensitive_pct is not used
  /// and recorded as 0). Ignored by the other formats.
  std::string sensitivity;
  /// fgmp: selection, clipping, seed, and fp8_fraction = the fraction of ALL quantized blocks
  /// (over every quantized tensor) stored in FP8, chosen by one global ranking of the block
  /// scores (score_threshold is ignored: the packer derives it).
  FgmpParams fgmp;
  /// fgmp: when > 0, replaces fgmp.fp8_fraction: the largest global FP8 block count whose
  /// PackReport::quantized_bpw() (all parts of the quantized linears) is <= target_bpw.
  double target_bpw = 0.0;
  std::vector<std::string> exclude;  ///< ECMAScript regexes over module names ("model.layers.0.mlp.down_proj")
  /// FGMP activation thresholds (lib/pack/act_calibration.h), any format; act.text empty =
  /// none. Adds "<module>.input_act_fisher" F32 [in] and "<module>.input_fgmp_threshold"
  /// F32 [] for every linear module and quantization_config["activation"].
  ActCalibOptions act;
  /// format "plan": every linear module of the model -> its entry (modules missing from the
  /// plan, or plan modules the model lacks, are Error(kInput) naming `plan_file`). The
  /// sensitivity file, when given, weights squeezellm and fgmp entries as in mpq-search.
  std::map<std::string, PlanEntry> plan;
  std::string plan_file;             ///< recorded in the manifest and in error messages
  /// The checkpoint contract (lib/pack/export.h): kAuto picks modelopt, then
  /// compressed-tensors, then mpq-native, whichever first expresses the pack.
  ExportKind export_kind = ExportKind::kAuto;
  /// Engine exports: what the engine does with activations. kStatic needs `calib`.
  ActScheme act_scheme = ActScheme::kNone;
  /// Calibration windows of the static input scales (lib/pack/input_scales.h); text empty = none.
  CalibWindowOptions calib;
  std::string command_line;          ///< recorded in the manifest
  bool force = false;                ///< replace an existing non-empty output folder
};

/// Per-tensor record of the manifest.
struct PackedTensorRecord {
  std::string name;                  ///< module name, or tensor name for copied tensors
  std::string format;                ///< "nvfp4", "fp8", or the source dtype ("f32", ...)
  std::vector<int64_t> shape;        ///< logical shape
  std::size_t bytes = 0;             ///< bytes on disk, scales included
  double bpw = 0;                    ///< bytes * 8 / numel
};

struct PackReport {
  std::vector<PackedTensorRecord> tensors;
  int64_t quantized_params = 0;      ///< weights in quantized linears
  std::size_t quantized_bytes = 0;
  int64_t total_params = 0;          ///< every tensor's logical numel
  std::size_t total_bytes = 0;       ///< model.safetensors payload bytes
  double quantized_bpw() const;      ///< quantized_bytes * 8 / quantized_params
  double model_bpw() const;          ///< total_bytes * 8 / total_params
  double bpw_4096x4096 = 0;          ///< the same format on one 4096 x 4096 layer
  nlohmann::json manifest;           ///< what mpq_manifest.json holds
  ExportKind export_kind = ExportKind::kMpq;  ///< the resolved export
  std::vector<std::string> notes;    ///< the export's notes (modules moved to the source dtype, ...)
};

/// (tensor index, tensor count, tensor name) after each tensor.
using PackProgress = std::function<void(std::size_t, std::size_t, const std::string&)>;

/// Packs `model_dir` into `out_dir` under the export `opt.export_kind` (resolve_export(),
/// lib/pack/export.h: fused q/k/v and gate/up share one tensor scale in engine exports, NVFP4
/// linears whose in_features is not a multiple of 16 stay in the source dtype there). Throws
/// Error(kInput) for a bad input (naming file and
/// tensor: NaN/Inf weights, shapes that disagree with config.json, unsupported architecture,
/// a sensitivity file without "<module>.fisher" of shape [out, in] for a quantized module,
/// or, with act.text, errors of calibrate_act_thresholds()),
/// Error(kUsage) for an unknown format or bad regex, an fgmp target_bpw below the size with
/// 0% FP8, an fgmp fp8_fraction outside [0, 1], an export that cannot express the pack, or
/// act_scheme kStatic without calibration text, Error(kOutput) when the output cannot
/// be written or exists without `force`. On any error nothing is left at `out_dir`.
PackReport pack_model(const std::string& model_dir, const std::string& out_dir,
                      const PackOptions& opt, const PackProgress& progress = nullptr);

}  // namespace mpq
