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
  std::string source_file;    ///< the config.json it was read from (for messages); "" if built in code
};

class TensorStore;  // formats/safetensors.h

/// Parses and validates `<folder>/config.json` (or a path to the file itself).
/// Throws Error(kInput) "config.json: <field>: <problem>" for a missing file, bad JSON, a
/// field of the wrong JSON type (e.g. hidden_act null or a number), a missing or
/// non-positive size, a size product that overflows int64 (num_attention_heads * head_dim,
/// each projection's rows * cols, num_hidden_layers * parameters per layer, vocab_size *
/// hidden_size * 4 bytes), a non-finite or non-positive rms_norm_eps / rope_theta / rope
/// factor, an unsupported architecture, hidden_act other than silu, mlp_bias, or a
/// rope_scaling type other than linear/llama3. The sizes are not yet compared with any
/// tensor: call check_config_against_tensors() before allocating by them.
LlamaConfig load_llama_config(const std::string& folder_or_file);

/// Same, from an already parsed JSON object; `file` names it in errors.
LlamaConfig parse_llama_config(const nlohmann::json& j, const std::string& file);

/// Checks the config's sizes against the tensors actually present, so that a hostile
/// num_hidden_layers (1e6 .. 2^62), vocab_size, hidden_size, head_dim or intermediate_size
/// fails before anything is allocated by it: the checkpoint must hold tensors for exactly
/// layers 0 .. num_hidden_layers - 1, model.embed_tokens.weight must be [vocab_size,
/// hidden_size], and the first dimension of every projection's weight (dense, fp8, nvfp4),
/// lookup_table (squeezellm) or weight_block_map (fgmp) must be its output size. Cost: one
/// pass over the tensor names. Throws Error(kInput) naming config.json and the field.
void check_config_against_tensors(const LlamaConfig& c, const TensorStore& store);

}  // namespace mpq
