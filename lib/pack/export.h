// Engine exports of a packed checkpoint (mpq-pack --export): which serving-engine contract a
// folder follows, resolved and checked before any output is written, and the tensors and
// config records each contract needs. docs/formats.md "Engine exports" has the table of every
// file, key, tensor, dtype and shape with the reader source that requires it.
//
// Sources (read from the readers' code, not from mpq's docs):
//   vLLM vllm/model_executor/layers/quantization/modelopt.py (ModelOptFp8LinearMethod,
//     ModelOptFp8PcPtLinearMethod, ModelOptNvFp4LinearMethod, ModelOptNvFp4W4A16LinearMethod,
//     ModelOptMixedPrecisionConfig), compressed_tensors/compressed_tensors.py and its schemes
//     (W4A4Fp4, W4A16Fp4, W8A8Fp8, W8A16Fp8), utils/quant_utils.py is_layer_skipped,
//     vllm/config/model.py _verify_quantization / _parse_quant_hf_config;
//   NVIDIA ModelOpt modelopt/torch/export/unified_export_hf.py, quant_utils.py,
//     qtensor/nvfp4_tensor.py;
//   compressed-tensors quantization/quant_args.py, compressors (nvfp4-pack-quantized,
//     float-quantized), converters/modelopt_nvfp4.py (1 / weight_scale_2 = weight_global_scale).
//
// The rules every engine export follows:
//   - q/k/v and gate/up are one fused layer in the engine (qkv_proj, gate_up_proj): the shards
//     share one format, and the tensor-scale formats share one per-tensor scale (vLLM takes the
//     max of the shards' weight_scale_2 without rescaling block scales, and requantizes FP8
//     shards to the max weight_scale), so mpq encodes every shard with the group's amax;
//   - NVFP4 needs in_features % 16 == 0 (vLLM ModelOptNvFp4LinearMethod.create_weights
//     "Unsupported model when in features size is not multiple of 16"): such a linear is kept
//     in the source dtype and listed in ignore / exclude_modules;
//   - exactly the tensors of the declared scheme are written (vLLM's loader raises KeyError on
//     an unknown name and leaves a missing scale uninitialized);
//   - lm_head is always listed as excluded (newer vLLM quantizes ParallelLMHead otherwise).
// Formats no engine reads (squeezellm LUTs, fgmp blocks, padded rows) are written as an
// mpq-native checkpoint, quant_method "mpq", which vLLM refuses by name ("Unknown
// quantization method: mpq").
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/hf_config.h"
#include "lib/quant/quantizer.h"

namespace mpq {

/// Which contract a packed folder follows.
enum class ExportKind {
  kAuto,               ///< the first of modelopt, compressed-tensors, mpq that can express the pack
  kMpq,                ///< mpq-native: quant_method "mpq"; every format; no engine loads it
  kModelOpt,           ///< NVIDIA ModelOpt (vLLM "modelopt", TensorRT-LLM): fp8, nvfp4, mixed
  kCompressedTensors,  ///< compressed-tensors (llm-compressor; vLLM "compressed-tensors")
};

/// "auto", "mpq", "modelopt", "compressed-tensors"; parse throws Error(kUsage) otherwise.
const char* export_name(ExportKind k);
ExportKind parse_export(const std::string& name);

/// What the engine does with a quantized linear's input.
enum class ActScheme {
  kNone,     ///< weight-only: activations stay in the model dtype (W4A16 / W8A16)
  kStatic,   ///< per-tensor scale calibrated offline (input_scale): W4A4 NVFP4, W8A8 FP8
  kDynamic,  ///< FP8 per-token scale computed at run time (FP8 only)
};

/// "none", "static", "dynamic"; parse throws Error(kUsage) otherwise.
const char* act_scheme_name(ActScheme a);
ActScheme parse_act_scheme(const std::string& name);

/// The export of one linear module after the engine rules.
struct ExportModule {
  const FormatInfo* format = nullptr;  ///< null: kept in the source dtype
  std::string note;                    ///< why it was moved to the source dtype ("" if not)
  int group = -1;                      ///< index into ExportPlan::groups (scale shared), -1 alone
};

/// A resolved export: the contract, the activation scheme and every module's fate.
struct ExportPlan {
  ExportKind kind = ExportKind::kMpq;  ///< never kAuto
  ActScheme act = ActScheme::kNone;
  std::map<std::string, ExportModule> modules;       ///< every linear module of the model
  std::vector<std::vector<std::string>> groups;      ///< shards sharing one tensor scale
  std::vector<std::string> notes;                    ///< one line each, for stderr

