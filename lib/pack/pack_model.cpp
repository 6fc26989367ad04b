#include "lib/pack/pack_model.h"

#include <unistd.h>

#include <array>
#include <map>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <regex>

#include "formats/hf_config.h"
#include "formats/packed_checkpoint.h"
#include "formats/safetensors.h"
#include "lib/common/error.h"
#include "lib/common/sha256.h"
#include "lib/model/llama.h"
#include "lib/pack/input_scales.h"
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

void write_text_atomic(const fs::path& p, const std::string& s) { write_file_atomic(p.string(), s.data(), s.size()); }

// Removes a staging folder unless released (RAII cleanup on any exception).
struct StagingDir {
  fs::path path;
  bool keep = false;
  ~StagingDir() {
    if (!keep) {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  }
};

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
  std::unique_ptr<Quantizer> quant_ptr;
  if (fgmp) quant_ptr = std::make_unique<FgmpQuantizer>(fgmp_params);
  else if (!planned) quant_ptr = make_quantizer(opt.format, params);
  std::vector<std::regex> exclude;
  for (const auto& e : opt.exclude) {
    try {
      exclude.emplace_back(e, std::regex::ECMAScript);
    } catch (const std::regex_error& err) {
      throw Error(ExitCode::kUsage, "--exclude '" + e + "': bad regular expression: " + err.what());
    }
  }
  if (opt.act_scheme == ActScheme::kStatic && opt.calib.text.empty())
    throw Error(ExitCode::kUsage, "--activations static needs --calib TEXT (the input scales are calibrated)");
  const LlamaConfig cfg = load_llama_config(model_dir);
  if (!cfg.quantization_config.is_null())
    throw_input((fs::path(model_dir) / "config.json").string(),
                "quantization_config: the input is already quantized; pack from the original weights");
  const TensorStore store = TensorStore::open(model_dir);
  std::unique_ptr<TensorStore> sens;
  if (fisher_weighted) sens = std::make_unique<TensorStore>(TensorStore::open(opt.sensitivity));

  // Every tensor of the graph must be there with config.json's shape, before any work.
  for (const auto& [name, shape] : llama_tensor_shapes(cfg)) {
    const TensorView& t = store.get(name);
    if (t.shape != shape)
      throw_input(t.file, "tensor '" + name + "': shape " + shape_str(t.shape) + " disagrees with config.json " +
                              shape_str(shape));
  }

  // Every linear module's requested format (nullptr: kept in the source dtype), then the export.
  std::map<std::string, const FormatInfo*> requested;
  for (int64_t l = 0; l < cfg.num_layers; ++l)
    for (int i = 0; i < 7; ++i) {
      const std::string module = "model.layers." + std::to_string(l) + "." + kLinearNames[i];
      bool skip = false;
      for (const auto& re : exclude) skip = skip || std::regex_search(module, re);
      const FormatInfo* f = planned ? nullptr : &quant_ptr->info();
      if (planned) {
        auto e = opt.plan.find(module);
        if (e == opt.plan.end()) throw_input(opt.plan_file, "tensors: no entry for module '" + module + "'");
        if (e->second.quantizer) f = &e->second.quantizer->info();
      }
      requested[module] = skip ? nullptr : f;
    }
  if (planned)
    for (const auto& [module, e] : opt.plan) {
      (void)e;
      if (!requested.count(module))
        throw_input(opt.plan_file, "tensors: '" + module + "' is not a linear module of " + model_dir);
    }
  const ExportPlan xp = resolve_export(cfg, requested, opt.export_kind, opt.act_scheme,
                                       planned ? opt.plan_file : std::string("--exclude"));
  // Which tensors are quantized linears: name -> [rows, cols] from config.json.
  std::map<std::string, std::array<int64_t, 2>> linears;
  for (int64_t l = 0; l < cfg.num_layers; ++l)
    for (int i = 0; i < 7; ++i) {
      const std::string module = "model.layers." + std::to_string(l) + "." + kLinearNames[i];
      if (xp.modules.at(module).format) linears[module + ".weight"] = linear_shape(cfg, i);
    }

