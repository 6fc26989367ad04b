// Hugging Face config.json for the Llama family (LlamaForCausalLM, MistralForCausalLM,
// Qwen2ForCausalLM): the fields the Llama graph needs, validated.
// Source: transformers' LlamaConfig / MistralConfig / Qwen2Config field names and defaults.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace mpq {

/// RoPE frequency scaling from config.json "rope_scaling" (transformers' rope_init_fn).
struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;                        ///< linear and llama3
  double low_freq_factor = 1.0;               ///< llama3
  double high_freq_factor = 4.0;              ///< llama3
  int64_t original_max_position_embeddings = 8192;  ///< llama3
};

/// Architecture of one Llama-family model.
struct LlamaConfig {
  std::string architecture;   ///< "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;       ///< config "head_dim", default hidden_size / num_heads
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  int64_t sliding_window = 0; ///< 0 = none (Mistral / Qwen2 when enabled)
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;      ///< Qwen2 (always) or Llama "attention_bias" (q/k/v)
  bool o_bias = false;        ///< Llama "attention_bias" also biases o_proj
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;
  std::string torch_dtype;    ///< informational
  nlohmann::json quantization_config;  ///< null when absent
  nlohmann::json raw;         ///< the whole file, to copy into packed folders
};

/// Parses and validates `<folder>/config.json` (or a path to the file itself).
/// Throws Error(kInput) "config.json: <field>: <problem>" for a missing file, bad JSON, a
/// missing or non-positive size, an unsupported architecture, hidden_act other than silu,
/// mlp_bias, or a rope_scaling type other than linear/llama3.
LlamaConfig load_llama_config(const std::string& folder_or_file);

/// Same, from an already parsed JSON object; `file` names it in errors.
LlamaConfig parse_llama_config(const nlohmann::json& j, const std::string& file);

}  // namespace mpq
