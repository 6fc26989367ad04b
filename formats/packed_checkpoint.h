// Linear weights inside a (possibly packed) Hugging Face checkpoint: format detection,
// reading any supported layout back to fp32, and writing packed tensors under ModelOpt's
// names. The layouts themselves are documented in lib/quant/*.h and docs/formats.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/safetensors.h"
#include "formats/sharded_safetensors.h"
#include "lib/common/shape.h"  // shape_str(), which includers of this header use
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

/// Adds every part of `p` to `w` as "<prefix>.<suffix>".
void add_packed(SafetensorsWriter& w, const std::string& prefix, const PackedTensor& p);
/// The same, streamed into a sharded writer (formats/sharded_safetensors.h).
void add_packed(ShardedSafetensorsWriter& w, const std::string& prefix, const PackedTensor& p);

}  // namespace mpq
