#include "lib/pack/pack_model.h"

#include <array>
#include <map>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <regex>

#include "formats/hf_config.h"
#include "formats/output_dir.h"
#include "formats/packed_checkpoint.h"
#include "formats/safetensors.h"
#include "formats/sensitivity_file.h"
#include "lib/common/error.h"
#include "lib/common/sha256.h"
#include "lib/model/llama.h"
#include "lib/quant/quantizer.h"

namespace mpq {
namespace fs = std::filesystem;

namespace {

const char* kTokenizerFiles[] = {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                                 "tokenizer.json", "generation_config.json"};

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// True for "model.layers.<l>.<projection>" with l < num_layers and a kLinearNames projection.
bool is_linear_module(const LlamaConfig& cfg, const std::string& module) {
  const std::string prefix = "model.layers.";
  if (module.compare(0, prefix.size(), prefix) != 0) return false;
  const std::size_t dot = module.find('.', prefix.size());
  const std::string layer = module.substr(prefix.size(), dot == std::string::npos ? 0 : dot - prefix.size());
  if (layer.empty() || layer.size() > 18 || layer.find_first_not_of("0123456789") != std::string::npos ||
      (layer.size() > 1 && layer[0] == '0') || std::stoll(layer) >= cfg.num_layers)
    return false;
  for (const char* name : kLinearNames)
    if (module.compare(dot + 1, std::string::npos, name) == 0) return true;
  return false;
}

void write_text_atomic(const fs::path& p, const std::string& s) { write_file_atomic(p.string(), s.data(), s.size()); }

}  // namespace

double PackReport::quantized_bpw() const {
  return quantized_params ? 8.0 * static_cast<double>(quantized_bytes) / static_cast<double>(quantized_params) : 0.0;
}
double PackReport::model_bpw() const {
  return total_params ? 8.0 * static_cast<double>(total_bytes) / static_cast<double>(total_params) : 0.0;
}

PackReport pack_model(const std::string& model_dir, const std::string& out_dir, const PackOptions& opt,
                      const PackProgress& progress) {
  const bool planned = opt.format == "plan";
  if (planned != !opt.plan.empty())
    throw Error(ExitCode::kUsage, "pack_model: format \"plan\" and a non-empty plan go together");
  const bool squeeze = opt.format == "squeezellm" || opt.format == "uniform";
  const bool fgmp = opt.format == "fgmp";
  const bool fisher_weighted = (opt.format == "squeezellm" || fgmp || planned) && !opt.sensitivity.empty();
  QuantizerParams params = opt.params;
  if (!fisher_weighted) params.sensitive_pct = 0.0;  // needs Fisher; recorded as 0
  FgmpParams fgmp_params = opt.fgmp;
  fgmp_params.score_threshold = std::numeric_limits<double>::quiet_NaN();  // the packer ranks globally
  // The one quantizer of a single-format pack (a plan brings one per module instead).
  const std::unique_ptr<Quantizer> quant_ptr =
      fgmp ? std::make_unique<FgmpQuantizer>(fgmp_params) : make_quantizer(planned ? "fp8" : opt.format, params);
  const Quantizer& quant = *quant_ptr;
  std::vector<std::regex> exclude;
  for (const auto& e : opt.exclude) {
    try {
      exclude.emplace_back(e, std::regex::ECMAScript);
    } catch (const std::regex_error& err) {
      throw Error(ExitCode::kUsage, "--exclude '" + e + "': bad regular expression: " + err.what());
    }
  }
  const LlamaConfig cfg = load_llama_config(model_dir);
  if (!cfg.quantization_config.is_null())
    throw_input((fs::path(model_dir) / "config.json").string(),
                "quantization_config: the input is already quantized; pack from the original weights");
  const TensorStore store = TensorStore::open(model_dir);
  check_config_against_tensors(cfg, store);
  std::unique_ptr<TensorStore> sens;
  if (fisher_weighted) sens = std::make_unique<TensorStore>(TensorStore::open(opt.sensitivity));

  // Every tensor of the graph must be there with config.json's shape, before any work.
  for (const auto& [name, shape] : llama_tensor_shapes(cfg)) {
    const TensorView& t = store.get(name);
    if (t.shape != shape)
      throw_input(t.file, "tensor '" + name + "': shape " + shape_str(t.shape) + " disagrees with config.json " +
                              shape_str(shape));
  }

  // Output checks before any work; the folder is built in a staging folder (formats/output_dir.h).
  OutputDir output(out_dir, opt.force);
  const fs::path stage_dir = output.staging();
  std::error_code ec;

  // Which tensors are quantized linears: name -> [rows, cols] from config.json.
  std::map<std::string, std::array<int64_t, 2>> linears;
  for (int64_t l = 0; l < cfg.num_layers; ++l)
    for (int i = 0; i < 7; ++i) {
      const std::string module = "model.layers." + std::to_string(l) + "." + kLinearNames[i];
      bool skip = false;
      for (const auto& re : exclude) skip = skip || std::regex_search(module, re);
      if (planned) {
        auto e = opt.plan.find(module);
        if (e == opt.plan.end()) throw_input(opt.plan_file, "tensors: no entry for module '" + module + "'");
        skip = skip || e->second.format == "source";
      }
      if (!skip) linears[module + ".weight"] = linear_shape(cfg, i);
    }
  if (planned)
    for (const auto& [module, e] : opt.plan) {
      (void)e;
      if (!is_linear_module(cfg, module))  // e.g. model.embed_tokens: never quantized, so refused
        throw_input(opt.plan_file, "tensors: module '" + module + "' is not a linear projection (q/k/v/o/gate/up/down) of " +
                                       model_dir);
    }

  // A quantized linear's fp32 weights (checked finite) and, with a sensitivity file, its Fisher.
  auto load_linear = [&](const TensorView& t, const std::string& module, int64_t rows, int64_t cols,
                         std::vector<float>& w, std::vector<float>& fisher) {
    w = to_f32(t);
    for (std::size_t i = 0; i < w.size(); ++i)
      if (!std::isfinite(w[i]))
        throw_input(t.file, "tensor '" + t.name + "': " + (std::isnan(w[i]) ? "NaN" : "Inf") + " at [" +
                                std::to_string(i / static_cast<std::size_t>(cols)) + ", " +
                                std::to_string(i % static_cast<std::size_t>(cols)) + "]; refusing to quantize");
    fisher.clear();
    if (!sens) return;
    const std::string fname = module + ".fisher";
    const TensorView* f = find_sensitivity_tensor(*sens, fname, {rows, cols});
    if (!f) throw_input(opt.sensitivity, "tensor '" + fname + "' missing (needed to pack " + module + ")");
    fisher = to_f32(*f);
  };
  auto module_of = [](const std::string& name) { return name.substr(0, name.size() - std::string(".weight").size()); };

  // fgmp: one global ranking of every quantized block gives each tensor its FP8 block count.
  const std::vector<std::string> names = store.names();
  FgmpSelection fgmp_sel;
  if (fgmp) {
    std::vector<FgmpTensorScores> scored;
    for (const std::string& name : names) {
      auto it = linears.find(name);
      if (it == linears.end()) continue;
      const auto [rows, cols] = it->second;
      std::vector<float> w, fisher;
      load_linear(store.get(name), module_of(name), rows, cols, w, fisher);
      const auto& fq = static_cast<const FgmpQuantizer&>(quant);
      scored.push_back({name, rows, cols,
                        fq.block_scores(module_of(name), w.data(), sens ? fisher.data() : nullptr, rows, cols)});
    }
    fgmp_sel = fgmp_select_global(scored, opt.fgmp.fp8_fraction, opt.target_bpw);
  }

  // FGMP activation thresholds from the original model (every module, excluded ones too).
  ActCalibration act;
  if (!opt.act.text.empty()) act = calibrate_act_thresholds(model_dir, opt.act);

  PackReport rep;
  SafetensorsWriter writer;
  nlohmann::json shapes_meta = nlohmann::json::object();
  nlohmann::json tensors_json = nlohmann::json::object();
  for (std::size_t k = 0; k < names.size(); ++k) {
    const std::string& name = names[k];
    const TensorView& t = store.get(name);
    auto it = linears.find(name);
    PackedTensorRecord rec;
    if (it != linears.end()) {
      const auto [rows, cols] = it->second;  // shape checked above
      const std::string module = module_of(name);
      std::vector<float> w, fisher;
      load_linear(t, module, rows, cols, w, fisher);
      const float* f = sens ? fisher.data() : nullptr;
      const Quantizer& q = planned ? *opt.plan.at(module).quantizer : quant;
      const PackedTensor p =
          fgmp ? static_cast<const FgmpQuantizer&>(quant).encode_count(module, w.data(), f, rows, cols,
                                                                        fgmp_sel.fp8_blocks.at(name))
               : q.encode_weighted(module, w.data(), f, rows, cols);
      add_packed(writer, module, p);
      if (cols % std::max(1, q.info().block_size) != 0) shapes_meta[module] = {rows, cols};
      rec = {module, planned ? opt.plan.at(module).format : opt.format, {rows, cols}, p.bytes(), p.bpw()};
      if (planned) tensors_json[module]["candidate"] = opt.plan.at(module).candidate;
      rep.quantized_params += rows * cols;
      rep.quantized_bytes += p.bytes();
    } else {
      writer.add(name, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes));
      rec = {name, dtype_name_lower(t.dtype), t.shape, t.nbytes, 8.0 * static_cast<double>(t.nbytes) / static_cast<double>(std::max<int64_t>(1, t.numel()))};
    }
    int64_t numel = 1;
    for (auto d : rec.shape) numel *= d;
    rep.total_params += numel;
    tensors_json[rec.name].update({{"format", rec.format}, {"shape", rec.shape}, {"bytes", rec.bytes}, {"bpw", rec.bpw}});
    if (fgmp && it != linears.end()) tensors_json[rec.name]["fp8_blocks"] = fgmp_sel.fp8_blocks.at(name);
    rep.tensors.push_back(std::move(rec));
    if (progress) progress(k + 1, names.size(), name);
  }
  for (const auto& [module, m] : act.modules) {
    const int64_t cols = static_cast<int64_t>(m.act_fisher.size());
    writer.add_f32(module + ".input_act_fisher", {cols}, m.act_fisher);
    writer.add_f32(module + ".input_fgmp_threshold", {}, {m.threshold});
    for (PackedTensorRecord rec : {PackedTensorRecord{module + ".input_act_fisher", "f32", {cols}, 4 * m.act_fisher.size(), 32},
                                   PackedTensorRecord{module + ".input_fgmp_threshold", "f32", {}, 4, 32}}) {
      tensors_json[rec.name] = {{"format", rec.format}, {"shape", rec.shape}, {"bytes", rec.bytes}, {"bpw", rec.bpw}};
      rep.total_params += rec.shape.empty() ? 1 : rec.shape[0];
      rep.tensors.push_back(std::move(rec));
    }
  }
  rep.total_bytes = writer.data_bytes();
  rep.bpw_4096x4096 = 8.0 * static_cast<double>(quant.bytes(4096, 4096)) / (4096.0 * 4096.0);
  if (planned) rep.bpw_4096x4096 = std::numeric_limits<double>::quiet_NaN();  // no single format
  if (fgmp)  // at the achieved fraction
    rep.bpw_4096x4096 =
        8.0 * static_cast<double>(fgmp_bytes(4096, 4096, std::llround(fgmp_sel.fraction() * 4096.0 * 256.0))) /
        (4096.0 * 4096.0);