  // Output checks before any work.
  const fs::path out(out_dir);
  if (fs::exists(out) && !fs::is_empty(out) && !opt.force)
    throw_output(out_dir, "exists and is not empty (use --force to replace it)");
  const fs::path parent = fs::absolute(out).parent_path();
  if (!fs::is_directory(parent)) throw_output(out_dir, "parent folder does not exist");
  StagingDir stage{parent / (out.filename().string() + ".partial-" + std::to_string(getpid()))};
  std::error_code ec;
  fs::remove_all(stage.path, ec);
  if (!fs::create_directory(stage.path, ec)) throw_output(stage.path.string(), "cannot create: " + ec.message());

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
    if (!sens->has(fname))
      throw_input(opt.sensitivity, "tensor '" + fname + "' missing (needed to pack " + module + ")");
    const TensorView& f = sens->get(fname);
    if (f.dtype != DType::F32 || f.shape != std::vector<int64_t>{rows, cols})
      throw_input(f.file, "tensor '" + fname + "': " + dtype_name(f.dtype) + " " + shape_str(f.shape) +
                              ", expected F32 " + shape_str({rows, cols}));
    fisher = to_f32(f);
  };
  auto module_of = [](const std::string& name) { return name.substr(0, name.size() - std::string(".weight").size()); };

  // Fused engine layers: every shard is encoded with the group's amax (one shared tensor
  // scale), recorded with the per-module amax it replaces.
  std::map<std::string, float> shared_amax;  // module -> group amax
  nlohmann::json sharing = nlohmann::json::array();
  for (const std::vector<std::string>& g : xp.groups) {
    std::vector<float> own;
    for (const std::string& m : g) {
      const TensorView& t = store.get(m + ".weight");
      const std::array<int64_t, 2> shape = linears.at(m + ".weight");
      std::vector<float> w, fisher_unused;
      load_linear(t, m, shape[0], shape[1], w, fisher_unused);
      float a = 0.0f;
      for (float v : w) a = std::max(a, std::fabs(v));
      own.push_back(a);
    }
    float amax = *std::max_element(own.begin(), own.end());
    if (!(amax > 0.0f)) amax = 1.0f;  // all-zero group: any positive scale gives zeros
    nlohmann::json rec = {{"fused_layer", fused_layer_name(g[0])}, {"shared_amax", amax}, {"modules", nlohmann::json::object()}};
    for (std::size_t k = 0; k < g.size(); ++k) {
      shared_amax[g[k]] = amax;
      rec["modules"][g[k]] = {{"own_amax", own[k]}};
    }
    sharing.push_back(rec);
  }

  // Static input scales: amax of every linear's input over the calibration windows.
  InputAmax input_amax;
  if (xp.act == ActScheme::kStatic) input_amax = calibrate_input_amax(model_dir, opt.calib);

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
      const auto& fq = static_cast<const FgmpQuantizer&>(*quant_ptr);
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
      const Quantizer& q = planned ? *opt.plan.at(module).quantizer : *quant_ptr;
      auto sh = shared_amax.find(module);
      const PackedTensor p =
          fgmp ? static_cast<const FgmpQuantizer&>(q).encode_count(module, w.data(), f, rows, cols,
                                                                   fgmp_sel.fp8_blocks.at(name))
          : sh != shared_amax.end() ? q.encode_with_amax(module, w.data(), rows, cols, sh->second)
                                    : q.encode_weighted(module, w.data(), f, rows, cols);
      std::size_t bytes = 0;
      const float in_amax = xp.act == ActScheme::kStatic ? input_amax.amax.at(module) : 0.0f;
      for (PackedPart& part : export_parts(xp, p, in_amax)) {
        bytes += part.bytes.size();
        writer.add(module + "." + part.suffix, part.dtype, part.shape, std::move(part.bytes));
      }
      if (cols % std::max(1, q.info().block_size) != 0) shapes_meta[module] = {rows, cols};
      rec = {module, planned ? opt.plan.at(module).format : opt.format, {rows, cols}, bytes,
             8.0 * static_cast<double>(bytes) / static_cast<double>(rows * cols)};
      if (planned) tensors_json[module]["candidate"] = opt.plan.at(module).candidate;
      if (sh != shared_amax.end()) tensors_json[module]["shared_amax"] = sh->second;
      if (xp.act == ActScheme::kStatic) tensors_json[module]["input_amax"] = in_amax;
      rep.quantized_params += rows * cols;
      rep.quantized_bytes += bytes;
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
  rep.bpw_4096x4096 = planned ? std::numeric_limits<double>::quiet_NaN()  // no single format
                              : 8.0 * static_cast<double>(quant_ptr->bytes(4096, 4096)) / (4096.0 * 4096.0);
  if (fgmp)  // at the achieved fraction
    rep.bpw_4096x4096 =
        8.0 * static_cast<double>(fgmp_bytes(4096, 4096, std::llround(fgmp_sel.fraction() * 4096.0 * 256.0))) /
        (4096.0 * 4096.0);

  writer.set_metadata("format", "pt");
  writer.set_metadata("mpq_format_version", "1");
  if (xp.kind == ExportKind::kMpq) writer.set_metadata("mpq_logical_shapes", shapes_meta.dump());
  writer.write((stage.path / "model.safetensors").string());

  // config.json: the export's quantization_config; for mpq-native, mpq's own record of the
  // format (quant_method "mpq", which every engine refuses by name).
  const nlohmann::json producer = {{"name", "mpq"}, {"version", MPQ_VERSION}};
  const std::vector<std::string> excluded = xp.excluded();
  nlohmann::json native;
  if (planned) {
    nlohmann::json layers = nlohmann::json::object();
    for (const auto& [module, e] : opt.plan) {
      if (!xp.modules.at(module).format) continue;
      nlohmann::json entry = {{"format", e.format}, {"candidate", e.candidate}};
      if (e.quantizer->info().block_size > 0) entry["group_size"] = e.quantizer->info().block_size;
      if (!e.params.empty()) entry["params"] = e.params;
      layers[module] = entry;
    }
    native = {{"format", "mixed"}, {"quantized_layers", layers}, {"fisher_weighted", fisher_weighted}};
  } else if (squeeze) {
    native = {{"format", "squeezellm"},
              {"wbits", params.bits},
              {"grid", opt.format == "uniform" ? "uniform" : "kmeans"},
              {"outlier_pct", opt.format == "uniform" ? 0.0 : params.outlier_pct},
              {"sensitive_pct", opt.format == "uniform" ? 0.0 : params.sensitive_pct},
              {"fisher_weighted", fisher_weighted}};
  } else if (fgmp) {
    native = {{"format", "fgmp"},
              {"layout_version", 1},
              {"block_size", kFgmpBlockSize},
              {"fp8_fraction", fgmp_sel.fraction()},
              {"fp8_blocks", fgmp_sel.fp8_total},
              {"total_blocks", fgmp_sel.blocks_total},
              {"selection", fgmp_selection_name(opt.fgmp.selection)},
              {"clipping", fgmp_clipping_name(opt.fgmp.clipping)},
              {"clip_grid", {{"min", kFgmpClipMin}, {"max", kFgmpClipMax}, {"step", kFgmpClipStep}}},
              {"fisher_weighted", fisher_weighted},
              {"score_threshold", fgmp_sel.score_threshold}};
    if (opt.target_bpw > 0) native["target_bpw"] = opt.target_bpw;
    if (opt.fgmp.selection == FgmpParams::Selection::kRandom) native["seed"] = opt.fgmp.seed;
  } else {
    native = {{"format", opt.format}};
    if (quant_ptr->info().block_size > 0) native["group_size"] = quant_ptr->info().block_size;
  }
  native["producer"] = producer;
  native["exclude_modules"] = excluded;
  nlohmann::json qc = export_quantization_config(xp, native);
  if (!act.modules.empty()) qc["activation"] = act.record;
  nlohmann::json config = cfg.raw;
  config["quantization_config"] = qc;
  write_text_atomic(stage.path / "config.json", config.dump(2) + "\n");
  const nlohmann::json hfq = export_hf_quant_config(xp);
  if (!hfq.is_null()) write_text_atomic(stage.path / "hf_quant_config.json", hfq.dump(2) + "\n");

  // Tokenizer files and input hashes.
  std::vector<std::string> weight_files;
  for (const auto& f : store.files()) weight_files.push_back(f->path());
  nlohmann::json inputs = sha256_model_inputs(model_dir, weight_files);
  for (const char* f : kTokenizerFiles) {
    const fs::path src = fs::path(model_dir) / f;
    if (!fs::exists(src)) continue;
    inputs[f] = sha256_file(src.string());
    fs::copy_file(src, stage.path / f, fs::copy_options::overwrite_existing, ec);
    if (ec) throw_output((stage.path / f).string(), "cannot copy: " + ec.message());
  }

  nlohmann::json export_rec = {{"kind", export_name(xp.kind)},
                               {"requested", export_name(opt.export_kind)},
                               {"activations", act_scheme_name(xp.act)},
                               {"notes", xp.notes},
                               {"shared_scales", sharing}};
  if (xp.act == ActScheme::kStatic) export_rec["input_scales"] = input_amax.record;
  rep.manifest = {{"tool", std::string("mpq-pack ") + MPQ_VERSION},
                  {"mpq_format_version", 1},
                  {"created_utc", utc_now()},
                  {"command_line", opt.command_line},
                  {"source", fs::absolute(model_dir).string()},
                  {"format", opt.format},
                  {"export", export_rec},
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
  rep.export_kind = xp.kind;
  rep.notes = xp.notes;
  if (planned) rep.manifest["plan"] = {{"file", fs::absolute(opt.plan_file).string()}, {"sha256", sha256_file(opt.plan_file)}};
  if (fisher_weighted)
    rep.manifest["sensitivity"] = {{"file", fs::absolute(opt.sensitivity).string()},
                                   {"sha256", sha256_file(opt.sensitivity)}};
  write_text_atomic(stage.path / "mpq_manifest.json", rep.manifest.dump(2) + "\n");

  // Swap the staged folder into place.
  fs::path old;
  if (fs::exists(out)) {
    old = parent / (out.filename().string() + ".old-" + std::to_string(getpid()));
    fs::rename(out, old, ec);
    if (ec) throw_output(out_dir, "cannot move the existing folder aside: " + ec.message());
  }
  fs::rename(stage.path, out, ec);
  if (ec) {
    if (!old.empty()) fs::rename(old, out);
    throw_output(out_dir, "cannot rename the staged folder into place: " + ec.message());
  }
  stage.keep = true;
  if (!old.empty()) fs::remove_all(old, ec);
  return rep;
}

}  // namespace mpq
