#include "lib/eval/perplexity.h"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <mutex>

#include "lib/common/error.h"

namespace mpq {
namespace {

// log-sum-exp of one row, float64.
double log_sum_exp(const float* row, int64_t n) {
  float mx = row[0];
  for (int64_t j = 1; j < n; ++j) mx = std::max(mx, row[j]);
  double s = 0;
  for (int64_t j = 0; j < n; ++j) s += std::exp(static_cast<double>(row[j]) - mx);
  return mx + std::log(s);
}

}  // namespace

double sum_next_token_nll(const MatrixRM& logits, const int32_t* ids) {
  double s = 0;
  for (Eigen::Index t = 0; t + 1 < logits.rows(); ++t) {
    const float* row = logits.row(t).data();
    s += log_sum_exp(row, logits.cols()) - row[ids[t + 1]];
  }
  return s;
}

double sum_kl_divergence(const MatrixRM& base_logits, const MatrixRM& logits) {
  MPQ_ASSERT(base_logits.rows() == logits.rows() && base_logits.cols() == logits.cols());
  double s = 0;
  const int64_t V = logits.cols();
  for (Eigen::Index t = 0; t + 1 < logits.rows(); ++t) {
    const float* p = base_logits.row(t).data();
    const float* q = logits.row(t).data();
    const double lp = log_sum_exp(p, V), lq = log_sum_exp(q, V);
    double kl = 0;
    for (int64_t j = 0; j < V; ++j) {
      const double logp = p[j] - lp, logq = q[j] - lq;
      kl += std::exp(logp) * (logp - logq);
    }
    s += kl;
  }
  return s;
}

PerplexityResult evaluate_perplexity(const LlamaModel& model, const std::vector<int32_t>& ids,
                                     const PerplexityOptions& opt,
                                     const PerplexityProgress& progress) {
  const WindowForward forward = [&model](const int32_t* tok, int64_t T) { return model.forward(tok, T); };
  WindowForward base;
  if (opt.base) base = [b = opt.base](const int32_t* tok, int64_t T) { return b->forward(tok, T); };
  return evaluate_perplexity(forward, ids, opt, base, window_threads(model.parameter_count()) > 1, progress);
}

PerplexityResult evaluate_perplexity(const WindowForward& model, const std::vector<int32_t>& ids,
                                     const PerplexityOptions& opt, const WindowForward& base,
                                     bool parallel_windows, const PerplexityProgress& progress) {
  if (opt.ctx < 2) throw Error(ExitCode::kUsage, "--ctx must be at least 2");
  int64_t n = static_cast<int64_t>(ids.size());
  if (opt.max_tokens > 0) n = std::min(n, opt.max_tokens);
  const int64_t windows = n / opt.ctx;
  if (windows == 0)
    throw Error(ExitCode::kInput, "only " + std::to_string(n) + " tokens, fewer than one window of --ctx " +
                                      std::to_string(opt.ctx));
  PerplexityResult r;
  r.ctx = opt.ctx;
  r.windows = windows;
  r.scored_tokens = windows * (opt.ctx - 1);
  r.window_nll.assign(static_cast<std::size_t>(windows), 0.0);
  std::vector<double> window_sum(static_cast<std::size_t>(windows), 0.0);  // NLL sums
  std::vector<double> window_kl(static_cast<std::size_t>(windows), 0.0);

  const auto t0 = std::chrono::steady_clock::now();
  std::mutex mu;
  int64_t done = 0;
  double nll_done = 0;
  auto run_window = [&](int64_t w) {
    const int32_t* tok = ids.data() + w * opt.ctx;
    const MatrixRM logits = model(tok, opt.ctx);
    const double nll = sum_next_token_nll(logits, tok);
    window_sum[static_cast<std::size_t>(w)] = nll;
    r.window_nll[static_cast<std::size_t>(w)] = nll / static_cast<double>(opt.ctx - 1);
    if (base) window_kl[static_cast<std::size_t>(w)] = sum_kl_divergence(base(tok, opt.ctx), logits);
    std::lock_guard<std::mutex> lock(mu);
    ++done;
    nll_done += nll;
    if (progress) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      progress(done, windows, std::exp(nll_done / static_cast<double>(done * (opt.ctx - 1))), secs);
    }
  };

  std::exception_ptr failure;
  if (parallel_windows) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t w = 0; w < windows; ++w) {
      try {
        run_window(w);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!failure) failure = std::current_exception();
      }
    }
  } else {
    for (int64_t w = 0; w < windows; ++w) run_window(w);
  }
  if (failure) std::rethrow_exception(failure);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // Sum in window order so the result does not depend on scheduling.
  double total = 0, kl = 0;
  for (int64_t w = 0; w < windows; ++w) {
    total += window_sum[static_cast<std::size_t>(w)];
    kl += window_kl[static_cast<std::size_t>(w)];
  }
  r.mean_nll = total / static_cast<double>(r.scored_tokens);
  r.ppl = std::exp(r.mean_nll);
  r.tokens_per_second = static_cast<double>(windows * opt.ctx) / std::max(r.seconds, 1e-9);
  if (base) r.mean_kl = kl / static_cast<double>(r.scored_tokens);
  return r;
}

}  // namespace mpq