  writer.set_metadata("format", "pt");
  writer.set_metadata("mpq_format_version", "1");
  writer.set_metadata("mpq_logical_shapes", shapes_meta.dump());
  writer.write((stage_dir / "model.safetensors").string());

  // config.json with ModelOpt's quantization_config.
  nlohmann::json exclude_modules = {"lm_head"};
  for (int64_t l = 0; l < cfg.num_layers; ++l)
    for (int i = 0; i < 7; ++i) {
      const std::string module = "model.layers." + std::to_string(l) + "." + kLinearNames[i];
      if (!linears.count(module + ".weight")) exclude_modules.push_back(module);
    }
  nlohmann::json qc = {{"quant_method", "modelopt"},
                       {"quant_algo", quant.info().quant_algo},
                       {"producer", {{"name", "mpq"}, {"version", MPQ_VERSION}}},
                       {"exclude_modules", exclude_modules}};
  if (quant.info().block_size > 0) qc["group_size"] = quant.info().block_size;
  if (squeeze)
    qc = {{"quant_method", "squeezellm"},
          {"wbits", params.bits},
          {"grid", opt.format == "uniform" ? "uniform" : "kmeans"},
          {"outlier_pct", opt.format == "uniform" ? 0.0 : params.outlier_pct},
          {"sensitive_pct", opt.format == "uniform" ? 0.0 : params.sensitive_pct},
          {"fisher_weighted", fisher_weighted},
          {"producer", {{"name", "mpq"}, {"version", MPQ_VERSION}}},
          {"exclude_modules", exclude_modules}};
  if (fgmp) {
    qc = {{"quant_method", "fgmp"},
          {"layout_version", 1},
          {"block_size", kFgmpBlockSize},
          {"fp8_fraction", fgmp_sel.fraction()},
          {"fp8_blocks", fgmp_sel.fp8_total},
          {"total_blocks", fgmp_sel.blocks_total},
          {"selection", fgmp_selection_name(opt.fgmp.selection)},
          {"clipping", fgmp_clipping_name(opt.fgmp.clipping)},
          {"clip_grid", {{"min", kFgmpClipMin}, {"max", kFgmpClipMax}, {"step", kFgmpClipStep}}},
          {"fisher_weighted", fisher_weighted},
          {"score_threshold", fgmp_sel.score_threshold},
          {"producer", {{"name", "mpq"}, {"version", MPQ_VERSION}}},
          {"exclude_modules", exclude_modules}};
    if (opt.target_bpw > 0) qc["target_bpw"] = opt.target_bpw;
    if (opt.fgmp.selection == FgmpParams::Selection::kRandom) qc["seed"] = opt.fgmp.seed;
  }
  if (planned) {  // ModelOpt's mixed-precision record: one entry per quantized module
    nlohmann::json layers = nlohmann::json::object();
    for (const auto& [module, e] : opt.plan) {
      if (e.format == "source") continue;
      nlohmann::json entry = {{"quant_algo", e.quantizer->info().quant_algo}, {"mpq_format", e.format},
                              {"candidate", e.candidate}};
      if (e.quantizer->info().block_size > 0) entry["group_size"] = e.quantizer->info().block_size;
      if (!e.params.empty()) entry["params"] = e.params;
      layers[module] = entry;
    }
    qc = {{"quant_method", "modelopt"},
          {"quant_algo", "MIXED_PRECISION"},
          {"quantized_layers", layers},
          {"fisher_weighted", fisher_weighted},
          {"producer", {{"name", "mpq"}, {"version", MPQ_VERSION}}},
          {"exclude_modules", exclude_modules}};
  }
  if (!act.modules.empty()) qc["activation"] = act.record;
  nlohmann::json config = cfg.raw;
  config["quantization_config"] = qc;
  write_text_atomic(stage_dir / "config.json", config.dump(2) + "\n");
  if (!squeeze && !fgmp && !planned) {
    nlohmann::json hfq = {{"producer", {{"name", "mpq"}, {"version", MPQ_VERSION}}},
                          {"quantization", {{"quant_algo", quant.info().quant_algo},
                                            {"kv_cache_quant_algo", nullptr},
                                            {"exclude_modules", exclude_modules}}}};
    if (quant.info().block_size > 0) hfq["quantization"]["group_size"] = quant.info().block_size;
    write_text_atomic(stage_dir / "hf_quant_config.json", hfq.dump(2) + "\n");
  }

