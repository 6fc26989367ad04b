// Engine exports: resolution, tensors, config records and the engine check (see export.h).
#include "lib/pack/export.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include "formats/packed_checkpoint.h"
#include "formats/safetensors.h"
#include "lib/common/error.h"
#include "lib/common/shape.h"
#include "lib/model/llama.h"
#include "lib/numeric/codecs.h"  // kE2M1Max, kE4M3Max
#include "lib/quant/nvfp4.h"
#include "lib/quant/quant_common.h"

namespace mpq {
namespace fs = std::filesystem;

namespace {

std::string module_name(int64_t layer, int i) { return "model.layers." + std::to_string(layer) + "." + kLinearNames[i]; }

bool is_fp8(const FormatInfo* f) { return f && f->layout == FormatId::kFp8; }
bool is_nvfp4(const FormatInfo* f) { return f && f->layout == FormatId::kNvfp4; }

// Index groups of kLinearNames fused by the engines: q/k/v and gate/up.
const std::vector<std::vector<int>>& fused_index_groups() {
  static const std::vector<std::vector<int>> g = {{0, 1, 2}, {4, 5}};
  return g;
}

PackedPart f32_part(const std::string& suffix, std::vector<int64_t> shape, const std::vector<float>& v) {
  PackedPart p{suffix, DType::F32, std::move(shape), std::vector<uint8_t>(4 * v.size())};
  for (std::size_t i = 0; i < v.size(); ++i) quant_detail::store_f32_le(v[i], p.bytes.data() + 4 * i);
  return p;
}

float scalar_f32(const PackedPart& p) { return quant_detail::load_f32_le(p.bytes.data()); }

// The one resolution attempt for a concrete kind (kAuto tries several).
ExportPlan resolve_kind(const LlamaConfig& cfg, const std::map<std::string, const FormatInfo*>& formats, ExportKind kind,
                        ActScheme act, const std::string& source) {
  ExportPlan plan;
  plan.kind = kind;
  plan.act = act;
  const bool engine = kind != ExportKind::kMpq;
  if (!engine && act != ActScheme::kNone)
    throw Error(ExitCode::kUsage, std::string("--activations ") + act_scheme_name(act) +
                                      " declares an engine's activation quantization: it needs --export modelopt or "
                                      "compressed-tensors (mpq-native FGMP activations: --act-calib)");
  bool any_fp8 = false, any_nvfp4 = false;
  for (int64_t l = 0; l < cfg.num_layers; ++l)
    for (int i = 0; i < 7; ++i) {
      const std::string m = module_name(l, i);
      auto it = formats.find(m);
      MPQ_ASSERT(it != formats.end());
      ExportModule em;
      em.format = it->second;
      if (engine && em.format) {
        if (!(em.format->exports & export_mask(kind)))
          throw Error(ExitCode::kUsage, std::string("--export ") + export_name(kind) + " cannot express " + m + " in " +
                                            em.format->name + " (" + em.format->export_note + "); use --export mpq");
        const int64_t cols = linear_shape(cfg, i)[1];
        if (is_nvfp4(em.format) && cols % kNvfp4BlockSize != 0) {
          em.note = "in_features " + std::to_string(cols) + " is not a multiple of 16, which NVFP4 in " +
                    export_name(kind) + " requires (vLLM: \"in features size is not multiple of 16\"): kept in the source dtype";
          em.format = nullptr;
          plan.notes.push_back(m + ": " + em.note);
        }
      }
      any_fp8 = any_fp8 || is_fp8(em.format);
      any_nvfp4 = any_nvfp4 || is_nvfp4(em.format);
      plan.modules[m] = em;
    }
  if (!engine) return plan;
  // Fused layers: one format for every shard; tensor-scale shards share one scale.
  for (int64_t l = 0; l < cfg.num_layers; ++l)
    for (const std::vector<int>& g : fused_index_groups()) {
      const ExportModule& first = plan.modules.at(module_name(l, g[0]));
      std::vector<std::string> members;
      for (int i : g) {
        const std::string m = module_name(l, i);
        const ExportModule& em = plan.modules.at(m);
        if (em.format != first.format)
          throw_input(source, m + " is " + (em.format ? em.format->name : "unquantized") + " but " +
                                  module_name(l, g[0]) + " is " + (first.format ? first.format->name : "unquantized") +
                                  ": " + export_name(kind) + " engines fuse them into " + fused_layer_name(m) +
                                  ", whose shards need one format");
        members.push_back(m);
      }
      if (!first.format) continue;
      for (const std::string& m : members) plan.modules[m].group = static_cast<int>(plan.groups.size());
      plan.groups.push_back(members);
    }
  if (any_nvfp4 && act == ActScheme::kDynamic)
    throw Error(ExitCode::kUsage, "--activations dynamic: engines have dynamic activation scales for FP8 only; NVFP4 "
                                  "activations need a calibrated global scale (--activations static --calib TEXT) or "
                                  "none (weight-only)");
  if (kind == ExportKind::kModelOpt && any_fp8 && act == ActScheme::kNone)
    throw Error(ExitCode::kUsage, "--export modelopt has no weight-only FP8 (ModelOpt's FP8 algorithms quantize "
                                  "activations): use --activations static|dynamic, or --export compressed-tensors (W8A16)");
  if (kind == ExportKind::kModelOpt && any_fp8 && any_nvfp4 && act != ActScheme::kStatic)
    throw Error(ExitCode::kUsage, "--export modelopt: a MIXED_PRECISION checkpoint's FP8 layers are static W8A8 in vLLM; "
                                  "use --activations static --calib TEXT, or --export compressed-tensors");
  return plan;
}

// Cols of a module from its name (kLinearNames suffix).
int linear_index(const std::string& module) {
  for (int i = 0; i < 7; ++i) {
    const std::string suffix = std::string(".") + kLinearNames[i];
    if (module.size() > suffix.size() && module.compare(module.size() - suffix.size(), suffix.size(), suffix) == 0)
      return i;
  }
  return -1;
}

}  // namespace

unsigned export_mask(ExportKind k) {
  return k == ExportKind::kModelOpt ? kExportModelOpt : k == ExportKind::kCompressedTensors ? kExportCompressedTensors : 0u;
}

const char* export_name(ExportKind k) {
  switch (k) {
    case ExportKind::kAuto: return "auto";
    case ExportKind::kMpq: return "mpq";
    case ExportKind::kModelOpt: return "modelopt";
    case ExportKind::kCompressedTensors: return "compressed-tensors";
  }
  return "?";
}

ExportKind parse_export(const std::string& name) {
  for (ExportKind k : {ExportKind::kAuto, ExportKind::kMpq, ExportKind::kModelOpt, ExportKind::kCompressedTensors})
    if (name == export_name(k)) return k;
  throw Error(ExitCode::kUsage, "--export '" + name + "': expected auto, mpq, modelopt or compressed-tensors");
}

const char* act_scheme_name(ActScheme a) {
  switch (a) {
    case ActScheme::kNone: return "none";
    case ActScheme::kStatic: return "static";
    case ActScheme::kDynamic: return "dynamic";
  }
  return "?";
}

ActScheme parse_act_scheme(const std::string& name) {
  for (ActScheme a : {ActScheme::kNone, ActScheme::kStatic, ActScheme::kDynamic})
    if (name == act_scheme_name(a)) return a;
  throw Error(ExitCode::kUsage, "--activations '" + name + "': expected none, static or dynamic");
}

std::string fused_layer_name(const std::string& module) {
  const int i = linear_index(module);
  if (i < 0) return module;
  const std::string prefix = module.substr(0, module.size() - std::strlen(kLinearNames[i]));
  if (i <= 2) return prefix + "self_attn.qkv_proj";
  if (i == 4 || i == 5) return prefix + "mlp.gate_up_proj";
  return module;
}

std::string ExportPlan::modelopt_algo(const FormatInfo& f) const {
  if (f.layout == FormatId::kNvfp4) return act == ActScheme::kStatic ? "NVFP4" : "W4A16_NVFP4";
  if (f.layout == FormatId::kFp8) return act == ActScheme::kDynamic ? "FP8_PER_CHANNEL_PER_TOKEN" : "FP8";
  MPQ_ASSERT(!"modelopt_algo of a format ModelOpt cannot express");
  std::abort();
}

std::string ExportPlan::modelopt_algo() const {
  std::set<std::string> algos;
  for (const auto& [m, em] : modules)
    if (em.format) algos.insert(modelopt_algo(*em.format));
  if (algos.size() == 1) return *algos.begin();
  return algos.empty() ? "NONE" : "MIXED_PRECISION";
}

std::vector<std::string> ExportPlan::excluded() const {
  std::vector<std::pair<std::pair<int64_t, int>, std::string>> order;
  for (const auto& [m, em] : modules)
    if (!em.format) {
      const std::size_t a = std::strlen("model.layers."), b = m.find('.', a);
      order.push_back({{std::stoll(m.substr(a, b - a)), linear_index(m)}, m});
    }
  std::sort(order.begin(), order.end());
  std::vector<std::string> out = {"lm_head"};
  for (const auto& o : order) out.push_back(o.second);
  return out;
}

ExportPlan resolve_export(const LlamaConfig& cfg, const std::map<std::string, const FormatInfo*>& formats,
                          ExportKind kind, ActScheme act, const std::string& source) {
  if (kind != ExportKind::kAuto) return resolve_kind(cfg, formats, kind, act, source);
  std::string why;
  for (ExportKind k : {ExportKind::kModelOpt, ExportKind::kCompressedTensors}) {
    try {
      ExportPlan p = resolve_kind(cfg, formats, k, act, source);
      if (!why.empty()) p.notes.insert(p.notes.begin(), "export " + std::string(export_name(k)) + ": " + why);
      return p;
    } catch (const Error& e) {
      if (e.code() != ExitCode::kUsage) throw;
      if (why.empty()) why = e.what();
    }
  }
  if (act != ActScheme::kNone)  // the engine exports were the only ones that declare activations
    return resolve_kind(cfg, formats, ExportKind::kModelOpt, act, source);
  ExportPlan p = resolve_kind(cfg, formats, ExportKind::kMpq, act, source);
  p.notes.insert(p.notes.begin(), "export mpq (mpq-native; no serving engine loads it): " + why);
  return p;
}

std::vector<PackedPart> export_parts(const ExportPlan& plan, const PackedTensor& p, float input_amax) {
  if (plan.kind == ExportKind::kMpq) return p.parts;
  const FormatInfo* f = find_format(p.format);
  MPQ_ASSERT(f && (is_fp8(f) || is_nvfp4(f)));
  const bool ct = plan.kind == ExportKind::kCompressedTensors;
  const bool stat = plan.act == ActScheme::kStatic, dyn = plan.act == ActScheme::kDynamic;
  if (stat) MPQ_ASSERT(std::isfinite(input_amax) && input_amax > 0.0f);
  std::vector<PackedPart> out;
  if (is_nvfp4(f)) {
    PackedPart w = p.part("weight");
    const float s2 = scalar_f32(p.part("weight_scale_2"));
    if (ct) w.suffix = "weight_packed";
    out.push_back(std::move(w));
    out.push_back(p.part("weight_scale"));
    // compressed-tensors stores the global scales as divisors (1 / ModelOpt's), shape [1].
    if (ct) out.push_back(f32_part("weight_global_scale", {1}, {1.0f / s2}));
    else out.push_back(f32_part("weight_scale_2", {}, {s2}));
    if (stat) {
      const float in_s = input_amax / (kE2M1Max * kE4M3Max);
      if (ct) out.push_back(f32_part("input_global_scale", {1}, {1.0f / in_s}));
      else out.push_back(f32_part("input_scale", {}, {in_s}));
    }
    return out;
  }
  out.push_back(p.part("weight"));
  const float s = scalar_f32(p.part("weight_scale"));
  if (dyn) {  // per-output-channel form of the one tensor scale: [out] (ModelOpt), [out, 1] (compressed-tensors)
    const std::vector<float> rows(static_cast<std::size_t>(p.rows), s);
    out.push_back(ct ? f32_part("weight_scale", {p.rows, 1}, rows) : f32_part("weight_scale", {p.rows}, rows));
  } else {
    out.push_back(ct ? f32_part("weight_scale", {1}, {s}) : f32_part("weight_scale", {}, {s}));
  }
  if (stat) {
    const float in_s = input_amax / kE4M3Max;
    out.push_back(ct ? f32_part("input_scale", {1}, {in_s}) : f32_part("input_scale", {}, {in_s}));
  }
  return out;
}

namespace {

nlohmann::json ct_args(const FormatInfo& f, bool weights, ActScheme act) {
  if (f.layout == FormatId::kNvfp4)
    return {{"num_bits", 4}, {"type", "float"}, {"symmetric", true}, {"strategy", "tensor_group"},
            {"group_size", kNvfp4BlockSize}, {"dynamic", weights ? nlohmann::json(false) : nlohmann::json("local")}};
  if (weights)
    return {{"num_bits", 8}, {"type", "float"}, {"symmetric", true},
            {"strategy", act == ActScheme::kDynamic ? "channel" : "tensor"}, {"dynamic", false}};
  if (act == ActScheme::kDynamic)
    return {{"num_bits", 8}, {"type", "float"}, {"symmetric", true}, {"strategy", "token"}, {"dynamic", true}};
  return {{"num_bits", 8}, {"type", "float"}, {"symmetric", true}, {"strategy", "tensor"}, {"dynamic", false}};
}

const char* ct_format(const FormatInfo& f) {
  return f.layout == FormatId::kNvfp4 ? "nvfp4-pack-quantized" : "float-quantized";
}

}  // namespace

nlohmann::json export_quantization_config(const ExportPlan& plan, const nlohmann::json& native) {
  if (plan.kind == ExportKind::kMpq) {
    nlohmann::json qc = native;
    qc["quant_method"] = "mpq";  // vLLM: "Unknown quantization method: mpq"
    return qc;
  }
  const std::vector<std::string> ignore = plan.excluded();
  if (plan.kind == ExportKind::kModelOpt) {
    const std::string algo = plan.modelopt_algo();
    nlohmann::json qc = {{"quant_method", "modelopt"},
                         {"quant_algo", algo},
                         {"ignore", ignore},
                         {"producer", {{"name", "mpq"}, {"version", MPQ_VERSION}}}};
    bool nvfp4 = false;
    nlohmann::json layers = nlohmann::json::object();
    for (const auto& [m, em] : plan.modules) {
      if (!em.format) continue;
      nvfp4 = nvfp4 || is_nvfp4(em.format);
      nlohmann::json e = {{"quant_algo", plan.modelopt_algo(*em.format)}};
      if (is_nvfp4(em.format)) e["group_size"] = kNvfp4BlockSize;
      layers[m] = e;
    }
    if (nvfp4) qc["group_size"] = kNvfp4BlockSize;
    if (algo == "MIXED_PRECISION") qc["quantized_layers"] = layers;
    return qc;
  }
  // compressed-tensors: one config group per format, targets = the modules (fused shards
  // always land in the same group: they share one format).
  std::map<std::string, std::pair<const FormatInfo*, std::vector<std::string>>> by_format;
  for (const auto& [m, em] : plan.modules)
    if (em.format) {
      auto& g = by_format[em.format->name];
      g.first = em.format;
      g.second.push_back(m);
    }
  nlohmann::json groups = nlohmann::json::object();
  int k = 0;
  for (auto& [name, g] : by_format) {
    std::sort(g.second.begin(), g.second.end());
    nlohmann::json grp = {{"targets", by_format.size() == 1 ? nlohmann::json::array({"Linear"}) : nlohmann::json(g.second)},
                          {"weights", ct_args(*g.first, true, plan.act)},
                          {"input_activations", plan.act == ActScheme::kNone ? nlohmann::json()
                                                                              : ct_args(*g.first, false, plan.act)},
                          {"output_activations", nullptr},
                          {"format", ct_format(*g.first)}};
    groups["group_" + std::to_string(k++)] = grp;
  }
  const std::string format = by_format.size() == 1 ? ct_format(*by_format.begin()->second.first) : "mixed-precision";
  return {{"quant_method", "compressed-tensors"},
          {"format", format},
          {"quantization_status", "compressed"},
          {"config_groups", groups},
          {"ignore", ignore},
          {"kv_cache_scheme", nullptr}};
}

nlohmann::json export_hf_quant_config(const ExportPlan& plan) {
  if (plan.kind != ExportKind::kModelOpt) return nullptr;
  const std::string algo = plan.modelopt_algo();
  // vLLM's legacy parser (_parse_quant_hf_config) recognizes the file by producer.name
  // "modelopt": the name of the format's producer convention; "mpq_version" says who wrote it.
  nlohmann::json q = {{"quant_algo", algo}, {"kv_cache_quant_algo", nullptr}, {"exclude_modules", plan.excluded()}};
  bool nvfp4 = false;
  for (const auto& [m, em] : plan.modules) nvfp4 = nvfp4 || is_nvfp4(em.format);
  q["group_size"] = nvfp4 ? nlohmann::json(kNvfp4BlockSize) : nlohmann::json();
  if (algo == "MIXED_PRECISION") {
    nlohmann::json layers = nlohmann::json::object();
    for (const auto& [m, em] : plan.modules)
      if (em.format) {
        layers[m] = {{"quant_algo", plan.modelopt_algo(*em.format)}};
        if (is_nvfp4(em.format)) layers[m]["group_size"] = kNvfp4BlockSize;
      }
    q["quantized_layers"] = layers;
  }
  return {{"producer", {{"name", "modelopt"}, {"version", std::string("mpq-") + MPQ_VERSION}}},
          {"mpq_version", MPQ_VERSION},
          {"quantization", q}};
}

namespace {

std::string json_str(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// The global weight scale (ModelOpt meaning, the dequantization multiplier) of an NVFP4 linear
// as the engine reads it; NaN when absent.
float nvfp4_global(const TensorStore& st, const std::string& m) {
  if (st.has(m + ".weight_scale_2")) return to_f32(st.get(m + ".weight_scale_2"))[0];
  if (st.has(m + ".weight_global_scale")) return 1.0f / to_f32(st.get(m + ".weight_global_scale"))[0];
  return std::numeric_limits<float>::quiet_NaN();
}

}  // namespace

std::vector<EngineVerdict> engine_compatibility(const std::string& model_dir) {
  const LlamaConfig cfg = load_llama_config(model_dir);
  const TensorStore st = TensorStore::open(model_dir);
  const std::string cfg_file = (fs::path(model_dir) / "config.json").string();
  std::vector<EngineVerdict> out;

  // mpq's own runtime reads every layout it writes.
  EngineVerdict own{"mpq-eval", true, "", {}};
  for (int64_t l = 0; l < cfg.num_layers && own.loads; ++l)
    for (int i = 0; i < 7 && own.loads; ++i) {
      const std::string m = module_name(l, i);
      try {
        const std::string f = detect_linear_format(st, m);
        const auto [rows, cols] = linear_shape(cfg, i);
        if (find_format(f)) read_packed(st, m, f, rows, cols);
      } catch (const Error& e) {
        own = {"mpq-eval", false, e.what(), {}};
      }
    }
  out.push_back(own);

  EngineVerdict v{"vLLM", true, "", {}};
  const nlohmann::json& qc = cfg.quantization_config;
  const std::string method = qc.is_object() ? json_str(qc, "quant_method") : std::string();
  auto refuse = [&](const std::string& why) {
    if (v.loads) v = {"vLLM", false, why, {}};
  };
  std::vector<std::string> notes;
  if (qc.is_null()) {
    v.notes.push_back("dense checkpoint");
  } else if (method.rfind("modelopt", 0) != 0 && method != "compressed-tensors") {
    const std::string fmt = qc.is_object() ? json_str(qc, "format") : std::string();
    refuse("quant_method '" + method + "'" + (fmt.empty() ? "" : " (mpq-native " + fmt + ")") +
           ": vLLM stops with \"Unknown quantization method: " + method + "\"" +
           (method == "squeezellm" ? "; vLLM releases that had a SqueezeLLM loader expect another qweight layout: "
                                     "repack with this mpq (quant_method mpq)"
                                   : ""));
  } else {
    if (method != "compressed-tensors") {
      const std::string algo = json_str(qc, "quant_algo");
      if (qc.contains("exclude_modules") && !qc.contains("ignore"))
        refuse("config.json quantization_config has exclude_modules, but vLLM reads 'ignore' there: the excluded "
               "modules would be loaded as quantized");
      if (algo == "W4A16_NVFP4") notes.push_back("W4A16_NVFP4 needs a vLLM with ModelOpt weight-only NVFP4 (PR #41769, May 2026; older ones refuse it)");
      if (algo == "MIXED_PRECISION") notes.push_back("MIXED_PRECISION needs a vLLM with ModelOpt mixed precision (PR #35047, Feb 2026; older ones refuse it)");
    }
    // Per fused layer: one scheme, the tensor set of the scheme, equal global scales.
    for (int64_t l = 0; l < cfg.num_layers; ++l) {
      std::vector<std::vector<int>> layer_groups = fused_index_groups();
      layer_groups.push_back({3});
      layer_groups.push_back({6});
      for (const std::vector<int>& g : layer_groups) {
        std::set<std::string> formats;
        std::set<float> globals;
        int64_t rows_sum = 0;
        std::string fused = fused_layer_name(module_name(l, g[0]));
        for (int i : g) {
          const std::string m = module_name(l, i);
          bool dyn = false;
          ActQuantMode act = ActQuantMode::kNone;
          try {
            act = declared_activation(qc, m, cfg_file, &dyn);
          } catch (const Error& e) {
            refuse(e.what());
          }
          std::string f;
          try {
            f = detect_linear_format(st, m);
          } catch (const Error& e) {
            refuse(e.what());
            continue;
          }
          formats.insert(f);
          const auto [rows, cols] = linear_shape(cfg, i);
          rows_sum += rows;
          if (f == "nvfp4") {
            if (cols % kNvfp4BlockSize) refuse(m + ": NVFP4 with in_features " + std::to_string(cols) + " (vLLM needs a multiple of 16)");
            globals.insert(nvfp4_global(st, m));
          } else if (f == "fp8") {
            globals.insert(to_f32(st.get(m + ".weight_scale"))[0]);
          } else if (f != "f32" && f != "f16" && f != "bf16") {
            refuse(m + ": " + f + " tensors, which no vLLM scheme reads");
          }
          if (act != ActQuantMode::kNone && !dyn && std::isnan(read_input_scale(st, m)))
            refuse(m + ": the config declares static " + std::string(act_mode_name(act)) +
                   " activations but input_scale is missing (vLLM would use an uninitialized scale)");
        }
        if (formats.size() > 1) refuse(fused + ": shards stored as " + *formats.begin() + " and " + *formats.rbegin() +
                                       " (vLLM needs one precision per fused layer)");
        if (globals.size() > 1) {
          if (*formats.begin() == "nvfp4")
            refuse(fused + ": shards with different NVFP4 global scales; vLLM dequantizes all with the max and loads "
                           "wrong weights (re-export with mpq-pack --export)");
          else
            notes.push_back(fused + ": FP8 shards with different scales are requantized to the max scale by vLLM (a second rounding)");
        }
        const bool marlin = formats.size() == 1 && *formats.begin() == "nvfp4";
        if (marlin && rows_sum % 64)
          notes.push_back(fused + ": N = " + std::to_string(rows_sum) +
                          " is not a multiple of 64: vLLM's Marlin NVFP4 kernel (weight-only, or GPUs without native FP4 "
                          "such as Hopper) raises at load; native FP4 kernels (Blackwell) pad it");
      }
    }
  }
  if (v.loads) v.notes.insert(v.notes.end(), notes.begin(), notes.end());
  out.push_back(v);
  return out;
}

}  // namespace mpq
