// mpq-make-random-model: a random Llama-family model folder (config.json + sharded
// safetensors, HF names) at real model sizes, for measuring memory and time. No tokenizer:
// feed .i32 token files. See docs/cli.md and lib/model/random_model.h.
#include <omp.h>

#include <cstdio>

#include "formats/sharded_safetensors.h"
#include "formats/staged_folder.h"
#include "lib/model/llama.h"
#include "lib/model/random_model.h"
#include "tools/common.h"

int main(int argc, char** argv) {
  using namespace mpq;
  CLI::App app{"Write a random Llama-family model folder (config.json + sharded safetensors) for "
               "memory and time measurements",
               "mpq-make-random-model"};
  std::string out, preset = "bench-542m", dtype_str = "bf16", shard_size = "5GB";
  int64_t hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, vocab = 0;
  uint64_t seed = 1;
  float std = 0.02f;
  int threads = 0;
  bool force = false, quiet = false;
  std::string presets_help = "Shape preset:";
  for (const auto& p : random_model_presets()) presets_help += " " + p;
  app.add_option("--out", out, "Output folder (written atomically)")->required();
  app.add_option("--preset", preset, presets_help)->capture_default_str();
  app.add_option("--dtype", dtype_str, "Stored dtype: bf16, f16 or f32")
      ->check(CLI::IsMember({"bf16", "f16", "f32"}))
      ->capture_default_str();
  app.add_option("--layers", layers, "Keep only the first N decoder layers (0 = the preset's)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--hidden", hidden, "Override hidden_size")->check(CLI::PositiveNumber);
  app.add_option("--intermediate", intermediate, "Override intermediate_size")->check(CLI::PositiveNumber);
  app.add_option("--heads", heads, "Override num_attention_heads")->check(CLI::PositiveNumber);
  app.add_option("--kv-heads", kv_heads, "Override num_key_value_heads")->check(CLI::PositiveNumber);
  app.add_option("--vocab", vocab, "Override vocab_size")->check(CLI::PositiveNumber);
  app.add_option("--max-shard-size", shard_size,
                 "Largest shard, as transformers' save_pretrained reads it (5GB = 5e9 bytes, 2GiB, "
                 "or bytes); one shard is written as model.safetensors")
      ->capture_default_str();
  app.add_option("--seed", seed)->capture_default_str();
  app.add_option("--std", std, "Weight standard deviation")->capture_default_str();
  app.add_option("--threads", threads, "OpenMP threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  app.add_flag("--force", force, "Replace an existing non-empty output folder");
  app.add_flag("-q,--quiet", quiet, "No progress on stderr");
  app.set_version_flag("--version", tool::version());
  return tool::run(app, argc, argv, [&]() -> int {
    if (threads > 0) omp_set_num_threads(threads);
    LlamaConfig c = random_model_preset(preset);
    const uint64_t max_shard = parse_shard_size(shard_size);
    c = llama_config(hidden ? hidden : c.hidden_size, intermediate ? intermediate : c.intermediate_size,
                     layers ? layers : c.num_layers, heads ? heads : c.num_heads,
                     kv_heads ? kv_heads : (heads ? heads : c.num_kv_heads), vocab ? vocab : c.vocab_size);
    const LlamaConfig base = random_model_preset(preset);
    c.max_position_embeddings = base.max_position_embeddings;
    c.rope_theta = base.rope_theta;
    c.bos_token_id = base.bos_token_id;
    c.eos_token_id = base.eos_token_id;
    if (c.hidden_size % c.num_heads != 0 || (c.hidden_size / c.num_heads) % 2 != 0)
      throw Error(ExitCode::kUsage, "--hidden " + std::to_string(c.hidden_size) + " / --heads " +
                                        std::to_string(c.num_heads) + " must be an even head size");
    if (c.num_heads % c.num_kv_heads != 0)
      throw Error(ExitCode::kUsage, "--heads must be a multiple of --kv-heads");
    const DType dtype = dtype_str == "f32" ? DType::F32 : dtype_str == "f16" ? DType::F16 : DType::BF16;
    int64_t params = 0;
    for (const auto& [name, shape] : llama_tensor_shapes(c)) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      params += n;
    }
    StagedFolder stage(out, force);
    const auto t0 = std::chrono::steady_clock::now();
    write_random_llama(stage.path(), c, dtype, seed, std, max_shard,
                       [&](std::size_t i, std::size_t n, uint64_t bytes) {
                         if (quiet || (i % 16 != 0 && i != n)) return;
                         const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                         const double total = static_cast<double>(params) * static_cast<double>(dtype_size(dtype));
                         std::fprintf(stderr, "[%zu/%zu tensors] %.2f GB, %s elapsed, ETA %s\n", i, n, bytes / 1e9,
                                      tool::format_seconds(s).c_str(),
                                      tool::format_seconds(s * (total / std::max(1.0, static_cast<double>(bytes)) - 1))
                                          .c_str());
                       });
    stage.publish();
    std::printf("wrote   %s\n", out.c_str());
    const bool custom = hidden || intermediate || heads || kv_heads || vocab;
    std::printf("model   %s%s: hidden %lld, intermediate %lld, %lld layers, %lld heads (%lld KV), vocab %lld\n",
                custom ? "custom shape, from " : "", (preset + (layers && !custom ? " (cut)" : "")).c_str(),
                static_cast<long long>(c.hidden_size),
                static_cast<long long>(c.intermediate_size), static_cast<long long>(c.num_layers),
                static_cast<long long>(c.num_heads), static_cast<long long>(c.num_kv_heads),
                static_cast<long long>(c.vocab_size));
    std::printf("params  %lld (%s, %.3f GB)\n", static_cast<long long>(params), dtype_str.c_str(),
                static_cast<double>(params) * static_cast<double>(dtype_size(dtype)) / 1e9);
    return 0;
  });
}
