#include "lib/pack/pack_model.h"

#include <algorithm>
#include <array>
#include <map>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <regex>

#include "calibration/gptq_calibration.h"
#include "calibration/linear_inputs.h"
#include "formats/hf_config.h"
#include "formats/output_dir.h"
#include "formats/packed_checkpoint.h"
#include "formats/safetensors.h"
#include "formats/sensitivity_file.h"
#include "lib/common/error.h"
#include "lib/common/scratch_file.h"
#include "lib/common/sha256.h"
#include "lib/model/llama.h"
#include "lib/pack/input_scales.h"
#include "lib/model/llama_grad.h"
#include "lib/quant/gptq_grids.h"
#include "lib/quant/quantizer.h"

namespace mpq {
namespace fs = std::filesystem;

namespace {

const char* kTokenizerFiles[] = {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                                 "tokenizer.json", "generation_config.json"};


void write_text_atomic(const fs::path& p, const std::string& s) { write_file_atomic(p.string(), s.data(), s.size()); }

// FGMP block scores of every quantized tensor, in a scratch file (a 7B model has 3.2 GB
// of them), read back in 8 MiB pieces for the global ranking.
class ScratchScores final : public FgmpScoreSource {
 public:
  explicit ScratchScores(const std::string& folder) : file_(folder) {}
  void add(const std::string& name, int64_t rows, int64_t cols, const std::vector<double>& scores) {
    offsets_.push_back(file_.size());
    tensors_.push_back({name, rows, cols, {}});
    counts_.push_back(scores.size());
    file_.append(scores.data(), scores.size() * sizeof(double));
  }
  std::size_t count() const override { return tensors_.size(); }
  const FgmpTensorScores& tensor(std::size_t i) const override { return tensors_[i]; }
  void scan(const ScanFn& fn) const override {
    std::vector<double> buf(std::size_t{1} << 20);
    for (std::size_t t = 0; t < tensors_.size(); ++t)
      for (std::size_t done = 0; done < counts_[t];) {
        const std::size_t n = std::min(buf.size(), counts_[t] - done);
        file_.read(offsets_[t] + done * sizeof(double), buf.data(), n * sizeof(double));
        fn(t, buf.data(), n);
        done += n;
      }
  }