  // Tokenizer files and input hashes.
  std::vector<std::string> weight_files;
  for (const auto& f : store.files()) weight_files.push_back(f->path());
  nlohmann::json inputs = sha256_model_inputs(model_dir, weight_files);
  for (const char* f : kTokenizerFiles) {
    const fs::path src = fs::path(model_dir) / f;
    if (!fs::exists(src)) continue;
    inputs[f] = sha256_file(src.string());
    fs::copy_file(src, stage_dir / f, fs::copy_options::overwrite_existing, ec);
    if (ec) throw_output((stage_dir / f).string(), "cannot copy: " + ec.message());
  }

  rep.manifest = {{"tool", std::string("mpq-pack ") + MPQ_VERSION},
                  {"mpq_format_version", 1},
                  {"created_utc", utc_now()},
                  {"command_line", opt.command_line},
                  {"source", fs::absolute(model_dir).string()},
                  {"format", opt.format},
                  {"quantization_config", qc},
                  {"inputs_sha256", inputs},
                  {"tensors", tensors_json},
                  {"totals", {{"quantized_params", rep.quantized_params},
                              {"quantized_bytes", rep.quantized_bytes},
                              {"quantized_bpw", rep.quantized_bpw()},
                              {"total_params", rep.total_params},
                              {"total_bytes", rep.total_bytes},
                              {"model_bpw", rep.model_bpw()},
                              {"bpw_4096x4096", rep.bpw_4096x4096}}}};
  if (planned) rep.manifest["plan"] = {{"file", fs::absolute(opt.plan_file).string()}, {"sha256", sha256_file(opt.plan_file)}};
  if (fisher_weighted)
    rep.manifest["sensitivity"] = {{"file", fs::absolute(opt.sensitivity).string()},
                                   {"sha256", sha256_file(opt.sensitivity)}};
  write_text_atomic(stage_dir / "mpq_manifest.json", rep.manifest.dump(2) + "\n");

  output.publish();  // one atomic exchange with an existing folder
  return rep;
}

}  // namespace mpq
