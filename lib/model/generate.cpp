// Greedy and sampled generation with a KV cache (lib/model/generate.h).
#include "lib/model/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "lib/common/error.h"

namespace mpq {

int32_t sample_token(const float* logits, int64_t vocab, const SamplingOptions& opt, std::mt19937_64& rng) {
  if (!(opt.temperature >= 0.0f) || opt.top_k < 0 || !(opt.top_p > 0.0f && opt.top_p <= 1.0f))
    throw Error(ExitCode::kUsage, "sampling: temperature >= 0, top_k >= 0 and top_p in (0, 1] required");
  auto value = [&](int64_t i) { return std::isnan(logits[i]) ? -INFINITY : logits[i]; };
  if (opt.temperature == 0.0f) {
    int64_t best = 0;
    for (int64_t i = 1; i < vocab; ++i)
      if (value(i) > value(best)) best = i;
    return static_cast<int32_t>(best);
  }
  std::vector<int32_t> ids(static_cast<std::size_t>(vocab));
  std::iota(ids.begin(), ids.end(), 0);
  const int64_t k = opt.top_k > 0 ? std::min(opt.top_k, vocab) : vocab;
  auto by_logit = [&](int32_t a, int32_t b) { return value(a) > value(b) || (value(a) == value(b) && a < b); };
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), by_logit);
  ids.resize(static_cast<std::size_t>(k));
  const double mx = value(ids[0]);
  std::vector<double> p(ids.size());
  double sum = 0;
  for (std::size_t i = 0; i < ids.size(); ++i) sum += p[i] = std::exp((value(ids[i]) - mx) / opt.temperature);
  if (!(sum > 0)) return ids[0];
  // Nucleus: the shortest prefix (in probability order) reaching top_p.
  std::size_t n = ids.size();
  if (opt.top_p < 1.0f) {
    double acc = 0;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      acc += p[i] / sum;
      if (acc >= opt.top_p) {
        n = i + 1;
        break;
      }
    }
  }
  const double total = std::accumulate(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(n), 0.0);
  double u = std::uniform_real_distribution<double>(0.0, total)(rng);
  for (std::size_t i = 0; i < n; ++i) {
    if (u < p[i]) return ids[i];
    u -= p[i];
  }
  return ids[n - 1];
}

GenerationResult generate(const LlamaModel& model, const std::vector<int32_t>& prompt, int64_t max_new,
                          const SamplingOptions& opt, int32_t eos, const std::function<void(int32_t)>& on_token) {
  if (prompt.empty()) throw Error(ExitCode::kUsage, "generate: empty prompt");
  if (max_new < 0) throw Error(ExitCode::kUsage, "generate: negative token count");
  using clock = std::chrono::steady_clock;
  GenerationResult r;
  r.prompt_tokens = static_cast<int64_t>(prompt.size());
  KvCache cache(model.config(), r.prompt_tokens + std::max<int64_t>(max_new, 1));
  std::mt19937_64 rng(opt.seed);
  const int64_t V = model.config().vocab_size;
  auto t0 = clock::now();
  MatrixRM logits = model.forward(prompt.data(), r.prompt_tokens, cache, /*last_only=*/true);
  r.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  t0 = clock::now();
  for (int64_t i = 0; i < max_new; ++i) {
    const int32_t next = sample_token(logits.data(), V, opt, rng);
    r.tokens.push_back(next);
    if (on_token) on_token(next);
    if ((eos >= 0 && next == eos) || i + 1 == max_new) break;
    logits = model.forward(&next, 1, cache);
  }
  r.decode_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  return r;
}

MatrixRM forward_token_by_token(const LlamaModel& model, const int32_t* tokens, int64_t T) {
  MatrixRM logits(T, model.config().vocab_size);
  if (T == 0) return logits;
  KvCache cache(model.config(), T);
  for (int64_t t = 0; t < T; ++t) logits.row(t) = model.forward(tokens + t, 1, cache);
  return logits;
}

}  // namespace mpq