 private:
  ScratchFile file_;
  std::vector<FgmpTensorScores> tensors_;
  std::vector<uint64_t> offsets_;
  std::vector<std::size_t> counts_;
};

}  // namespace

std::vector<std::string> pack_write_order(const LlamaConfig& cfg, const TensorStore& store, const LayerRange& range) {
  // Buckets: 0 = before the layers, 1 + l = layer l, 1 + N = after the layers.
  const int64_t n = cfg.num_layers;
  std::vector<std::vector<std::string>> bucket(static_cast<std::size_t>(n + 2));
  std::map<std::string, bool> in_graph;
  for (const auto& [name, shape] : llama_tensor_shapes(cfg)) {
    (void)shape;
    in_graph[name] = true;
    const int64_t l = layer_of_tensor(name);
    bucket[static_cast<std::size_t>(l >= 0 ? 1 + l : name == "model.embed_tokens.weight" ? 0 : 1 + n)].push_back(name);
  }
  for (const std::string& name : store.names()) {  // sorted
    if (in_graph.count(name)) continue;
    const int64_t l = layer_of_tensor(name);
    bucket[static_cast<std::size_t>(l >= 0 && l < n ? 1 + l : 1 + n)].push_back(name);
  }
  std::vector<std::string> out;
  const auto take = [&](std::size_t b) { out.insert(out.end(), bucket[b].begin(), bucket[b].end()); };
  if (range.begin == 0) take(0);
  for (int64_t l = range.begin; l < range.end; ++l) take(static_cast<std::size_t>(1 + l));
  if (range.end == n) take(static_cast<std::size_t>(1 + n));
  return out;
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

PackMethod parse_pack_method(const std::string& s) {
  if (s == "rtn") return PackMethod::kRtn;
  if (s == "gptq") return PackMethod::kGptq;
  throw Error(ExitCode::kUsage, "--method '" + s + "': expected rtn or gptq");
}

const char* pack_method_name(PackMethod m) { return m == PackMethod::kGptq ? "gptq" : "rtn"; }

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
  bool plan_gptq = false;  // a plan entry "+gptq": the sequential pass runs for the whole plan
  for (const auto& [m, e] : opt.plan) plan_gptq = plan_gptq || e.gptq;
  const bool use_gptq = opt.method == PackMethod::kGptq || plan_gptq;
  if (use_gptq && opt.calib.text.empty())
    throw Error(ExitCode::kUsage, std::string(plan_gptq ? "a plan with +gptq candidates" : "--method gptq") +
                                      " needs --calib TEXT (the layer Hessians come from calibration windows)");
  if (opt.four_over_six && opt.method != PackMethod::kGptq)
    throw Error(ExitCode::kUsage, "--four-over-six is a choice of the GPTQ grid: give --method gptq");
  if (opt.act_scheme == ActScheme::kStatic && opt.calib.text.empty())
    throw Error(ExitCode::kUsage, "--activations static needs --calib TEXT (the input scales are calibrated)");
  const LlamaConfig cfg = load_llama_config(model_dir);
  const std::string config_path = (fs::path(model_dir) / "config.json").string();
  const LayerRange range = resolve_layer_range(opt.layers, cfg.num_layers, config_path);
  const bool whole = range.begin == 0 && range.end == cfg.num_layers;
  if (fgmp && !whole)
    throw Error(ExitCode::kUsage, "--layers " + range.str() + " with --format fgmp: its FP8 blocks are ranked over "
                                  "the whole model; pack fgmp in one run (or use --plan with fgmp entries)");
  if (opt.max_shard_bytes < 1) throw Error(ExitCode::kUsage, "--max-shard-size must be at least 1 byte");
  if (!cfg.quantization_config.is_null())
    throw_input((fs::path(model_dir) / "config.json").string(),
                "quantization_config: the input is already quantized; pack from the original weights");
  // The output head: quantized on its own when --lm-head names a format (mpq-native only).
  std::unique_ptr<Quantizer> head_q;
  ExportKind export_kind = opt.export_kind;
  if (!opt.lm_head.is_source()) {
    if (opt.lm_head.gptq)
      throw Error(ExitCode::kUsage, "--lm-head " + opt.lm_head.label + ": the head is rounded on its own (RTN); drop +gptq");
    if (cfg.tie_word_embeddings)
      throw_input(config_path, "tie_word_embeddings: true: lm_head is the token embedding, there is no separate "
                               "head for --lm-head " + opt.lm_head.label + " to quantize");
    if (export_kind == ExportKind::kModelOpt || export_kind == ExportKind::kCompressedTensors)
      throw Error(ExitCode::kUsage, std::string("--lm-head ") + opt.lm_head.label + " with --export " +
                                        export_name(export_kind) + ": engine exports keep lm_head in the source dtype "
                                        "(listed as excluded); give --export mpq");
    export_kind = ExportKind::kMpq;
    head_q = make_quantizer(opt.lm_head);
  }
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
  const ExportPlan xp = resolve_export(cfg, requested, export_kind, opt.act_scheme,
                                       planned ? opt.plan_file : std::string("--exclude"));
  // Which tensors are quantized linears: name -> [rows, cols] from config.json.
  std::map<std::string, std::array<int64_t, 2>> linears;
  for (int64_t l = 0; l < cfg.num_layers; ++l)
    for (int i = 0; i < 7; ++i) {
      const std::string module = "model.layers." + std::to_string(l) + "." + kLinearNames[i];
      if (xp.modules.at(module).format) linears[module + ".weight"] = linear_shape(cfg, i);
    }

  // Output checks before any work; the folder is built in a staging folder (formats/output_dir.h).
  OutputDir output(out_dir, opt.force);
  const fs::path stage_dir = output.staging();
  std::error_code ec;

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
  // Tensors are ranked in sorted-name order (the tie order); the scores wait in a scratch file.
  const std::vector<std::string> names = pack_write_order(cfg, store, range);
  FgmpSelection fgmp_sel;
  if (fgmp) {
    ScratchScores scored(stage_dir.string());
    std::size_t scored_n = 0;
    for (const std::string& name : store.names()) {
      auto it = linears.find(name);
      if (it == linears.end()) continue;
      if (progress) progress(++scored_n, linears.size(), "fgmp block scores: " + name);
      const auto [rows, cols] = it->second;
      std::vector<float> w, fisher;
      load_linear(store.get(name), module_of(name), rows, cols, w, fisher);
      const auto& fq = static_cast<const FgmpQuantizer&>(*quant_ptr);
      scored.add(name, rows, cols, fq.block_scores(module_of(name), w.data(), sens ? fisher.data() : nullptr, rows, cols));
    }
    fgmp_sel = fgmp_select_global(scored, opt.fgmp.fp8_fraction, opt.target_bpw);
  }

  // FGMP activation thresholds from the original model (every module, excluded ones too).
  ActCalibration act;
  if (!opt.act.text.empty()) act = calibrate_act_thresholds(model_dir, opt.act);

  // Every shard carries the same metadata, known before the first tensor (for the whole
  // model, so that the parts of a split run agree).
  std::map<std::string, std::string> shard_meta = {{"format", "pt"}, {"mpq_format_version", "1"}};
  if (xp.kind == ExportKind::kMpq) {
    nlohmann::json shapes_meta = nlohmann::json::object();
    for (const auto& [name, rc] : linears) {
      const std::string module = module_of(name);
      const Quantizer& q = planned ? *opt.plan.at(module).quantizer : *quant_ptr;
      if (rc[1] % std::max(1, q.info().block_size) != 0) shapes_meta[module] = {rc[0], rc[1]};
    }
    if (head_q && cfg.hidden_size % std::max(1, head_q->info().block_size) != 0)
      shapes_meta["lm_head"] = {cfg.vocab_size, cfg.hidden_size};
    shard_meta["mpq_logical_shapes"] = shapes_meta.dump();
  }
  // A linear rounded on its own (RTN and the formats' own fits): fgmp at its selected FP8 block
  // count, fused-layer shards at the group's shared amax, the rest with their Fisher.
  auto encode_rtn = [&](const std::string& module, const std::string& name, const std::vector<float>& w,
                        const std::vector<float>& fisher, int64_t rows, int64_t cols) -> PackedTensor {
    const Quantizer& q = planned ? *opt.plan.at(module).quantizer : *quant_ptr;
    const float* f = sens ? fisher.data() : nullptr;
    if (fgmp) return static_cast<const FgmpQuantizer&>(q).encode_count(module, w.data(), f, rows, cols, fgmp_sel.fp8_blocks.at(name));
    auto sh = shared_amax.find(module);
    return sh != shared_amax.end() ? q.encode_with_amax(module, w.data(), rows, cols, sh->second)
                                   : q.encode_weighted(module, w.data(), f, rows, cols);
  };

  // GPTQ: the sequential pass quantizes layer by layer as the writer reaches each layer.
  std::unique_ptr<GptqSequentialPass> gptq;
  if (use_gptq) {
    check_llama_checkpoint(cfg, store);
    GptqLinearFn fn = [&](const std::string& module, const std::vector<double>& h,
                          std::vector<float>& deq) -> std::optional<PackedTensor> {
      const std::string name = module + ".weight";
      auto it = linears.find(name);
      if (it == linears.end()) return std::nullopt;  // kept in the source dtype
      const auto [rows, cols] = it->second;
      std::vector<float> w, fisher;
      load_linear(store.get(name), module, rows, cols, w, fisher);
      const Quantizer& q = planned ? *opt.plan.at(module).quantizer : *quant_ptr;
      auto sh = shared_amax.find(module);
      if (planned && !opt.plan.at(module).gptq) {  // an RTN entry of a plan: its values feed the later layers
        PackedTensor p = encode_rtn(module, name, w, fisher, rows, cols);
        deq.resize(w.size());
        q.decode(p, deq.data());
        return p;
      }
      GptqGridInput in{module, w.data(), sens ? fisher.data() : nullptr, rows, cols};
      if (sh != shared_amax.end()) in.tensor_amax = sh->second;
      in.four_over_six = planned ? opt.plan.at(module).four_over_six : opt.four_over_six;
      if (fgmp) in.fgmp_fp8_blocks = fgmp_sel.fp8_blocks.at(name);
      std::unique_ptr<GptqGrid> grid = make_gptq_grid(q, in);
      deq = gptq_quantize(module, w.data(), rows, cols, h.data(), *grid, opt.gptq);
      return grid->encode();
    };
    GptqProgress gp = nullptr;
    if (progress)
      gp = [&](int64_t done, int64_t total) {
        progress(static_cast<std::size_t>(done), static_cast<std::size_t>(total), "gptq: layer " + std::to_string(done - 1));
      };
    gptq = std::make_unique<GptqSequentialPass>(cfg, store, read_calibration_ids(model_dir, opt.calib.text, cfg.vocab_size),
                                                opt.calib, std::move(fn), std::move(gp));
  }

  ShardedSafetensorsWriter writer(stage_dir.string(), opt.max_shard_bytes, shard_meta);
  // A packed module's parts under "<module>.<suffix>"; their total bytes.
  const auto write_parts = [&](const std::string& module, const std::vector<PackedPart>& parts) {
    std::size_t bytes = 0;
    for (const PackedPart& part : parts) {
      bytes += part.bytes.size();
      writer.add(module + "." + part.suffix, part.dtype, part.shape, part.bytes.data(), part.bytes.size());
    }
    return bytes;
  };
  PackReport rep;
  nlohmann::json tensors_json = nlohmann::json::object();
  for (std::size_t k = 0; k < names.size(); ++k) {
    const std::string& name = names[k];
    const TensorView& t = store.get(name);
    auto it = linears.find(name);
    PackedTensorRecord rec;
    if (it != linears.end()) {
      const auto [rows, cols] = it->second;  // shape checked above
      const std::string module = module_of(name);
      auto sh = shared_amax.find(module);
      PackedTensor p;
      if (gptq) {
        p = *gptq->take(module);  // the pass loaded and checked the weights itself
      } else {
        std::vector<float> w, fisher;
        load_linear(t, module, rows, cols, w, fisher);
        p = encode_rtn(module, name, w, fisher, rows, cols);
      }
      const float in_amax = xp.act == ActScheme::kStatic ? input_amax.amax.at(module) : 0.0f;
      const std::size_t bytes = write_parts(module, export_parts(xp, p, in_amax));
      rec = {module, planned ? opt.plan.at(module).format : opt.format, {rows, cols}, bytes,
             8.0 * static_cast<double>(bytes) / static_cast<double>(rows * cols)};
      if (planned) tensors_json[module]["candidate"] = opt.plan.at(module).candidate;
      if (sh != shared_amax.end()) tensors_json[module]["shared_amax"] = sh->second;
      if (xp.act == ActScheme::kStatic) tensors_json[module]["input_amax"] = in_amax;
      rep.quantized_params += rows * cols;
      rep.quantized_bytes += bytes;
    } else if (head_q && name == "lm_head.weight") {
      const int64_t rows = cfg.vocab_size, cols = cfg.hidden_size;  // shape checked above
      std::vector<float> w, no_fisher;
      load_linear(t, "lm_head", rows, cols, w, no_fisher);  // finite check; no Fisher for the head
      const std::size_t bytes = write_parts("lm_head", head_q->encode("lm_head", w.data(), rows, cols).parts);
      rec = {"lm_head", opt.lm_head.format, {rows, cols}, bytes, 8.0 * static_cast<double>(bytes) / static_cast<double>(rows * cols)};
      tensors_json["lm_head"]["label"] = opt.lm_head.label;
      rep.lm_head_bytes = bytes;
    } else {
      writer.add(name, t.dtype, t.shape, t.data, t.nbytes);  // straight from the mapped input
      rec = {name, dtype_name_lower(t.dtype), t.shape, t.nbytes, 8.0 * static_cast<double>(t.nbytes) / static_cast<double>(std::max<int64_t>(1, t.numel()))};
    }
    int64_t numel = 1;
    for (auto d : rec.shape) numel *= d;
    rep.total_params += numel;
    tensors_json[rec.name].update({{"format", rec.format}, {"shape", rec.shape}, {"bytes", rec.bytes}, {"bpw", rec.bpw}});
    if (fgmp && it != linears.end()) tensors_json[rec.name]["fp8_blocks"] = fgmp_sel.fp8_blocks.at(name);
    rep.tensors.push_back(std::move(rec));
    // A linear's FGMP activation calibration follows its weight.
    const auto am = name.size() > 7 ? act.modules.find(module_of(name)) : act.modules.end();
    if (am != act.modules.end() && name.compare(name.size() - 7, 7, ".weight") == 0) {
      const std::string& module = am->first;
      const auto& m = am->second;
      const int64_t cols = static_cast<int64_t>(m.act_fisher.size());
      writer.add(module + ".input_act_fisher", DType::F32, {cols}, m.act_fisher.data(), 4 * m.act_fisher.size());
      writer.add(module + ".input_fgmp_threshold", DType::F32, {}, &m.threshold, 4);
      for (PackedTensorRecord r : {PackedTensorRecord{module + ".input_act_fisher", "f32", {cols}, 4 * m.act_fisher.size(), 32},
                                   PackedTensorRecord{module + ".input_fgmp_threshold", "f32", {}, 4, 32}}) {
        tensors_json[r.name] = {{"format", r.format}, {"shape", r.shape}, {"bytes", r.bytes}, {"bpw", r.bpw}};
        rep.total_params += r.shape.empty() ? 1 : r.shape[0];
        rep.tensors.push_back(std::move(r));
      }
    }
    if (progress) progress(k + 1, names.size(), name);
  }
  rep.total_bytes = writer.data_bytes();
  rep.bpw_4096x4096 = planned ? std::numeric_limits<double>::quiet_NaN()  // no single format
                              : 8.0 * static_cast<double>(quant_ptr->bytes(4096, 4096)) / (4096.0 * 4096.0);
  if (fgmp)  // at the achieved fraction
    rep.bpw_4096x4096 =
        8.0 * static_cast<double>(fgmp_bytes(4096, 4096, std::llround(fgmp_sel.fraction() * 4096.0 * 256.0))) /
        (4096.0 * 4096.0);

  writer.finish();

  // config.json: the export's quantization_config; for mpq-native, mpq's own record of the
  // format (quant_method "mpq", which every engine refuses by name).
  const nlohmann::json producer = {{"name", "mpq"}, {"version", MPQ_VERSION}};
  std::vector<std::string> excluded = xp.excluded();
  if (head_q) excluded.erase(std::remove(excluded.begin(), excluded.end(), std::string("lm_head")), excluded.end());
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
  if (head_q) {
    native["lm_head"] = {{"format", opt.lm_head.format}, {"label", opt.lm_head.label}, {"method", "rtn"}};
    const nlohmann::json hp = format_params_json(opt.lm_head);
    if (!hp.empty()) native["lm_head"]["params"] = hp;
    if (head_q->info().block_size > 0) native["lm_head"]["group_size"] = head_q->info().block_size;
  }
  native["producer"] = producer;
  native["exclude_modules"] = excluded;
  nlohmann::json qc = export_quantization_config(xp, native);
  if (!act.modules.empty()) qc["activation"] = act.record;
  nlohmann::json config = cfg.raw;
  config["quantization_config"] = qc;
  write_text_atomic(stage_dir / "config.json", config.dump(2) + "\n");
  const nlohmann::json hfq = export_hf_quant_config(xp);
  if (!hfq.is_null()) write_text_atomic(stage_dir / "hf_quant_config.json", hfq.dump(2) + "\n");

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
                              {"bpw_4096x4096", rep.bpw_4096x4096}}},
                  {"layers", {{"begin", range.begin}, {"end", range.end}, {"num_layers", cfg.num_layers}}},
                  {"max_shard_bytes", opt.max_shard_bytes}};
  rep.export_kind = xp.kind;
  rep.notes = xp.notes;
  if (planned) rep.manifest["plan"] = {{"file", fs::absolute(opt.plan_file).string()}, {"sha256", sha256_file(opt.plan_file)}};
  rep.manifest["method"] = {{"name", plan_gptq ? "plan" : pack_method_name(opt.method)}};
  if (gptq) {
    rep.manifest["method"].update({{"damp", opt.gptq.damp},
                                   {"block", opt.gptq.block},
                                   {"act_order", opt.gptq.act_order},
                                   {"static_groups", opt.gptq.static_groups || opt.gptq.act_order},
                                   {"four_over_six", opt.four_over_six},
                                   {"sequential", "layer by layer, q/k/v -> o -> gate/up -> down"},
                                   {"calibration", {{"file", fs::absolute(opt.calib.text).string()},
                                                    {"sha256", sha256_file(opt.calib.text)},
                                                    {"samples", opt.calib.samples},
                                                    {"seq_len", opt.calib.seq_len},
                                                    {"seed", opt.calib.seed},
                                                    {"tokens", gptq->tokens()}}},
                                   {"seconds", gptq->seconds()}});
    rep.gptq_seconds = gptq->seconds();
  }
  if (fisher_weighted)
    rep.manifest["sensitivity"] = {{"file", fs::absolute(opt.sensitivity).string()},
                                   {"sha256", sha256_file(opt.sensitivity)}};
  write_text_atomic(stage_dir / "mpq_manifest.json", rep.manifest.dump(2) + "\n");

  output.publish();  // one atomic exchange with an existing folder
  return rep;
}

}  // namespace mpq
