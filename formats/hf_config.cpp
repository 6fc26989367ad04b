#include "formats/hf_config.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "lib/common/error.h"

namespace mpq {
namespace {

namespace fs = std::filesystem;

int64_t get_int(const nlohmann::json& j, const std::string& file, const char* key,
                int64_t fallback, bool required) {
  if (!j.contains(key) || j[key].is_null()) {
    if (required) throw_input(file, std::string(key) + ": missing");
    return fallback;
  }
  if (!j[key].is_number_integer()) throw_input(file, std::string(key) + ": not an integer");
  return j[key].get<int64_t>();
}

double get_double(const nlohmann::json& j, const std::string& file, const char* key,
                  double fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number()) throw_input(file, std::string(key) + ": not a number");
  return j[key].get<double>();
}

bool get_bool(const nlohmann::json& j, const std::string& file, const char* key, bool fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_boolean()) throw_input(file, std::string(key) + ": not a boolean");
  return j[key].get<bool>();
}

void require_positive(const std::string& file, const char* key, int64_t v) {
  if (v <= 0) throw_input(file, std::string(key) + ": must be positive, got " + std::to_string(v));
}

RopeScaling parse_rope_scaling(const nlohmann::json& j, const std::string& file) {
  RopeScaling r;
  if (!j.contains("rope_scaling") || j["rope_scaling"].is_null()) return r;
  const auto& s = j["rope_scaling"];
  if (!s.is_object()) throw_input(file, "rope_scaling: not an object");
  std::string type;
  if (s.contains("rope_type") && s["rope_type"].is_string()) type = s["rope_type"];
  else if (s.contains("type") && s["type"].is_string()) type = s["type"];
  if (type.empty() || type == "default") return r;
  r.factor = get_double(s, file, "factor", 1.0);
  if (!(r.factor > 0)) throw_input(file, "rope_scaling.factor: must be positive");
  if (type == "linear") {
    r.type = RopeScaling::Type::kLinear;
  } else if (type == "llama3") {
    r.type = RopeScaling::Type::kLlama3;
    r.low_freq_factor = get_double(s, file, "low_freq_factor", 1.0);
    r.high_freq_factor = get_double(s, file, "high_freq_factor", 4.0);
    r.original_max_position_embeddings =
        get_int(s, file, "original_max_position_embeddings", 8192, false);
    if (!(r.high_freq_factor > r.low_freq_factor))
      throw_input(file, "rope_scaling: high_freq_factor must exceed low_freq_factor");
  } else {
    throw_input(file, "rope_scaling.rope_type: unsupported '" + type +
                          "' (supported: default, linear, llama3)");
  }
  return r;
}

}  // namespace

LlamaConfig parse_llama_config(const nlohmann::json& j, const std::string& file) {
  if (!j.is_object()) throw_input(file, "not a JSON object");
  LlamaConfig c;
  c.raw = j;
  if (!j.contains("architectures") || !j["architectures"].is_array() ||
      j["architectures"].empty() || !j["architectures"][0].is_string())
    throw_input(file, "architectures: missing");
  c.architecture = j["architectures"][0].get<std::string>();
  const bool qwen2 = c.architecture == "Qwen2ForCausalLM";
  if (c.architecture != "LlamaForCausalLM" && c.architecture != "MistralForCausalLM" && !qwen2)
    throw_input(file, "architectures: unsupported '" + c.architecture +
                          "' (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)");

  c.hidden_size = get_int(j, file, "hidden_size", 0, true);
  c.intermediate_size = get_int(j, file, "intermediate_size", 0, true);
  c.num_layers = get_int(j, file, "num_hidden_layers", 0, true);
  c.num_heads = get_int(j, file, "num_attention_heads", 0, true);
  c.num_kv_heads = get_int(j, file, "num_key_value_heads", c.num_heads, false);
  c.vocab_size = get_int(j, file, "vocab_size", 0, true);
  for (auto [k, v] : {std::pair{"hidden_size", c.hidden_size},
                      {"intermediate_size", c.intermediate_size},
                      {"num_hidden_layers", c.num_layers},
                      {"num_attention_heads", c.num_heads},
                      {"num_key_value_heads", c.num_kv_heads},
                      {"vocab_size", c.vocab_size}})
    require_positive(file, k, v);
  if (c.num_heads % c.num_kv_heads != 0)
    throw_input(file, "num_key_value_heads: " + std::to_string(c.num_kv_heads) +
                          " does not divide num_attention_heads " + std::to_string(c.num_heads));
  c.head_dim = get_int(j, file, "head_dim", 0, false);
  if (c.head_dim == 0) {
    if (c.hidden_size % c.num_heads != 0)
      throw_input(file, "hidden_size: not divisible by num_attention_heads and no head_dim");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  require_positive(file, "head_dim", c.head_dim);
  if (c.head_dim % 2 != 0) throw_input(file, "head_dim: must be even for RoPE");
  c.max_position_embeddings = get_int(j, file, "max_position_embeddings", 0, false);
  c.rms_norm_eps = get_double(j, file, "rms_norm_eps", 1e-6);
  if (!(c.rms_norm_eps > 0)) throw_input(file, "rms_norm_eps: must be positive");
  c.rope_theta = get_double(j, file, "rope_theta", 10000.0);
  if (!(c.rope_theta > 0)) throw_input(file, "rope_theta: must be positive");
  c.rope_scaling = parse_rope_scaling(j, file);
  c.tie_word_embeddings = get_bool(j, file, "tie_word_embeddings", false);
  c.bos_token_id = get_int(j, file, "bos_token_id", 1, false);
  c.eos_token_id = j.contains("eos_token_id") && j["eos_token_id"].is_number_integer()
                       ? j["eos_token_id"].get<int64_t>() : 2;

  const std::string act = j.value("hidden_act", std::string("silu"));
  if (act != "silu") throw_input(file, "hidden_act: unsupported '" + act + "' (supported: silu)");
  if (get_bool(j, file, "mlp_bias", false)) throw_input(file, "mlp_bias: true is unsupported");
  if (qwen2) {
    c.qkv_bias = true;
  } else if (get_bool(j, file, "attention_bias", false)) {
    c.qkv_bias = true;
    c.o_bias = true;
  }
  // Sliding-window attention only matters past the window; record it so eval can refuse.
  const bool use_sw = qwen2 ? get_bool(j, file, "use_sliding_window", false) : true;
  if (use_sw) c.sliding_window = get_int(j, file, "sliding_window", 0, false);
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) c.torch_dtype = j["torch_dtype"];
  if (j.contains("quantization_config")) c.quantization_config = j["quantization_config"];
  return c;
}

LlamaConfig load_llama_config(const std::string& folder_or_file) {
  fs::path p(folder_or_file);
  if (!fs::exists(p)) throw_input(folder_or_file, "model folder not found");
  if (fs::is_directory(p)) p /= "config.json";
  const std::string file = p.string();
  std::ifstream in(p);
  if (!in) throw_input(file, "cannot open (missing file?)");
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    throw_input(file, std::string("malformed JSON: ") + e.what());
  }
  return parse_llama_config(j, file);
}

}  // namespace mpq
