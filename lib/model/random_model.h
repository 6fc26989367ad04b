// Random Llama-family checkpoints at real model sizes, for measuring memory and time where
// no real model of that size is at hand. Random weights say nothing about quality.
//
// Presets (shapes from the models' Hugging Face config.json):
//   llama2-7b   meta-llama/Llama-2-7b-hf: hidden 4096, intermediate 11008, 32 layers,
//               32 heads (MHA), vocab 32000, max positions 4096, rope theta 1e4, rms eps 1e-5
//   llama3-8b   meta-llama/Meta-Llama-3-8B: hidden 4096, intermediate 14336, 32 layers,
//               32 heads, 8 KV heads (GQA), vocab 128256, max positions 8192, rope theta
//               5e5, rms eps 1e-5, bos 128000, eos 128001
//   bench-542m  mpq's own benchmark model (docs/results.md 1b): hidden 2048, intermediate
//               5632, 8 layers, 16 heads, vocab 32000
// Values: every matrix entry is std * z, z an Irwin-Hall(4) approximation of N(0, 1) (the
// centred, unit-variance sum of four 16-bit uniforms of one splitmix64 draw; |z| <= 3.47),
// seeded per (seed, tensor, chunk of 2^20 elements) so the bytes do not depend on the thread
// count; norm gains are 1, biases 0. Stored in the requested dtype (rounded to nearest even).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "formats/hf_config.h"

namespace mpq {

/// Names accepted by random_model_preset(), in table order.
std::vector<std::string> random_model_presets();

/// The config of a preset (see the file comment). Throws Error(kUsage) naming the known
/// presets for another name.
LlamaConfig random_model_preset(const std::string& name);

/// config.json text for `c` as transformers' LlamaConfig.to_json_string() writes the
/// fields mpq reads (architectures, sizes, rope, ids, tie_word_embeddings, torch_dtype from
/// `dtype`: "float32", "float16", "bfloat16").
std::string random_model_config_json(const LlamaConfig& c, DType dtype);

/// (tensors written, tensors total, bytes written) after each tensor.
using RandomModelProgress = std::function<void(std::size_t, std::size_t, uint64_t)>;

/// Writes config.json and the weights (every tensor of llama_tensor_shapes(c), HF names,
/// in graph order) of a random model into the EXISTING folder `dir`, as sharded
/// safetensors (formats/sharded_safetensors.h) with shards of at most `max_shard_bytes`.
/// dtype must be F32, F16 or BF16 (Error(kUsage) otherwise). Streams: at most 16 chunks of 2^20
/// elements are in memory. Throws Error(kOutput) on write failures.
void write_random_llama(const std::string& dir, const LlamaConfig& c, DType dtype, uint64_t seed, float std,
                        uint64_t max_shard_bytes, const RandomModelProgress& progress = nullptr);

}  // namespace mpq
