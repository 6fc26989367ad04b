#include "calibration/sensitivity.h"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <memory>

#include "lib/common/error.h"
#include "lib/model/llama_grad.h"

namespace mpq {
namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Accumulates, per input group of every layer in [begin, end), in float64: sum_t x x^T
// (full) or sum_t x^2 (diagonal) of the forward inputs when `hessian`, and sum_t (dL/dx)^2
// of the backward input gradients when `act_fisher`.
class HessianAccumulator final : public LinearInputObserver {
 public:
  HessianAccumulator(int64_t begin, int64_t end, bool hessian, bool full, bool act_fisher)
      : begin_(begin), end_(end), hessian_(hessian), full_(full), act_fisher_(act_fisher) {
    diag_.resize(static_cast<std::size_t>((end - begin) * 4));
    if (full) full_m_.resize(diag_.size());
    if (act_fisher) grad_sq_.resize(diag_.size());
  }
  void on_linear_input(int64_t layer, int group, const MatRM<float>& x) override {
    if (!hessian_ || layer < begin_ || layer >= end_) return;
    const std::size_t k = static_cast<std::size_t>((layer - begin_) * 4 + group);
    add_squares(diag_[k], x);
    if (full_) {
      const Eigen::MatrixXd xd = x.cast<double>();
      if (full_m_[k].size() == 0) full_m_[k] = Eigen::MatrixXd::Zero(x.cols(), x.cols());
      full_m_[k].noalias() += xd.transpose() * xd;
    }
  }
  void on_linear_input_grad(int64_t layer, int group, const MatRM<float>& dx) override {
    if (!act_fisher_ || layer < begin_ || layer >= end_) return;
    add_squares(grad_sq_[static_cast<std::size_t>((layer - begin_) * 4 + group)], dx);
  }
  const Eigen::VectorXd& diag(int64_t layer, int group) const {
    return diag_[static_cast<std::size_t>((layer - begin_) * 4 + group)];
  }
  const Eigen::MatrixXd& full(int64_t layer, int group) const {
    return full_m_[static_cast<std::size_t>((layer - begin_) * 4 + group)];
  }
  const Eigen::VectorXd& grad_sq(int64_t layer, int group) const {
    return grad_sq_[static_cast<std::size_t>((layer - begin_) * 4 + group)];
  }

 private:
  // acc += column sums of x^2 (acc sized on first use).
  static void add_squares(Eigen::VectorXd& acc, const MatRM<float>& x) {
    if (acc.size() == 0) acc = Eigen::VectorXd::Zero(x.cols());
    acc += x.cast<double>().array().square().colwise().sum().matrix().transpose();
  }
  int64_t begin_, end_;
  bool hessian_, full_, act_fisher_;
  std::vector<Eigen::VectorXd> diag_;
  std::vector<Eigen::MatrixXd> full_m_;
  std::vector<Eigen::VectorXd> grad_sq_;
};

// Rademacher +-1 from a splitmix64 stream.
struct Rademacher {
  uint64_t state;
  double next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return ((z ^ (z >> 31)) >> 63) ? 1.0 : -1.0;
  }
};

std::vector<double*> param_pointers(LlamaParams<double>& p, std::vector<Eigen::Index>* sizes) {
  std::vector<double*> out;
  p.for_each([&](const std::string&, double* d, Eigen::Index n) {
    out.push_back(d);
    if (sizes) sizes->push_back(n);
  });
  return out;
}


// Runs fn(i, thread) for i in [0, n): P > 1 threads with a static round-robin schedule and the
// first exception rethrown; P == 1 runs outside any parallel region, so the GEMMs inside fn
// use the OpenMP thread pool (a one-thread team would make every GEMM start nested threads).
template <typename F>
void parallel_loop(int64_t n, int P, F&& fn) {
  if (P == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i, 0);
    return;
  }
  std::exception_ptr failure;
#pragma omp parallel for num_threads(P) schedule(static, 1)
  for (int64_t i = 0; i < n; ++i) {
    try {
      fn(i, omp_get_thread_num());
    } catch (...) {
#pragma omp critical(mpq_parallel_loop_failure)
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
}

int parallel_windows(const LlamaParams<float>& p) {
  int64_t n = 0;
  p.for_each([&](const std::string&, const float*, Eigen::Index k) { n += k; });
  return window_threads(n);
}

}  // namespace

SensitivityResult compute_sensitivities(const LlamaModel& model, const std::vector<int32_t>& ids,
                                        const std::vector<int64_t>& window_starts, int64_t seq_len,
                                        const SensitivityOptions& opt, const SensitivityProgress& progress) {
  return compute_sensitivities(model.config(), to_params<float>(model.weights()), ids, window_starts, seq_len, opt,
                               progress);
}

