// Writes a random Llama-family model folder (config.json + model.safetensors, F32, HF names)
// for benchmarks at sizes no real model here has. No tokenizer: feed .i32 token files.
//
//   build/bench/mpq-make-random-model --out DIR --hidden 2048 --intermediate 5632 --layers 8
//       --heads 16 --kv-heads 16 --vocab 32000 [--seed 1] [--dtype f32|bf16|f16]   (one command line)
// --dtype bf16 / f16 store the same fp32 draw rounded to nearest even.
#include <CLI/CLI.hpp>

#include <filesystem>
#include <fstream>

#include "formats/safetensors.h"
#include "lib/model/llama.h"
#include "lib/model/llama_grad.h"
#include "lib/numeric/codecs.h"
#include "tools/common.h"

int main(int argc, char** argv) {
  using namespace mpq;
  CLI::App app{"Write a random Llama model folder for benchmarks", "mpq-make-random-model"};
  std::string out;
  LlamaConfig c = llama_config();  // hidden 2048, 8 layers unless overridden
  uint64_t seed = 1;
  float std = 0.02f;
  std::string dtype = "f32";
  app.add_option("--out", out, "Output folder")->required();
  app.add_option("--hidden", c.hidden_size)->capture_default_str();
  app.add_option("--intermediate", c.intermediate_size)->capture_default_str();
  app.add_option("--layers", c.num_layers)->capture_default_str();
  app.add_option("--heads", c.num_heads)->capture_default_str();
  app.add_option("--kv-heads", c.num_kv_heads)->capture_default_str();
  app.add_option("--vocab", c.vocab_size)->capture_default_str();
  app.add_option("--seed", seed)->capture_default_str();
  app.add_option("--std", std, "Weight standard deviation")->capture_default_str();
  app.add_option("--dtype", dtype, "Stored dtype of every tensor")->check(CLI::IsMember({"f32", "bf16", "f16"}))->capture_default_str();
  return tool::run(app, argc, argv, [&]() -> int {
    c = llama_config(c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads, c.vocab_size);
    const LlamaParams<float> p = to_params<float>(random_llama_weights(c, seed, std));
    std::filesystem::create_directories(out);
    SafetensorsWriter w;
    p.for_each([&](const std::string& name, const float* d, Eigen::Index n) {
      std::vector<int64_t> shape;
      for (const auto& [nm, sh] : llama_tensor_shapes(c))
        if (nm == name) shape = sh;
      if (dtype == "f32") return w.add_f32(name, shape, std::vector<float>(d, d + n));
      std::vector<uint8_t> b(static_cast<std::size_t>(n) * 2);
      for (Eigen::Index i = 0; i < n; ++i) {
        const uint16_t h = dtype == "bf16" ? fp32_to_bf16(d[i]) : fp32_to_fp16(d[i]);
        b[2 * i] = static_cast<uint8_t>(h & 0xFF);
        b[2 * i + 1] = static_cast<uint8_t>(h >> 8);
      }
      w.add(name, dtype == "bf16" ? DType::BF16 : DType::F16, shape, std::move(b));
    });
    w.set_metadata("format", "pt");
    w.write(out + "/model.safetensors");
    const nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"},
                                {"hidden_size", c.hidden_size}, {"intermediate_size", c.intermediate_size},
                                {"num_hidden_layers", c.num_layers}, {"num_attention_heads", c.num_heads},
                                {"num_key_value_heads", c.num_kv_heads}, {"head_dim", c.head_dim},
                                {"vocab_size", c.vocab_size}, {"max_position_embeddings", c.max_position_embeddings},
                                {"rms_norm_eps", c.rms_norm_eps}, {"rope_theta", 10000.0},
                                {"tie_word_embeddings", false}, {"hidden_act", "silu"},
                                {"bos_token_id", 1}, {"eos_token_id", 2},
                                {"torch_dtype", dtype == "f32" ? "float32" : dtype == "bf16" ? "bfloat16" : "float16"}};
    std::ofstream(out + "/config.json") << cfg.dump(2) << "\n";
    return 0;
  });
}
