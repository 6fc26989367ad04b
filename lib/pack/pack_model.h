// mpq-pack's engine: quantize the linear projections of a Hugging Face Llama-family folder
// and write a packed Hugging Face folder, atomically (staged folder, then rename).
//
// Output folder (docs/formats.md):
//   model.safetensors     packed linears under ModelOpt names (lib/quant/*.h), every other
//   (or shards + index)   tensor copied unchanged, streamed in graph order (pack_write_order)
//                         into Hugging Face shards of at most max_shard_bytes
//                         (formats/sharded_safetensors.h); every shard's __metadata__
//                         {"format": "pt", "mpq_format_version": "1", "mpq_logical_shapes":
//                         JSON of padded tensors}
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

#include "formats/hf_config.h"
#include "formats/safetensors.h"
#include "formats/sharded_safetensors.h"
#include "lib/common/layer_range.h"
#include "lib/quant/fgmp.h"
#include "lib/pack/act_calibration.h"
#include "lib/pack/export.h"
#include "calibration/linear_inputs.h"
#include "lib/quant/gptq.h"
#include "lib/quant/quantizer.h"

namespace mpq {

/// How weights are rounded onto a format's grid.
enum class PackMethod {
  kRtn,   ///< each weight on its own (round to nearest, the formats' own fits)
  kGptq,  ///< GPTQ error compensation over calibration windows (calibration/gptq_calibration.h)
};

/// "rtn" | "gptq" -> PackMethod; Error(kUsage) naming --method otherwise.
PackMethod parse_pack_method(const std::string& s);
const char* pack_method_name(PackMethod m);

/// One module's entry of a mixed-precision plan (mpq-search's plan.json, docs/formats.md).
struct PlanEntry {
  std::string candidate;                       ///< the plan's candidate label, e.g. "squeezellm-3bit"
  std::string format;                          ///< a format_table() name, or "source" (kept as stored)
  std::shared_ptr<const Quantizer> quantizer;  ///< null for "source"
  nlohmann::json params;                       ///< recorded per module in quantization_config
  bool gptq = false;                           ///< candidate "+gptq": compensated (needs PackOptions::calib)
  bool four_over_six = false;                  ///< candidate "+gptq-4o6"
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
  /// Calibration windows of the static input scales (lib/pack/input_scales.h) and of GPTQ's
  /// layer Hessians; text empty = none.
  CalibWindowOptions calib;
  /// kGptq needs `calib`: every quantized linear is compensated (lib/quant/gptq.h) in the
  /// sequential pass of calibration/gptq_calibration.h, with the format's own grid
  /// (lib/quant/gptq_grids.h). The output's layout is the format's, as with kRtn.
  PackMethod method = PackMethod::kRtn;
  GptqOptions gptq;                  ///< damping, block size, act order, static groups
  /// nvfp4 under gptq: per block, the better of mapping the block
  /// maximum to 6 or to 4 ("Four Over Six", Cook et al. 2025).
  bool four_over_six = false;
  std::string command_line;          ///< recorded in the manifest
  bool force = false;                ///< replace an existing non-empty output folder
  /// Only these decoder layers (a part of a split run, merged by merge_packed_parts(),
  /// lib/pack/merge_parts.h); end -1 = to the last. The part that starts at layer 0 also
  /// holds the embedding, the one that ends at the last layer the final norm, lm_head and
  /// any other tensor outside the layers. Not with format "fgmp" (its FP8 blocks are
  /// ranked over the whole model).
  LayerRange layers;
  /// Largest output shard in bytes (--max-shard-size); one shard = model.safetensors.
  uint64_t max_shard_bytes = kDefaultMaxShardBytes;
  /// The output head (--lm-head): "source" (info null, the default: copied in its stored
  /// dtype, as ModelOpt, llm-compressor and vLLM expect) or a format label
  /// (parse_format_label(), e.g. "fp8", "nvfp4", "squeezellm-4bit", "int8-g32"), rounded on
  /// its own (RTN, no Fisher, also under --method gptq) as llama.cpp quantizes output.weight
  /// (Q6_K by default for its 4-bit types). Written under "lm_head.<part>" in the format's
  /// layout; only an mpq-native export can express it (engine exports list lm_head as
  /// excluded), so kAuto resolves to kMpq and an engine export is Error(kUsage). A model
  /// whose config ties the head to the embedding (tie_word_embeddings) has no lm_head to
  /// quantize: Error(kInput) naming config.json. "+gptq" is Error(kUsage). An fgmp label
  /// stores its own per-tensor FP8 fraction (fgmp-<p>), outside the layers' global ranking.
  FormatSpec lm_head;
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
  double gptq_seconds = 0.0;         ///< --method gptq: the sequential pass (calibration + compensation)
  /// PackOptions::lm_head not source: the head's bytes on disk (not in quantized_bytes,
  /// which count the decoder layers' linears only; in total_bytes).
  std::size_t lm_head_bytes = 0;
  std::vector<std::string> notes;    ///< the export's notes (modules moved to the source dtype, ...)
};

/// (tensor index, tensor count, tensor name) after each tensor; fgmp first reports its
/// scoring pass as (linear index, linear count, "fgmp block scores: <name>").
using PackProgress = std::function<void(std::size_t, std::size_t, const std::string&)>;

/// The order mpq-pack writes tensors in, as input tensor names: graph order
/// (llama_tensor_shapes: embedding; per layer norms, q/k/v/o, gate/up/down; final norm;
/// lm_head), a store tensor outside the graph after its layer's graph tensors when named
/// "model.layers.<l>.*", else after lm_head (each group sorted); restricted to `range`
/// (see PackOptions::layers). Concatenating the orders of ranges that tile [0, N) gives
/// the order of [0, N).
std::vector<std::string> pack_write_order(const LlamaConfig& cfg, const TensorStore& store, const LayerRange& range);

/// The current time as the manifest's created_utc writes it ("2026-12-01T07:35:55Z").
std::string utc_now();

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
/// be written or exists without `force`, Error(kUsage) naming config.json for layers outside
/// the model or fgmp with a layer range. On any error nothing is left at `out_dir`.
/// Memory: one input tensor (as fp32) and its packed form at a time; fgmp's block scores
/// go to a scratch file in the staging folder.
PackReport pack_model(const std::string& model_dir, const std::string& out_dir,
                      const PackOptions& opt, const PackProgress& progress = nullptr);

}  // namespace mpq
