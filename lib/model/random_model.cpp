#include "lib/model/random_model.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "formats/sharded_safetensors.h"
#include "lib/common/error.h"
#include "lib/model/llama.h"
#include "lib/numeric/codecs.h"

namespace mpq {
namespace {

/// Elements generated per chunk (one RNG stream each).
constexpr int64_t kChunkElems = int64_t{1} << 20;
/// Chunks generated in parallel before they are written.
constexpr int64_t kChunksPerBatch = 16;

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/// Irwin-Hall(4) approximation of N(0, 1) from one 64-bit draw.
float approx_normal(uint64_t r) {
  const double sum = static_cast<double>((r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48));
  constexpr double kMean = 4 * 65535.0 / 2, kStd = 37837.0;  // sqrt(4 * (65536^2 - 1) / 12)
  return static_cast<float>((sum - kMean) / kStd);
}

/// Fills `out` (n elements of `dtype`) with chunk `chunk` of tensor `tensor`.
void fill_chunk(uint8_t* out, int64_t n, DType dtype, uint64_t seed, uint64_t tensor, uint64_t chunk, float std,
                bool ones) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ULL ^ (tensor << 32) ^ chunk;
  splitmix64(s);
  for (int64_t i = 0; i < n; ++i) {
    const float v = ones ? 1.0f : std == 0.0f ? 0.0f : std * approx_normal(splitmix64(s));
    if (dtype == DType::F32) {
      std::memcpy(out + 4 * i, &v, 4);
    } else {
      const uint16_t h = dtype == DType::F16 ? fp32_to_fp16(v) : fp32_to_bf16(v);
      std::memcpy(out + 2 * i, &h, 2);
    }
  }
}

const char* torch_dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    default: throw Error(ExitCode::kUsage, std::string("random model: dtype ") + dtype_name(d) + " (want f32, f16 or bf16)");
  }
}

}  // namespace

std::vector<std::string> random_model_presets() { return {"llama2-7b", "llama3-8b", "bench-542m"}; }

LlamaConfig random_model_preset(const std::string& name) {
  if (name == "llama2-7b") {
    LlamaConfig c = llama_config(4096, 11008, 32, 32, 32, 32000);
    c.max_position_embeddings = 4096;
    return c;
  }
  if (name == "llama3-8b") {
    LlamaConfig c = llama_config(4096, 14336, 32, 32, 8, 128256);
    c.max_position_embeddings = 8192;
    c.rope_theta = 500000.0;
    c.bos_token_id = 128000;
    c.eos_token_id = 128001;
    return c;
  }
  if (name == "bench-542m") return llama_config();
  std::string known;
  for (const auto& p : random_model_presets()) known += (known.empty() ? "" : ", ") + p;
  throw Error(ExitCode::kUsage, "--preset '" + name + "': unknown (known: " + known + ")");
}

std::string random_model_config_json(const LlamaConfig& c, DType dtype) {
  const nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}},
                              {"model_type", "llama"},
                              {"hidden_size", c.hidden_size},
                              {"intermediate_size", c.intermediate_size},
                              {"num_hidden_layers", c.num_layers},
                              {"num_attention_heads", c.num_heads},
                              {"num_key_value_heads", c.num_kv_heads},
                              {"head_dim", c.head_dim},
                              {"vocab_size", c.vocab_size},
                              {"max_position_embeddings", c.max_position_embeddings},
                              {"rms_norm_eps", c.rms_norm_eps},
                              {"rope_theta", c.rope_theta},
                              {"rope_scaling", nullptr},
                              {"attention_bias", false},
                              {"mlp_bias", false},
                              {"tie_word_embeddings", c.tie_word_embeddings},
                              {"hidden_act", "silu"},
                              {"bos_token_id", c.bos_token_id},
                              {"eos_token_id", c.eos_token_id},
                              {"torch_dtype", torch_dtype_name(dtype)}};
  return cfg.dump(2) + "\n";
}

void write_random_llama(const std::string& dir, const LlamaConfig& c, DType dtype, uint64_t seed, float std,
                        uint64_t max_shard_bytes, const RandomModelProgress& progress) {
  (void)torch_dtype_name(dtype);  // validates dtype
  const auto shapes = llama_tensor_shapes(c);
  std::vector<TensorSpec> plan;
  for (const auto& [name, shape] : shapes) plan.push_back(TensorSpec{name, dtype, shape, 0});
  ShardedSafetensorsWriter w(dir, max_shard_bytes, {{"format", "pt"}});
  w.plan(plan);  // every size is known: headers first, data straight into place
  const std::size_t es = dtype_size(dtype);
  std::vector<std::vector<uint8_t>> bufs(kChunksPerBatch);
  for (std::size_t t = 0; t < shapes.size(); ++t) {
    const auto& [name, shape] = shapes[t];
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    // Norm gains (1-D tensors named *norm*) are 1; biases (1-D otherwise) 0; matrices random.
    const bool ones = shape.size() == 1 && name.find("norm") != std::string::npos;
    const float s = shape.size() == 1 && !ones ? 0.0f : std;
    w.begin(name, dtype, shape);
    const int64_t chunks = (n + kChunkElems - 1) / kChunkElems;
    for (int64_t c0 = 0; c0 < chunks; c0 += kChunksPerBatch) {
      const int64_t nb = std::min(kChunksPerBatch, chunks - c0);
#pragma omp parallel for schedule(static)
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t begin = (c0 + b) * kChunkElems, len = std::min(kChunkElems, n - begin);
        auto& buf = bufs[static_cast<std::size_t>(b)];
        buf.resize(static_cast<std::size_t>(len) * es);
        fill_chunk(buf.data(), len, dtype, seed, t, static_cast<uint64_t>(c0 + b), s, ones);
      }
      for (int64_t b = 0; b < nb; ++b) w.write(bufs[static_cast<std::size_t>(b)].data(), bufs[static_cast<std::size_t>(b)].size());
    }
    w.end();
    if (progress) progress(t + 1, shapes.size(), w.data_bytes());
  }
  w.finish();
  const std::string cfg = random_model_config_json(c, dtype);
  write_file_atomic((std::filesystem::path(dir) / "config.json").string(), cfg.data(), cfg.size());
}

}  // namespace mpq
