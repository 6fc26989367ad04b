// Token generation on the CPU: prefill the prompt into a KV cache, then decode one token at a
// time (LlamaModel::forward with a KvCache), greedy or sampled.
//
// Sampling (the usual transformers / llama.cpp order): logits / temperature, keep the top_k
// largest (0 = all), then the smallest set whose probability reaches top_p (1 = all),
// renormalize, draw with std::mt19937_64 seeded by `seed`. temperature 0 is greedy: the
// arg max, ties to the lowest id.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "lib/model/llama.h"

namespace mpq {

struct SamplingOptions {
  float temperature = 0.0f;  ///< 0: greedy; > 0: sample
  int64_t top_k = 0;         ///< keep the k most likely tokens (0: all)
  float top_p = 1.0f;        ///< nucleus: keep the smallest set with probability >= top_p
  uint64_t seed = 1;
};

/// The next token from one row of logits [vocab]. Throws Error(kUsage) for a negative
/// temperature or top_k, or top_p outside (0, 1]. NaN logits count as -inf (all NaN: id 0).
int32_t sample_token(const float* logits, int64_t vocab, const SamplingOptions& opt, std::mt19937_64& rng);

struct GenerationResult {
  std::vector<int32_t> tokens;  ///< the generated ids (without the prompt)
  double prefill_seconds = 0;   ///< the prompt's forward pass (last-token logits only)
  double decode_seconds = 0;    ///< every decode step after the first token
  int64_t prompt_tokens = 0;
};

/// Runs `prompt` (>= 1 id) through a fresh cache of prompt + max_new positions, then
/// generates up to max_new tokens (the first from the prompt's logits, each next one by a
/// decode step on the previous), stopping after `eos` when eos >= 0. on_token, when set, is
/// called with each new id as it is produced. Errors as LlamaModel::forward; Error(kUsage)
/// for an empty prompt or max_new < 0.
GenerationResult generate(const LlamaModel& model, const std::vector<int32_t>& prompt, int64_t max_new,
                          const SamplingOptions& opt, int32_t eos = -1,
                          const std::function<void(int32_t)>& on_token = nullptr);

/// Logits [T, vocab] of tokens[0..T) run one token at a time through a fresh KV cache: the
/// decode path (single-token products) over a whole window. Equals model.forward(tokens, T)
/// up to the kernels' rounding (exactly the same graph). Errors as LlamaModel::forward.
MatrixRM forward_token_by_token(const LlamaModel& model, const int32_t* tokens, int64_t T);

}  // namespace mpq
