#include "formats/hf_config.h"

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <set>

#include "formats/safetensors.h"
#include "lib/common/error.h"
#include "lib/common/json_fields.h"
#include "lib/common/shape.h"

namespace mpq {
namespace {

namespace fs = std::filesystem;

void require_positive(const JsonObject& j, const char* key, int64_t v) {
  if (v <= 0) j.fail(key, "must be positive, got " + std::to_string(v));
}

/// A finite, positive number (rms_norm_eps, rope_theta, rope factors).
double get_positive_double(const JsonObject& j, const char* key, double fallback) {
  const double v = j.get_double(key, fallback);
  if (!(v > 0) || !std::isfinite(v)) j.fail(key, "must be a finite positive number");
  return v;
}

/// a * b for positive sizes, or Error(kInput) naming both fields when it overflows int64.
int64_t checked_product(const JsonObject& j, const char* what, int64_t a, int64_t b) {
  int64_t out = 0;
  if (__builtin_mul_overflow(a, b, &out)) j.fail(what, std::to_string(a) + " x " + std::to_string(b) + " overflows 64 bits");
  return out;
}

RopeScaling parse_rope_scaling(const JsonObject& j) {
  RopeScaling r;
  const std::optional<JsonObject> s = j.find_object("rope_scaling");
  if (!s) return r;
  const std::string type = s->has("rope_type") ? s->get_string("rope_type") : s->get_string("type", "");
  if (type.empty() || type == "default") return r;
  r.factor = get_positive_double(*s, "factor", 1.0);
  if (type == "linear") {
    r.type = RopeScaling::Type::kLinear;
  } else if (type == "llama3") {
    r.type = RopeScaling::Type::kLlama3;
    r.low_freq_factor = get_positive_double(*s, "low_freq_factor", 1.0);
    r.high_freq_factor = get_positive_double(*s, "high_freq_factor", 4.0);
    r.original_max_position_embeddings = s->get_int("original_max_position_embeddings", 8192);
    require_positive(*s, "original_max_position_embeddings", r.original_max_position_embeddings);
    if (!(r.high_freq_factor > r.low_freq_factor))
      s->fail("high_freq_factor", "must exceed low_freq_factor");
  } else {
    s->fail("rope_type", "unsupported '" + type + "' (supported: default, linear, llama3)");
  }
  return r;
}

/// The layer index of "model.layers.<n>.<rest>", or -1.
int64_t layer_of(const std::string& name) {
  static const std::string prefix = "model.layers.";
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  int64_t n = 0;
  std::size_t i = prefix.size();
  for (; i < name.size() && name[i] >= '0' && name[i] <= '9'; ++i) {
    if (n > (INT64_MAX - 9) / 10) return -1;
    n = n * 10 + (name[i] - '0');
  }
  return (i > prefix.size() && i < name.size() && name[i] == '.') ? n : -1;
}

}  // namespace

LlamaConfig parse_llama_config(const nlohmann::json& json, const std::string& file) {
  const JsonObject j(json, file);
  LlamaConfig c;
  c.raw = json;
  c.source_file = file;
  const nlohmann::json& arch = j.get_array("architectures");
  if (arch.empty() || !arch[0].is_string()) j.fail("architectures", "expected a non-empty array of strings");
  c.architecture = arch[0].get<std::string>();
  const bool qwen2 = c.architecture == "Qwen2ForCausalLM";
  if (c.architecture != "LlamaForCausalLM" && c.architecture != "MistralForCausalLM" && !qwen2)
    j.fail("architectures", "unsupported '" + c.architecture +
                                "' (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)");

  c.hidden_size = j.get_int("hidden_size");
  c.intermediate_size = j.get_int("intermediate_size");
  c.num_layers = j.get_int("num_hidden_layers");
  c.num_heads = j.get_int("num_attention_heads");
  c.num_kv_heads = j.get_int("num_key_value_heads", c.num_heads);
  c.vocab_size = j.get_int("vocab_size");
  for (auto [k, v] : {std::pair{"hidden_size", c.hidden_size},
                      {"intermediate_size", c.intermediate_size},
                      {"num_hidden_layers", c.num_layers},
                      {"num_attention_heads", c.num_heads},
                      {"num_key_value_heads", c.num_kv_heads},
                      {"vocab_size", c.vocab_size}})
    require_positive(j, k, v);
  if (c.num_heads % c.num_kv_heads != 0)
    j.fail("num_key_value_heads", std::to_string(c.num_kv_heads) + " does not divide num_attention_heads " +
                                      std::to_string(c.num_heads));
  c.head_dim = j.get_int("head_dim", 0);
  if (c.head_dim == 0) {
    if (c.hidden_size % c.num_heads != 0)
      j.fail("hidden_size", "not divisible by num_attention_heads and no head_dim");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  require_positive(j, "head_dim", c.head_dim);
  if (c.head_dim % 2 != 0) j.fail("head_dim", "must be even for RoPE");
  // Every size product the graph forms must fit int64 (the tensors are checked against the
  // checkpoint by check_config_against_tensors before anything is allocated).
  const int64_t q = checked_product(j, "num_attention_heads * head_dim", c.num_heads, c.head_dim);
  const int64_t kv = checked_product(j, "num_key_value_heads * head_dim", c.num_kv_heads, c.head_dim);
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  // Weights of one layer: q, o [q x H]; k, v [kv x H]; gate, up, down [I x H]; two norms.
  int64_t per_layer = 2 * H;
  for (const int64_t p : {checked_product(j, "hidden_size * num_attention_heads * head_dim", H, q),
                          checked_product(j, "hidden_size * num_attention_heads * head_dim", H, q),
                          checked_product(j, "hidden_size * num_key_value_heads * head_dim", H, kv),
                          checked_product(j, "hidden_size * num_key_value_heads * head_dim", H, kv),
                          checked_product(j, "hidden_size * intermediate_size * 3", checked_product(j, "hidden_size * intermediate_size", H, I), 3)})
    if (__builtin_add_overflow(per_layer, p, &per_layer)) j.fail("num_hidden_layers", "parameters per layer overflow 64 bits");
  int64_t total = checked_product(j, "num_hidden_layers * parameters per layer", c.num_layers, per_layer);
  const int64_t embed = checked_product(j, "vocab_size * hidden_size", c.vocab_size, H);
  if (__builtin_add_overflow(total, embed, &total) || __builtin_add_overflow(total, embed, &total))
    j.fail("num_hidden_layers", "the parameter count overflows 64 bits");
  checked_product(j, "parameter count * 4 bytes", total, 4);  // fp32 copies of any tensor fit size_t
  c.max_position_embeddings = j.get_int("max_position_embeddings", 0);
  if (c.max_position_embeddings < 0) j.fail("max_position_embeddings", "must not be negative");
  c.rms_norm_eps = get_positive_double(j, "rms_norm_eps", 1e-6);
  c.rope_theta = get_positive_double(j, "rope_theta", 10000.0);
  c.rope_scaling = parse_rope_scaling(j);
  c.tie_word_embeddings = j.get_bool("tie_word_embeddings", false);
  c.bos_token_id = j.get_int("bos_token_id", 1);
  // eos_token_id: one id, or a list of ids (Llama 3); the first is kept.
  if (const nlohmann::json* eos = j.find("eos_token_id"); eos && !eos->is_null()) {
    if (eos->is_array() && !eos->empty() && (*eos)[0].is_number_integer()) c.eos_token_id = (*eos)[0].get<int64_t>();
    else if (eos->is_number_integer()) c.eos_token_id = eos->get<int64_t>();
    else j.fail("eos_token_id", "expected an integer or a list of integers, got " + json_type_name(*eos));
  }

  // hidden_act: absent means silu; present it must be a string (null included: transformers
  // would fail on it too).
  const std::string act = j.find("hidden_act") ? j.get_string("hidden_act") : "silu";
  if (act != "silu") j.fail("hidden_act", "unsupported '" + act + "' (supported: silu)");
  if (j.get_bool("mlp_bias", false)) j.fail("mlp_bias", "true is unsupported");
  if (qwen2) {
    c.qkv_bias = true;
  } else if (j.get_bool("attention_bias", false)) {
    c.qkv_bias = true;
    c.o_bias = true;
  }
  // Sliding-window attention only matters past the window; record it so eval can refuse.
  const bool use_sw = qwen2 ? j.get_bool("use_sliding_window", false) : true;
  if (use_sw) c.sliding_window = j.get_int("sliding_window", 0);
  if (c.sliding_window < 0) j.fail("sliding_window", "must not be negative");
  c.torch_dtype = j.get_string("torch_dtype", "");
  if (const auto qc = j.find_object("quantization_config")) c.quantization_config = qc->json();
  return c;
}

void check_config_against_tensors(const LlamaConfig& c, const TensorStore& store) {
  const std::string file = c.source_file.empty() ? "config.json" : c.source_file;
  const auto fail = [&](const std::string& field, const std::string& what) { throw_input(file, field + ": " + what); };
  // Layers: exactly 0 .. num_hidden_layers - 1 must have tensors (bounded by the file's names).
  std::set<int64_t> layers;
  for (const std::string& name : store.names())
    if (const int64_t l = layer_of(name); l >= 0) layers.insert(l);
  if (static_cast<int64_t>(layers.size()) != c.num_layers || (!layers.empty() && *layers.rbegin() != c.num_layers - 1))
    fail("num_hidden_layers", std::to_string(c.num_layers) + ", but " + store.path() + " has tensors for " +
                                  std::to_string(layers.size()) + " layer(s)" +
                                  (layers.empty() ? "" : " (highest index " + std::to_string(*layers.rbegin()) + ")"));
  // The embedding fixes vocab_size and hidden_size.
  const std::string embed = "model.embed_tokens.weight";
  if (!store.has(embed)) throw_input(store.path(), "missing tensor '" + embed + "'");
  const TensorView& e = store.get(embed);
  if (e.shape != std::vector<int64_t>{c.vocab_size, c.hidden_size})
    fail("vocab_size", std::to_string(c.vocab_size) + " and hidden_size " + std::to_string(c.hidden_size) +
                           " disagree with tensor '" + embed + "' of shape " + shape_str(e.shape) + " in " + e.file);
  // Each projection's output rows fix num_attention_heads * head_dim, num_key_value_heads *
  // head_dim and intermediate_size. The first dimension of its weight (dense, fp8, nvfp4),
  // lookup_table (squeezellm) or weight_block_map (fgmp) is its output size in every layout.
  const int64_t q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  struct Projection {
    const char* field;  // the config field(s) that set its output size
    int64_t rows, cols;
  };
  const Projection proj[7] = {{"num_attention_heads * head_dim", q, H}, {"num_key_value_heads * head_dim", kv, H},
                              {"num_key_value_heads * head_dim", kv, H}, {"hidden_size", H, q},
                              {"intermediate_size", I, H},               {"intermediate_size", I, H},
                              {"hidden_size", H, I}};
  static const char* kProjections[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                        "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (int i = 0; i < 7; ++i) {
      const std::string module = "model.layers." + std::to_string(l) + "." + kProjections[i];
      for (const char* part : {".weight", ".lookup_table", ".weight_block_map"}) {
        if (!store.has(module + part)) continue;
        const TensorView& t = store.get(module + part);
        if (t.shape.empty() || t.shape[0] != proj[i].rows)
          fail(proj[i].field, std::to_string(proj[i].rows) + " disagrees with tensor '" + t.name + "' of shape " +
                                  shape_str(t.shape) + " in " + t.file + " (config.json gives the weight shape " +
                                  shape_str({proj[i].rows, proj[i].cols}) + ")");
        break;
      }
    }
}

LlamaConfig load_llama_config(const std::string& folder_or_file) {
  fs::path p(folder_or_file);
  if (!fs::exists(p)) throw_input(folder_or_file, "model folder not found");
  if (fs::is_directory(p)) p /= "config.json";
  const std::string file = p.string();
  return parse_llama_config(read_json_file(file), file);
}

}  // namespace mpq