SensitivityResult compute_sensitivities(const LlamaConfig& c, const LlamaParams<float>& pf,
                                        const std::vector<int32_t>& ids,
                                        const std::vector<int64_t>& window_starts, int64_t seq_len,
                                        const SensitivityOptions& opt, const SensitivityProgress& progress) {
  const int64_t begin = opt.layer_begin, end = opt.layer_end < 0 ? c.num_layers : opt.layer_end;
  if (begin < 0 || end > c.num_layers || begin >= end)
    throw Error(ExitCode::kUsage, "--layers " + std::to_string(begin) + ":" + std::to_string(end) +
                                      " is empty or outside [0, " + std::to_string(c.num_layers) + ")");
  const int64_t N = static_cast<int64_t>(window_starts.size());
  for (int64_t s : window_starts) MPQ_ASSERT(s >= 0 && s + seq_len <= static_cast<int64_t>(ids.size()));

  SensitivityResult res;
  res.windows = N;
  res.seq_len = seq_len;
  res.tokens = N * seq_len;
  for (int64_t l = begin; l < end; ++l)
    for (int i = 0; i < 7; ++i) {
      TensorSensitivity t;
      t.name = "model.layers." + std::to_string(l) + "." + kLinearNames[i];
      const auto [rows, cols] = linear_shape(c, i);
      t.rows = rows;
      t.cols = cols;
      if (opt.fisher) t.fisher.assign(static_cast<std::size_t>(rows * cols), 0.0f);
      res.tensors.push_back(std::move(t));
    }
  const auto t0 = Clock::now();

  // ---- Fisher and layer Hessian: one pass over the windows ----
  // Small models run one window per thread (Eigen's own GEMM threading only adds overhead
  // at their sizes); thread k takes windows k, k + P, ... and the per-thread sums are
  // reduced in thread order, so the result is identical from run to run.
  const int P = parallel_windows(pf);
  if (opt.fisher || opt.hessian || opt.act_fisher) {
    struct Partial {
      LlamaParams<float> grad;
      std::vector<std::vector<float>> fisher;  // per tensor in range
      std::unique_ptr<HessianAccumulator> hacc;
    };
    std::vector<Partial> part(static_cast<std::size_t>(P));
    // With one thread the result's own accumulators serve (no second copy of the Fisher).
    for (auto& pt : part) {
      pt.hacc = std::make_unique<HessianAccumulator>(begin, end, opt.hessian, opt.full_hessian, opt.act_fisher);
      if (opt.fisher && P > 1)
        for (const auto& t : res.tensors) pt.fisher.emplace_back(static_cast<std::size_t>(t.rows * t.cols), 0.0f);
    }
    const auto tf = Clock::now();
    int64_t done = 0;
    parallel_loop(N, P, [&](int64_t n, int thread) {
      Partial& pt = part[static_cast<std::size_t>(thread)];
      const int32_t* tok = ids.data() + window_starts[static_cast<std::size_t>(n)];
      llama_loss_and_grad<float>(c, pf, tok, seq_len, opt.fisher || opt.act_fisher ? &pt.grad : nullptr,
                                 opt.hessian || opt.act_fisher ? pt.hacc.get() : nullptr);
      if (opt.fisher)
        for (int64_t l = begin; l < end; ++l)
          for (int i = 0; i < 7; ++i) {
            const MatRM<float>& g = pt.grad.layers[static_cast<std::size_t>(l)].w[static_cast<std::size_t>(i)];
            const std::size_t k = static_cast<std::size_t>((l - begin) * 7 + i);
            float* f = P > 1 ? pt.fisher[k].data() : res.tensors[k].fisher.data();
            const float* gd = g.data();
            // Windows run serially for large models: then the accumulation uses the threads.
#pragma omp parallel for schedule(static) if (P == 1 && g.size() >= (1 << 16))
            for (Eigen::Index j = 0; j < g.size(); ++j) f[j] += gd[j] * gd[j];
          }
#pragma omp critical(mpq_sensitivity_progress)
      {
        ++done;
        if (progress) progress(opt.fisher ? "fisher" : opt.act_fisher ? "act-fisher" : "hessian", done, N, since(t0));
      }
    });
    res.fisher_tokens_per_second = static_cast<double>(N * seq_len) / std::max(since(tf), 1e-9);
    const double T = static_cast<double>(N * seq_len);
    for (int64_t l = begin; l < end; ++l)
      for (int i = 0; i < 7; ++i) {
        const std::size_t k = static_cast<std::size_t>((l - begin) * 7 + i);
        TensorSensitivity& t = res.tensors[k];
        if (opt.fisher) {
          if (P > 1)
            for (const auto& pt : part)
              for (std::size_t j = 0; j < t.fisher.size(); ++j) t.fisher[j] += pt.fisher[k][j];
          double sum = 0;
          for (float& f : t.fisher) {
            f /= static_cast<float>(N);
            sum += f;
          }
          t.fisher_sum = sum;
        }
        if (opt.act_fisher) {
          Eigen::VectorXd a = Eigen::VectorXd::Zero(t.cols);
          for (const auto& pt : part)
            if (pt.hacc->grad_sq(l, linear_input_group(i)).size()) a += pt.hacc->grad_sq(l, linear_input_group(i));
          a /= T;
          t.act_fisher.assign(a.data(), a.data() + a.size());
          t.act_fisher_sum = a.sum();
        }
        if (opt.hessian) {
          const int grp = linear_input_group(i);
          Eigen::VectorXd d = Eigen::VectorXd::Zero(t.cols);
          for (const auto& pt : part)
            if (pt.hacc->diag(l, grp).size()) d += pt.hacc->diag(l, grp);
          d *= 2.0 / T;
          t.hessian_diag.assign(d.data(), d.data() + d.size());
          t.hessian_trace = d.sum();
          if (opt.full_hessian) {
            Eigen::MatrixXd h = Eigen::MatrixXd::Zero(t.cols, t.cols);
            for (const auto& pt : part)
              if (pt.hacc->full(l, grp).size()) h += pt.hacc->full(l, grp);
            h *= 2.0 / T;
            t.hessian.resize(static_cast<std::size_t>(h.size()));
            Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
                t.hessian.data(), h.rows(), h.cols()) = h;
          }
        }
      }
  }

  // ---- Hutchinson trace of the loss Hessian, per linear weight ----
  // Sample s uses window s mod N and a Rademacher stream seeded from (seed, s), so batches
  // of P samples run in parallel and are folded into the running means in sample order:
  // the result does not depend on the thread count.
  if (opt.hutchinson) {
    const LlamaParams<double> theta0 = cast_params<double>(pf);
    const std::size_t n_tensors = res.tensors.size();
    struct Worker {
      LlamaParams<double> theta, v, g_plus, g_minus;
    };
    std::vector<Worker> workers(static_cast<std::size_t>(P));
    for (auto& w : workers) {
      w.theta = theta0;
      w.v = theta0.zeros_like();
    }
    // One sample: v^T (H v) restricted to each linear weight in range.
    auto run_sample = [&](Worker& w, int s, std::vector<double>& out) {
      Rademacher rad{opt.seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(s) + 1};
      std::vector<Eigen::Index> sizes;
      const std::vector<double*> vp = param_pointers(w.v, &sizes);
      const std::vector<double*> tp = param_pointers(w.theta, nullptr);
      std::vector<const double*> t0p;
      theta0.for_each([&](const std::string&, const double* d, Eigen::Index) { t0p.push_back(d); });
      for (std::size_t k = 0; k < vp.size(); ++k)
        for (Eigen::Index j = 0; j < sizes[k]; ++j) vp[k][j] = rad.next();
      const int32_t* tok = ids.data() + window_starts[static_cast<std::size_t>(s % N)];
      const double eps = opt.hutchinson_eps;
      for (int sign : {1, -1}) {
        for (std::size_t k = 0; k < tp.size(); ++k)
          for (Eigen::Index j = 0; j < sizes[k]; ++j) tp[k][j] = t0p[k][j] + sign * eps * vp[k][j];
        llama_loss_and_grad<double>(c, w.theta, tok, seq_len, sign > 0 ? &w.g_plus : &w.g_minus);
      }
      out.assign(n_tensors, 0.0);
      for (int64_t l = begin; l < end; ++l)
        for (int i = 0; i < 7; ++i) {
          const auto li = static_cast<std::size_t>(l), ii = static_cast<std::size_t>(i);
          out[static_cast<std::size_t>((l - begin) * 7 + i)] =
              (w.v.layers[li].w[ii].array() * (w.g_plus.layers[li].w[ii] - w.g_minus.layers[li].w[ii]).array()).sum() /
              (2 * eps);
        }
    };
    std::vector<double> mean(n_tensors, 0.0), m2(n_tensors, 0.0);
    int taken = 0;
    bool converged = false;
    for (int batch = 0; batch < opt.hutchinson_iters && !converged; batch += P) {
      const int nb = std::min(P, opt.hutchinson_iters - batch);
      std::vector<std::vector<double>> samples(static_cast<std::size_t>(nb));
      parallel_loop(nb, P, [&](int64_t k, int thread) {
        run_sample(workers[static_cast<std::size_t>(thread)], batch + static_cast<int>(k),
                   samples[static_cast<std::size_t>(k)]);
      });
      for (int k = 0; k < nb && !converged; ++k) {
        double max_change = 0;
        for (std::size_t t = 0; t < n_tensors; ++t) {
          const double x = samples[static_cast<std::size_t>(k)][t], old = mean[t];
          mean[t] += (x - old) / (taken + 1);  // Welford
          m2[t] += (x - old) * (x - mean[t]);
          if (taken > 0) max_change = std::max(max_change, std::abs(mean[t] - old) / std::max(std::abs(mean[t]), 1e-30));
        }
        ++taken;
        converged = taken >= opt.hutchinson_min_iters && max_change < opt.hutchinson_tol;
      }
      if (progress) progress("hutchinson", taken, opt.hutchinson_iters, since(t0));
    }
    for (std::size_t t = 0; t < n_tensors; ++t) {
      res.tensors[t].hutchinson_trace = mean[t];
      res.tensors[t].hutchinson_samples = taken;
      res.tensors[t].hutchinson_stderr = taken > 1 ? std::sqrt(m2[t] / (taken - 1) / taken) : 0.0;
    }
  }
  res.seconds = since(t0);
  return res;
}

}  // namespace mpq
