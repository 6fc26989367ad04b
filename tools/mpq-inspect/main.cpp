// mpq-inspect: list the tensors of a model folder or safetensors file with dtype, shape,
// format, bytes and bits per weight, and totals. See docs/cli.md.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "formats/hf_config.h"
#include "formats/packed_checkpoint.h"
#include "lib/pack/export.h"
#include "formats/safetensors.h"
#include "lib/model/llama.h"
#include "tools/common.h"

int main(int argc, char** argv) {
  using namespace mpq;
  namespace fs = std::filesystem;
  CLI::App app{"Show every tensor of a model folder or .safetensors file: dtype, shape, format, "
               "bytes, bits per weight; totals.",
               "mpq-inspect"};
  std::string path, json_out;
  app.add_option("path", path, "Model folder or .safetensors file")->required();
  app.add_option("--json", json_out, "Write the listing as JSON");
  app.set_version_flag("--version", tool::version());

  return tool::run(app, argc, argv, [&]() -> int {
    const TensorStore store = TensorStore::open(path);
    nlohmann::json j;
    j["path"] = path;
    // Modules of a Llama folder: their format and logical shape come from config.json.
    std::map<std::string, std::array<int64_t, 2>> modules;
    const bool is_model = fs::is_directory(path) && fs::exists(fs::path(path) / "config.json");
    if (is_model) {
      const LlamaConfig cfg = load_llama_config(path);
      j["architecture"] = cfg.architecture;
      j["quantization_config"] = cfg.quantization_config;
      for (int64_t l = 0; l < cfg.num_layers; ++l)
        for (int i = 0; i < 7; ++i)
          modules["model.layers." + std::to_string(l) + "." + kLinearNames[i]] = linear_shape(cfg, i);
    }
    std::printf("%-48s %-8s %-8s %-16s %12s %9s\n", "tensor", "dtype", "format", "shape", "bytes", "bpw");
    std::map<std::string, bool> part_of_module;
    int64_t total_params = 0;
    std::size_t total_bytes = 0;
    std::map<std::string, std::pair<int64_t, std::size_t>> by_format;  // params, bytes
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& [module, shape] : modules) {
      const std::string fmt = detect_linear_format(store, module);
      std::size_t bytes = 0;
      for (const auto& n : store.names())
        if (n.rfind(module + ".", 0) == 0 && n.find('.', module.size() + 1) == std::string::npos &&
            n.rfind(module + ".input_", 0) != 0) {  // activation calibration: listed as other tensors
          bytes += store.get(n).nbytes;
          part_of_module[n] = true;
        }
      const int64_t numel = shape[0] * shape[1];
      const double bpw = 8.0 * static_cast<double>(bytes) / static_cast<double>(numel);
      std::printf("%-48s %-8s %-8s %-16s %12zu %9.4f\n", module.c_str(), "-", fmt.c_str(),
                  shape_str({shape[0], shape[1]}).c_str(), bytes, bpw);
      rows.push_back({{"name", module}, {"format", fmt}, {"shape", shape}, {"bytes", bytes}, {"bpw", bpw}});
      total_params += numel;
      total_bytes += bytes;
      by_format[fmt].first += numel;
      by_format[fmt].second += bytes;
    }
    for (const auto& n : store.names()) {
      if (part_of_module.count(n)) continue;
      const TensorView& t = store.get(n);
      const double bpw = 8.0 * static_cast<double>(t.nbytes) / static_cast<double>(std::max<int64_t>(1, t.numel()));
      std::printf("%-48s %-8s %-8s %-16s %12zu %9.4f\n", n.c_str(), dtype_name(t.dtype), "-",
                  shape_str(t.shape).c_str(), t.nbytes, bpw);
      rows.push_back({{"name", n}, {"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"bytes", t.nbytes}, {"bpw", bpw}});
      total_params += t.numel();
      total_bytes += t.nbytes;
      by_format[std::string("other:") + dtype_name(t.dtype)].first += t.numel();
      by_format[std::string("other:") + dtype_name(t.dtype)].second += t.nbytes;
    }
    std::printf("\n%-24s %14s %14s %9s\n", "group", "params", "bytes", "bpw");
    nlohmann::json groups = nlohmann::json::object();
    for (const auto& [fmt, pb] : by_format) {
      const double bpw = 8.0 * static_cast<double>(pb.second) / static_cast<double>(std::max<int64_t>(1, pb.first));
      std::printf("%-24s %14lld %14zu %9.4f\n", fmt.c_str(), static_cast<long long>(pb.first), pb.second, bpw);
      groups[fmt] = {{"params", pb.first}, {"bytes", pb.second}, {"bpw", bpw}};
    }
    const double bpw = 8.0 * static_cast<double>(total_bytes) / static_cast<double>(std::max<int64_t>(1, total_params));
    std::printf("%-24s %14lld %14zu %9.4f\n", "total", static_cast<long long>(total_params), total_bytes, bpw);
    j["tensors"] = rows;
    j["groups"] = groups;
    j["total"] = {{"params", total_params}, {"bytes", total_bytes}, {"bpw", bpw}};
    for (const auto& f : store.files()) {
      if (f->metadata().empty()) continue;
      const std::string fname = fs::path(f->path()).filename().string();
      j["metadata"][fname] = f->metadata();
      std::printf("\nmetadata of %s:\n", fname.c_str());
      for (const auto& [k, v] : f->metadata())
        std::printf("  %-22s %s\n", k.c_str(), v.size() > 160 ? (v.substr(0, 157) + "...").c_str() : v.c_str());
    }
    if (is_model) {
      // Which engines load the folder, by their loading rules (lib/pack/export.h).
      std::printf("\nengines:\n");
      nlohmann::json engines = nlohmann::json::array();
      for (const EngineVerdict& v : engine_compatibility(path)) {
        std::printf("  %-10s %-8s %s\n", v.engine.c_str(), v.loads ? "loads" : "refuses", v.reason.c_str());
        for (const std::string& n : v.notes) std::printf("  %-10s note: %s\n", "", n.c_str());
        engines.push_back({{"engine", v.engine}, {"loads", v.loads}, {"reason", v.reason}, {"notes", v.notes}});
      }
      j["engines"] = engines;
      // The export record mpq-pack left: modules kept in the source dtype and why.
      const fs::path man = fs::path(path) / "mpq_manifest.json";
      if (fs::exists(man)) {
        std::ifstream f(man);
        nlohmann::json m;
        try {
          m = nlohmann::json::parse(f);
        } catch (const nlohmann::json::exception& e) {
          throw_input(man.string(), std::string("not JSON: ") + e.what());
        }
        if (m.contains("export") && m["export"].is_object()) {
          j["export"] = m["export"];
          const auto& ex = m["export"];
          if (ex.contains("kind") && ex["kind"].is_string())
            std::printf("\nexport: %s\n", ex["kind"].get<std::string>().c_str());
          if (ex.contains("notes") && ex["notes"].is_array())
            for (const auto& n : ex["notes"])
              if (n.is_string()) std::printf("  note: %s\n", n.get<std::string>().c_str());
        }
      }
    }
    if (!json_out.empty()) tool::write_json(json_out, j);
    return 0;
  });
}
