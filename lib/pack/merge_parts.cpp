#include "lib/pack/merge_parts.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "formats/safetensors.h"
#include "formats/sharded_safetensors.h"
#include "formats/staged_folder.h"
#include "lib/common/error.h"
#include "lib/common/layer_range.h"
#include "lib/common/sha256.h"

namespace mpq {
namespace fs = std::filesystem;
namespace {

// Manifest fields a part may differ in (everything else must be equal across parts).
const std::set<std::string> kPerPartFields = {"tensors", "totals", "layers", "created_utc", "command_line", "source"};

bool is_weight_file(const std::string& f) {
  return f == "model.safetensors.index.json" || (f.rfind("model", 0) == 0 && f.size() > 12 &&
                                                  f.compare(f.size() - 12, 12, ".safetensors") == 0);
}

int64_t get_count(const nlohmann::json& j, const char* key, const std::string& file, const std::string& where) {
  if (!j.is_object() || !j.contains(key) || !j[key].is_number_integer())
    throw_input(file, where + "." + key + " is missing or not an integer");
  return j[key].get<int64_t>();
}

struct Part {
  std::string dir, manifest_path;
  nlohmann::json manifest;
  int64_t begin = 0, end = 0, num_layers = 0;
  std::unique_ptr<TensorStore> store;
  std::vector<std::string> order;                  // tensors in write order
  std::map<std::string, std::string> other_files;  // non-weight file -> sha256
};

Part read_part(const std::string& dir) {
  Part p;
  p.dir = dir;
  p.manifest_path = (fs::path(dir) / "mpq_manifest.json").string();
  std::ifstream in(p.manifest_path, std::ios::binary);
  if (!in) throw_input(p.manifest_path, "cannot open: not an mpq-pack output folder");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    p.manifest = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception&) {
    throw_input(p.manifest_path, "not valid JSON");
  }
  if (!p.manifest.is_object()) throw_input(p.manifest_path, "not a JSON object");
  if (!p.manifest.contains("layers"))
    throw_input(p.manifest_path, "no 'layers' entry: not written by an mpq-pack that splits by layers");
  const nlohmann::json& l = p.manifest["layers"];
  p.begin = get_count(l, "begin", p.manifest_path, "layers");
  p.end = get_count(l, "end", p.manifest_path, "layers");
  p.num_layers = get_count(l, "num_layers", p.manifest_path, "layers");
  if (p.begin < 0 || p.end > p.num_layers || p.begin >= p.end)
    throw_input(p.manifest_path, "layers " + std::to_string(p.begin) + ":" + std::to_string(p.end) + " outside [0, " +
                                     std::to_string(p.num_layers) + ")");
  for (const char* key : {"tensors", "totals"})
    if (!p.manifest.contains(key) || !p.manifest[key].is_object())
      throw_input(p.manifest_path, std::string(key) + " is missing or not an object");
  get_count(p.manifest, "max_shard_bytes", p.manifest_path, "manifest");
  p.store = std::make_unique<TensorStore>(TensorStore::open(dir));  // index and shards checked here
  p.order = names_in_write_order(*p.store);
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string f = e.path().filename().string();
    if (!e.is_regular_file() || is_weight_file(f) || f == "mpq_manifest.json") continue;
    p.other_files[f] = sha256_file(e.path().string());
  }
  if (ec) throw_input(dir, "cannot list: " + ec.message());
  return p;
}

}  // namespace