  /// The quantization_config.quant_algo of a ModelOpt export ("NVFP4", "W4A16_NVFP4", "FP8",
  /// "FP8_PER_CHANNEL_PER_TOKEN", "MIXED_PRECISION"), or of one module's entry.
  std::string modelopt_algo() const;
  std::string modelopt_algo(const FormatInfo& f) const;
  /// Modules kept in the source dtype, in layer order, with "lm_head" first.
  std::vector<std::string> excluded() const;
};

/// Resolves the export of a pack: `formats` maps every linear module of `cfg` to its format
/// row (nullptr = kept in the source dtype by --exclude or a plan's "source"). Applies the
/// rules of the file comment and, for kAuto, picks modelopt, then compressed-tensors, then mpq.
/// Throws Error(kUsage) when the requested kind or act scheme cannot express the pack
/// (e.g. --export modelopt with squeezellm, ModelOpt FP8 weight-only, --activations with
/// --export mpq, dynamic NVFP4), and Error(kInput) naming `source` (the plan file or the
/// --exclude flag) and the module when the shards of a fused layer disagree.
ExportPlan resolve_export(const LlamaConfig& cfg, const std::map<std::string, const FormatInfo*>& formats,
                          ExportKind kind, ActScheme act, const std::string& source);

/// The fused engine layer a module belongs to: "model.layers.3.self_attn.qkv_proj" for q/k/v,
/// "...mlp.gate_up_proj" for gate/up, the module itself otherwise.
std::string fused_layer_name(const std::string& module);

/// The tensors a linear packed by mpq (`p`, mpq's internal fp8 / nvfp4 layout: weight,
/// weight_scale[, weight_scale_2]) becomes in `plan`'s contract, each a PackedPart whose
/// suffix goes after "<module>.". `input_amax` is the module's calibrated input amax
/// (lib/pack/input_scales.h) for ActScheme::kStatic, ignored otherwise.
///   modelopt nvfp4: weight, weight_scale, weight_scale_2 [] (+ input_scale [] = amax/2688)
///   modelopt fp8:   weight, weight_scale [] (+ input_scale [] = amax/448); dynamic:
///                   weight_scale [out] (FP8_PER_CHANNEL_PER_TOKEN, the tensor scale repeated)
///   compressed-tensors nvfp4: weight_packed, weight_scale, weight_global_scale [1] =
///                   1 / weight_scale_2 (+ input_global_scale [1] = 2688 / amax)
///   compressed-tensors fp8: weight, weight_scale [1] (+ input_scale [1]); dynamic:
///                   weight_scale [out, 1]
///   mpq: p's parts unchanged.
std::vector<PackedPart> export_parts(const ExportPlan& plan, const PackedTensor& p, float input_amax);

/// config.json's "quantization_config" for the plan (`native` is the mpq-native record used
/// for ExportKind::kMpq, extended with "quant_method": "mpq"). Engine exports: ModelOpt's
/// flat form (quant_method "modelopt", quant_algo, group_size, ignore, producer, and
/// quantized_layers for MIXED_PRECISION) or compressed-tensors' QuantizationConfig
/// (quant_method, format, quantization_status, ignore, config_groups; only keys
/// compressed-tensors' pydantic models accept).
nlohmann::json export_quantization_config(const ExportPlan& plan, const nlohmann::json& native);

/// hf_quant_config.json for a ModelOpt export (the legacy record older loaders and
/// TensorRT-LLM read: producer.name "modelopt", quantization.{quant_algo, kv_cache_quant_algo,
/// group_size, exclude_modules[, quantized_layers]}); null for the other kinds.
nlohmann::json export_hf_quant_config(const ExportPlan& plan);

/// One engine's verdict on a folder (mpq-inspect).
struct EngineVerdict {
  std::string engine;   ///< "vLLM (modelopt)", "vLLM (compressed-tensors)", "TensorRT-LLM", "transformers"
  bool loads = false;
  std::string reason;               ///< why not ("" when it loads)
  std::vector<std::string> notes;   ///< version requirements and kernel constraints when it loads
};

/// Which engines can load the folder `model_dir` and why not, from its config.json and tensors,
/// by the rules above (the quant_method, the declared algorithm's tensor set, fused-shard scale
/// equality, dimension limits). Throws Error(kInput) for an unreadable folder.
std::vector<EngineVerdict> engine_compatibility(const std::string& model_dir);

}  // namespace mpq
