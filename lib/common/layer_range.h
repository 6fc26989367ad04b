// A half-open range of decoder layers [begin, end), as `--layers A:B` gives it to
// mpq-sensitivity and mpq-pack for splitting work across processes or machines.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mpq {

/// Layers [begin, end). end = -1 stands for "to the last layer" until resolved.
struct LayerRange {
  int64_t begin = 0;
  int64_t end = -1;

  /// "A:B" (the text --layers takes).
  std::string str() const { return std::to_string(begin) + ":" + std::to_string(end); }
  bool contains(int64_t layer) const { return layer >= begin && layer < end; }
  bool operator==(const LayerRange& o) const { return begin == o.begin && end == o.end; }
};

/// Parses "A:B" -> [A, B), "A:" -> [A, end), ":B" -> [0, B), ":" -> all. Throws
/// Error(kUsage) "--layers '<s>': ..." for anything else (negative numbers included).
LayerRange parse_layer_range(const std::string& s);

/// The decoder layer of an HF tensor name: l for "model.layers.<l>.<anything>", else -1.
int64_t layer_of_tensor(const std::string& name);

/// Checks that the ranges of a split run's parts, sorted by begin, tile [0, num_layers):
/// Error(kInput) naming the offending part's file (files[i] for ranges[i]) when a range
/// overlaps an earlier one or layers are in no part.
void check_layer_tiling(const std::vector<LayerRange>& ranges, const std::vector<std::string>& files,
                        int64_t num_layers);

/// The range with end = -1 replaced by `num_layers`, checked to be non-empty and inside
/// [0, num_layers): otherwise Error(kUsage) "--layers A:B is outside the model: <config>
/// has num_hidden_layers N" (`config` names the config.json read).
LayerRange resolve_layer_range(LayerRange r, int64_t num_layers, const std::string& config);

}  // namespace mpq
