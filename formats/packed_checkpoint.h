// Linear weights inside a (possibly packed) Hugging Face checkpoint: format detection,
// reading any supported layout back to fp32, and writing packed tensors under ModelOpt's
// names. The layouts themselves are documented in lib/quant/*.h and docs/formats.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/safetensors.h"
#include <nlohmann/json.hpp>

#include "lib/common/shape.h"  // shape_str(), which includers of this header use
#include "lib/quant/act_quant.h"
#include "lib/quant/quantizer.h"

namespace mpq {

/// Format of the linear stored under `prefix` (e.g. "model.layers.0.mlp.down_proj"):
/// "squeezellm" when "<prefix>.lookup_table" exists (both of its grid modes); "fgmp" when
/// "<prefix>.weight_block_map" exists;
/// "nvfp4" when "<prefix>.weight_scale_2" exists; "fp8" when "<prefix>.weight" is F8_E4M3
/// with "<prefix>.weight_scale"; otherwise the dense dtype of "<prefix>.weight" in lower case
/// ("f32", "f16", "bf16"). Throws Error(kInput) naming the folder and tensor when
/// "<prefix>.weight" is missing or the layout is not recognized.
std::string detect_linear_format(const TensorStore& store, const std::string& prefix);

/// The packed tensor of `prefix` in `format` with logical shape [rows, cols], its parts
/// copied from the store. Throws Error(kInput) "<file>: tensor '<prefix>.<part>': ..." when a
/// part is missing or its dtype/shape disagrees with the layout for [rows, cols].
/// squeezellm: the bit width is the lookup_table's width (4/8/16 entries), nnz is
/// sparse_rowptr's last entry; additionally the CSR row pointer must start at 0, never
/// decrease and end at nnz, and the columns must lie in [0, cols), increasing within a row.
/// fgmp: N8 is weight_fp8's first dimension (0 <= N8 <= rows * ceil(cols / 16)), every other
/// part must have fgmp_layout(rows, cols, N8)'s shape (so N4 = R * NB - N8), and the contents
/// must pass fgmp_check() (offsets from 0, non-decreasing, ending at N8; per-row map popcount
/// = offset step; map padding bits 0; finite scales, no E4M3 NaN).
PackedTensor read_packed(const TensorStore& store, const std::string& prefix,
                         const std::string& format, int64_t rows, int64_t cols);

/// fp32 values [rows, cols] (row-major) of the linear `prefix` in any supported layout.
/// `format` and `stored_bytes` (bytes on disk, scales included) are returned through the
/// pointers when non-null. Errors as above; a dense weight of the wrong shape throws
/// "<file>: tensor '<prefix>.weight': shape [a, b] disagrees with config.json [rows, cols]".
std::vector<float> read_linear_f32(const TensorStore& store, const std::string& prefix,
                                   int64_t rows, int64_t cols, std::string* format = nullptr,
                                   std::size_t* stored_bytes = nullptr);

/// The readers behind the format table's FormatInfo::read (use read_packed()):
/// a layout-only format (fp8, nvfp4) whose parts are exactly q.layout(rows, cols);
PackedTensor read_layout_tensor(const TensorStore& store, const std::string& prefix,
                                const Quantizer& q, int64_t rows, int64_t cols);
/// nvfp4 in ModelOpt's names (weight, weight_scale, weight_scale_2) or compressed-tensors'
/// (weight_packed, weight_scale, weight_global_scale = 1 / weight_scale_2, which must be
/// finite and > 0), returned in mpq's (ModelOpt) part names;
PackedTensor read_nvfp4_tensor(const TensorStore& store, const std::string& prefix, int64_t rows,
                               int64_t cols);
/// fp8 with weight_scale [] / [1], or a per-output-channel [rows] / [rows, 1] F32 scale whose
/// entries are all equal (mpq's engine exports; otherwise Error(kInput): mpq's fp8 has one
/// scale per tensor), returned with weight_scale [];
PackedTensor read_fp8_tensor(const TensorStore& store, const std::string& prefix, int64_t rows,
                             int64_t cols);
/// squeezellm (bits from the lookup table, nnz from the row pointer, CSR validated);
PackedTensor read_squeezellm_tensor(const TensorStore& store, const std::string& prefix,
                                    int64_t rows, int64_t cols);
/// fgmp (N8 from weight_fp8, contents validated by fgmp_check()).
PackedTensor read_fgmp_tensor(const TensorStore& store, const std::string& prefix, int64_t rows,
                              int64_t cols);

/// The static input (activation) scale of the linear `prefix` in ModelOpt's meaning
/// (dequantization multiplier: amax / 448 for FP8, amax / (6 * 448) for NVFP4): from
/// "<prefix>.input_scale", or 1 / "<prefix>.input_global_scale" (compressed-tensors NVFP4).
/// NaN when neither exists. Throws Error(kInput) naming the file and tensor when it is not a
/// float scalar or not finite and > 0.
float read_input_scale(const TensorStore& store, const std::string& prefix);

/// What an engine does with the input of linear `module` under the checkpoint's
/// quantization_config `qc` (null: none), the loading rules of docs/formats.md "Engine
/// exports": ModelOpt quant_algo NVFP4 -> kNvfp4 (static global scale, input_scale), FP8 ->
/// kFp8 (static, input_scale), FP8_PER_CHANNEL_PER_TOKEN -> kFp8 (dynamic per token),
/// W4A16_NVFP4 -> kNone, MIXED_PRECISION -> the module's quantized_layers entry (absent:
/// kNone); modules in "ignore" -> kNone; compressed-tensors: the config group whose targets
/// name the module ("Linear", the exact name, or "re:" + regex), its input_activations (null:
/// kNone; num_bits 4 -> kNvfp4, 8 -> kFp8); any other quant_method (mpq-native) -> kNone.
/// *dynamic is set to true for per-token dynamic scales. Throws Error(kInput) naming `file`
/// and the field for a declaration mpq does not emulate (e.g. FP8_PB_WO per-group scales).
ActQuantMode declared_activation(const nlohmann::json& qc, const std::string& module, const std::string& file,
                                 bool* dynamic);

/// Adds every part of `p` to `w` as "<prefix>.<suffix>".
void add_packed(SafetensorsWriter& w, const std::string& prefix, const PackedTensor& p);

}  // namespace mpq
