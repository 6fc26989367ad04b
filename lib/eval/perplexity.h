// Perplexity (and KL divergence to a base model) over non-overlapping windows.
//
// Convention (GPTQ / SqueezeLLM "wikitext2 ppl"): the first N ids (BOS included) are cut
// into floor(N / ctx) windows of exactly ctx tokens; each window runs from a fresh context
// and scores its ctx - 1 next-token predictions; ppl = exp(mean NLL over all scored tokens).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "lib/model/llama.h"

namespace mpq {

struct PerplexityOptions {
  int64_t ctx = 512;         ///< window length in tokens (>= 2)
  int64_t max_tokens = 0;    ///< use only the first max_tokens ids; 0 = all
  /// Optional base model: when set, also the mean KL(base || model) in nats per scored token.
  const LlamaModel* base = nullptr;
};

struct PerplexityResult {
  double ppl = 0;
  double mean_nll = 0;           ///< nats per scored token
  int64_t scored_tokens = 0;     ///< windows * (ctx - 1)
  int64_t windows = 0;
  int64_t ctx = 0;
  double seconds = 0;            ///< wall time of the forward passes
  double tokens_per_second = 0;  ///< windows * ctx / seconds (forward throughput)
  std::optional<double> mean_kl; ///< nats per scored token, when a base model was given
  std::vector<double> window_nll;  ///< mean NLL of each window
};

/// Called after each finished window: (windows done, windows total, running ppl, seconds).
using PerplexityProgress = std::function<void(int64_t, int64_t, double, double)>;

/// Runs the windows through `model` (OpenMP over windows for small models, inside the
/// forward for large ones; the result does not depend on the thread count).
/// Throws Error(kInput) when fewer than ctx ids are available or ctx < 2.
PerplexityResult evaluate_perplexity(const LlamaModel& model, const std::vector<int32_t>& ids,
                                     const PerplexityOptions& opt,
                                     const PerplexityProgress& progress = nullptr);

/// One window's forward pass: logits [T, vocab] (fp32, row-major) for tokens[0..T) run as a
/// fresh context, e.g. LlamaModel::forward or cuda::CudaLlamaModel::forward.
using WindowForward = std::function<MatrixRM(const int32_t* tokens, int64_t T)>;

/// The same convention over any forward pass (the overload above calls this one): `model`
/// scores every window; `base`, when non-empty, gives the KL reference (opt.base is ignored
/// here). With parallel_windows the windows run on OpenMP threads and both forwards must be
/// thread-safe; otherwise one at a time, in order (the GPU runtime). Errors as above.
PerplexityResult evaluate_perplexity(const WindowForward& model, const std::vector<int32_t>& ids,
                                     const PerplexityOptions& opt, const WindowForward& base,
                                     bool parallel_windows, const PerplexityProgress& progress = nullptr);

/// Sum over rows t in [0, T-1) of -log softmax(logits[t])[ids[t+1]], in float64.
double sum_next_token_nll(const MatrixRM& logits, const int32_t* ids);

/// Sum over rows t in [0, T-1) of KL(softmax(base[t]) || softmax(logits[t])), in float64.
double sum_kl_divergence(const MatrixRM& base_logits, const MatrixRM& logits);

}  // namespace mpq