PackReport merge_packed_parts(const std::vector<std::string>& dirs, const std::string& out, bool force,
                              const std::string& command_line, const MergeProgress& progress) {
  if (dirs.empty()) throw Error(ExitCode::kUsage, "mpq-merge: no parts given");
  std::vector<Part> parts;
  for (const std::string& d : dirs) parts.push_back(read_part(d));
  std::sort(parts.begin(), parts.end(), [](const Part& a, const Part& b) { return a.begin < b.begin; });

  // Same inputs and settings: every manifest field but the per-part ones, the other files,
  // and the shards' metadata.
  const Part& ref = parts.front();
  const std::map<std::string, std::string> ref_meta = ref.store->files().front()->metadata();
  // Inputs first: a part packed from another model, plan or sensitivity file is the
  // likeliest mistake.
  std::vector<std::string> keys = {"inputs_sha256", "plan", "sensitivity"};
  for (const auto& [key, value] : ref.manifest.items())
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) keys.push_back(key);
  for (const Part& p : parts) {
    for (const std::string& key : keys) {
      if (kPerPartFields.count(key) || !ref.manifest.contains(key)) continue;
      const nlohmann::json& value = ref.manifest[key];
      if (!p.manifest.contains(key) || p.manifest[key] != value)
        throw_input(p.manifest_path, key + (p.manifest.contains(key) ? " differs from " : " is missing, unlike ") +
                                         ref.manifest_path +
                                         (key == "inputs_sha256" || key == "plan" || key == "sensitivity"
                                              ? ": the parts were packed from different inputs"
                                              : ": the parts were packed with different settings"));
    }
    for (const auto& [key, value] : p.manifest.items())
      if (!kPerPartFields.count(key) && !ref.manifest.contains(key))
        throw_input(p.manifest_path, key + " is not in " + ref.manifest_path);
    if (p.other_files != ref.other_files)
      throw_input(p.dir, "its config, tokenizer or other files differ from those of " + ref.dir);
    for (const auto& f : p.store->files())
      if (f->metadata() != ref_meta)
        throw_input(f->path(), "shard __metadata__ differs from " + ref.store->files().front()->path());
  }
  // Layer ranges: no overlap, no gap.
  const int64_t N = ref.num_layers;
  {
    std::vector<LayerRange> ranges;
    std::vector<std::string> files;
    for (const Part& p : parts) {
      ranges.push_back({p.begin, p.end});
      files.push_back(p.manifest_path);
    }
    check_layer_tiling(ranges, files, N);
  }
  // Each tensor belongs to its part's layers (tensors outside the layers: first or last part).
  std::set<std::string> seen;
  std::vector<TensorSpec> plan;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const Part& p = parts[i];
    for (const std::string& name : p.order) {
      const int64_t l = layer_of_tensor(name);
      const bool ok = l >= 0 ? p.begin <= l && l < p.end : (i == 0 || i + 1 == parts.size());
      if (!ok)
        throw_input(p.store->get(name).file, "tensor '" + name + "' lies outside the part's layers " +
                                                 std::to_string(p.begin) + ":" + std::to_string(p.end));
      if (!seen.insert(name).second)
        throw_input(p.store->get(name).file, "tensor '" + name + "' is also in another part");
      const TensorView& t = p.store->get(name);
      plan.push_back(TensorSpec{name, t.dtype, t.shape, t.nbytes});
    }
  }

  StagedFolder stage(out, force);
  ShardedSafetensorsWriter writer(stage.path(), ref.manifest["max_shard_bytes"].get<uint64_t>(), ref_meta);
  writer.plan(plan);  // every tensor is known: headers first, data straight into place
  for (std::size_t i = 0; i < parts.size(); ++i) {
    for (const std::string& name : parts[i].order) {
      const TensorView& t = parts[i].store->get(name);
      writer.add(name, t.dtype, t.shape, t.data, t.nbytes);
    }
    if (progress) progress(i + 1, parts.size(), parts[i].dir);
  }
  writer.finish();
  for (const auto& [f, sha] : ref.other_files) {
    (void)sha;
    std::error_code ec;
    fs::copy_file(fs::path(ref.dir) / f, fs::path(stage.path()) / f, fs::copy_options::overwrite_existing, ec);
    if (ec) throw_output((fs::path(stage.path()) / f).string(), "cannot copy: " + ec.message());
  }

  // The manifest of one run: union of the tensors, summed totals.
  PackReport rep;
  nlohmann::json manifest = ref.manifest;
  nlohmann::json tensors = nlohmann::json::object();
  for (const Part& p : parts) {
    for (const auto& [name, rec] : p.manifest["tensors"].items()) tensors[name] = rec;
    const nlohmann::json& t = p.manifest["totals"];
    rep.quantized_params += get_count(t, "quantized_params", p.manifest_path, "totals");
    rep.quantized_bytes += static_cast<std::size_t>(get_count(t, "quantized_bytes", p.manifest_path, "totals"));
    rep.total_params += get_count(t, "total_params", p.manifest_path, "totals");
    rep.total_bytes += static_cast<std::size_t>(get_count(t, "total_bytes", p.manifest_path, "totals"));
  }
  manifest["tensors"] = tensors;
  manifest["totals"]["quantized_params"] = rep.quantized_params;
  manifest["totals"]["quantized_bytes"] = rep.quantized_bytes;
  manifest["totals"]["quantized_bpw"] = rep.quantized_bpw();
  manifest["totals"]["total_params"] = rep.total_params;
  manifest["totals"]["total_bytes"] = rep.total_bytes;
  manifest["totals"]["model_bpw"] = rep.model_bpw();
  manifest["layers"] = {{"begin", 0}, {"end", N}, {"num_layers", N}};
  manifest["created_utc"] = utc_now();
  manifest["command_line"] = command_line;
  const std::string text = manifest.dump(2) + "\n";
  write_file_atomic((fs::path(stage.path()) / "mpq_manifest.json").string(), text.data(), text.size());
  stage.publish();
  rep.manifest = manifest;
  const auto& b = ref.manifest["totals"]["bpw_4096x4096"];
  rep.bpw_4096x4096 = b.is_number() ? b.get<double>() : std::numeric_limits<double>::quiet_NaN();
  return rep;
}

}  // namespace mpq
