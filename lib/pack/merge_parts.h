// Merging the parts of a split mpq-pack run (--layers A:B on ranges that tile the model)
// into the folder one run over all layers writes.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "lib/pack/pack_model.h"

namespace mpq {

/// (part index, part count, part folder) as each part is copied.
using MergeProgress = std::function<void(std::size_t, std::size_t, const std::string&)>;

/// Combines packed part folders into `out`, written atomically (staged, then renamed):
///   - weight shards: every part's tensors in part order (by layer range), each part in its
///     own write order (pack_write_order), re-sharded with the parts' max_shard_bytes and
///     shard metadata: byte-identical to the shards and index of one run (tested);
///   - config.json, hf_quant_config.json, tokenizer files: the parts' (identical) copies;
///   - mpq_manifest.json: the parts' manifest with the union of their "tensors", summed
///     "totals" (bpw recomputed as PackReport does), "layers" of the whole model, and this
///     run's created_utc and `command_line`: equal to one run's manifest but for those two.
/// Checks before writing anything, each Error(kInput) naming the part and what is wrong: a
/// part that is not an mpq-pack output (no manifest, no "layers", wrong JSON types), parts
/// of different inputs (inputs_sha256 differ: different model, plan or sensitivity file) or
/// different settings (format, quantization_config, tool, max_shard_bytes, shard metadata,
/// or config/tokenizer files that differ), ranges that overlap or leave layers out, a part
/// whose tensors lie outside its layers or repeat another part's, a shard missing or
/// malformed (TensorStore's checks). Error(kUsage) for no parts; Error(kOutput) for the
/// output (exists without `force`, cannot be written). Memory: tensors are streamed from
/// the parts' mappings; nothing is held.
PackReport merge_packed_parts(const std::vector<std::string>& parts, const std::string& out, bool force,
                              const std::string& command_line, const MergeProgress& progress = nullptr);

}  // namespace mpq
