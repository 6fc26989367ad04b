#include "lib/common/layer_range.h"

#include <cctype>

#include "lib/common/error.h"

namespace mpq {
namespace {

// A non-negative decimal integer, or -1 for an empty string; Error(kUsage) otherwise.
int64_t parse_index(const std::string& s, const std::string& whole) {
  if (s.empty()) return -1;
  if (s.size() > 12) throw Error(ExitCode::kUsage, "--layers '" + whole + "': layer index too large");
  for (char c : s)
    if (!std::isdigit(static_cast<unsigned char>(c)))
      throw Error(ExitCode::kUsage, "--layers '" + whole + "': expected non-negative integers A:B");
  return std::stoll(s);
}

}  // namespace

LayerRange parse_layer_range(const std::string& s) {
  const auto colon = s.find(':');
  if (colon == std::string::npos) throw Error(ExitCode::kUsage, "--layers '" + s + "': expected A:B");
  LayerRange r;
  const int64_t a = parse_index(s.substr(0, colon), s);
  r.begin = a < 0 ? 0 : a;
  r.end = parse_index(s.substr(colon + 1), s);
  return r;
}

int64_t layer_of_tensor(const std::string& name) {
  static const std::string kPrefix = "model.layers.";
  if (name.compare(0, kPrefix.size(), kPrefix) != 0) return -1;
  std::size_t i = kPrefix.size();
  int64_t l = 0;
  bool digits = false;
  while (i < name.size() && std::isdigit(static_cast<unsigned char>(name[i])) && l < (int64_t{1} << 40)) {
    l = l * 10 + (name[i++] - '0');
    digits = true;
  }
  return digits && i < name.size() && name[i] == '.' ? l : -1;
}

void check_layer_tiling(const std::vector<LayerRange>& ranges, const std::vector<std::string>& files,
                        int64_t num_layers) {
  MPQ_ASSERT(ranges.size() == files.size() && !ranges.empty());
  int64_t next = 0;
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    const LayerRange& r = ranges[i];
    if (r.begin < next)
      throw_input(files[i], "layers " + r.str() + " overlap an earlier part (layers below " + std::to_string(next) +
                                " are covered)");
    if (r.begin > next)
      throw_input(files[i], "layers " + std::to_string(next) + ":" + std::to_string(r.begin) +
                                " are in no part (this part starts at " + std::to_string(r.begin) + ")");
    next = r.end;
  }
  if (next != num_layers)
    throw_input(files.back(), "layers " + std::to_string(next) + ":" + std::to_string(num_layers) +
                                  " are in no part (num_layers " + std::to_string(num_layers) + ")");
}

LayerRange resolve_layer_range(LayerRange r, int64_t num_layers, const std::string& config) {
  if (r.end < 0) r.end = num_layers;
  if (r.begin < 0 || r.end > num_layers || r.begin >= r.end)
    throw Error(ExitCode::kUsage, "--layers " + r.str() + " is empty or outside the model: " + config +
                                      " has num_hidden_layers " + std::to_string(num_layers));
  return r;
}

}  // namespace mpq
