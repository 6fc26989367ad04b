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

// Per input group of every layer in [begin, end), in float64: sum_t x x^T (full) or
// sum_t x^2 (diagonal) of the forward inputs when `hessian`, and sum_t (dL/dx)^2 of the
// backward input gradients when `act_fisher`. Each window adds one contribution per group
// (its column sums, or its x^T x computed on its own), so accumulating windows one after
// the other, or zeroing per window and folding in window order, gives the same bits.
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
      Eigen::MatrixXd xtx(x.cols(), x.cols());
      xtx.noalias() = xd.transpose() * xd;
      if (full_m_[k].size() == 0) full_m_[k] = Eigen::MatrixXd::Zero(x.cols(), x.cols());
      full_m_[k] += xtx;
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
  /// Zeroes every accumulator (keeping its size).
  void clear() {
    for (auto* v : {&diag_, &grad_sq_})
      for (auto& x : *v) x.setZero();
    for (auto& m : full_m_) m.setZero();
  }
  /// this += o, accumulator by accumulator.
  void add(const HessianAccumulator& o) {
    const auto add_vec = [](std::vector<Eigen::VectorXd>& a, const std::vector<Eigen::VectorXd>& b) {
      for (std::size_t k = 0; k < a.size(); ++k) {
        if (b[k].size() == 0) continue;
        if (a[k].size() == 0) a[k] = Eigen::VectorXd::Zero(b[k].size());
        a[k] += b[k];
      }
    };
    add_vec(diag_, o.diag_);
    add_vec(grad_sq_, o.grad_sq_);
    for (std::size_t k = 0; k < full_m_.size(); ++k) {
      if (o.full_m_[k].size() == 0) continue;
      if (full_m_[k].size() == 0) full_m_[k] = Eigen::MatrixXd::Zero(o.full_m_[k].rows(), o.full_m_[k].cols());
      full_m_[k] += o.full_m_[k];
    }
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

// acc[j] += g[j]^2: elementwise, so threading over j changes nothing.
void add_squared(float* acc, const float* g, Eigen::Index n) {
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
  for (Eigen::Index j = 0; j < n; ++j) acc[j] += g[j] * g[j];
}

// f /= N in place; returns sum f (float64, element order).
double finish_fisher(float* f, Eigen::Index n, int64_t N) {
  double sum = 0;
  for (Eigen::Index j = 0; j < n; ++j) {
    f[j] /= static_cast<float>(N);
    sum += f[j];
  }
  return sum;
}

// Squares each weight gradient of the layers in range into its Fisher accumulator as soon
// as the backward pass produces it (one gradient matrix alive at a time); on the last
// window also finishes that tensor (divides by N, sums). With fisher off it only asks for
// the backward pass act-fisher needs.
class FisherSink final : public LlamaGradSink<float> {
 public:
  FisherSink(int64_t begin, int64_t end, int64_t num_layers, bool fisher, bool backward,
             std::vector<float*> acc, std::vector<TensorSensitivity>& out)
      : begin_(begin), end_(end), num_layers_(num_layers), fisher_(fisher), backward_(backward), acc_(std::move(acc)),
        out_(out) {}
  void set_last(bool last, int64_t N) {
    last_ = last;
    N_ = N;
  }
  int64_t lowest_layer() const override { return backward_ ? begin_ : num_layers_; }
  bool keep_only_layer_inputs() const override { return recompute_; }
  void set_recompute(bool r) { recompute_ = r; }
  MatRM<float>* weight_grad(int64_t l, int /*i*/) override { return fisher_ && l >= begin_ && l < end_ ? &g_ : nullptr; }
  void weight_grad_ready(int64_t l, int i) override {
    const std::size_t k = static_cast<std::size_t>((l - begin_) * 7 + i);
    add_squared(acc_[k], g_.data(), g_.size());
    if (last_) out_[k].fisher_sum = finish_fisher(acc_[k], g_.size(), N_);
  }

 private:
  int64_t begin_, end_, num_layers_;
  bool fisher_, backward_, last_ = false, recompute_ = false;
  int64_t N_ = 1;
  std::vector<float*> acc_;
  std::vector<TensorSensitivity>& out_;
  MatRM<float> g_;
};

// Keeps the weight gradients of the layers in range (windows running in parallel hand them
// over to be folded in window order).
class BufferSink final : public LlamaGradSink<float> {
 public:
  BufferSink(int64_t begin, int64_t end, int64_t num_layers, bool fisher, bool backward)
      : begin_(begin), end_(end), num_layers_(num_layers), fisher_(fisher), backward_(backward),
        g_(static_cast<std::size_t>((end - begin) * 7)) {}
  int64_t lowest_layer() const override { return backward_ ? begin_ : num_layers_; }
  bool keep_only_layer_inputs() const override { return recompute_; }
  void set_recompute(bool r) { recompute_ = r; }
  MatRM<float>* weight_grad(int64_t l, int i) override {
    return fisher_ && l >= begin_ && l < end_ ? &g_[static_cast<std::size_t>((l - begin_) * 7 + i)] : nullptr;
  }
  const MatRM<float>& grad(std::size_t k) const { return g_[k]; }

 private:
  int64_t begin_, end_, num_layers_;
  bool fisher_, backward_, recompute_ = false;
  std::vector<MatRM<float>> g_;
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

}  // namespace

namespace {

// The passes. Exactly one of `mem` (parameters in memory) and `store` (a checked
// checkpoint, streamed one layer at a time) is set; Hutchinson needs `mem`.
SensitivityResult run_passes(const LlamaConfig& c, const LlamaParams<float>* mem, const TensorStore* store,
                             const std::vector<int32_t>& ids, const std::vector<int64_t>& window_starts,
                             int64_t seq_len, const SensitivityOptions& opt, const SensitivityProgress& progress,
                             const FisherStorage& storage) {
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
      if (opt.fisher && !storage) t.fisher.assign(static_cast<std::size_t>(rows * cols), 0.0f);
      res.tensors.push_back(std::move(t));
    }
  const auto t0 = Clock::now();

  // ---- Fisher, layer Hessian and activation Fisher: one pass over the windows ----
  // In memory, small models run one window per thread (their GEMMs are too small to
  // thread); the windows of a batch hand their contributions over in window order.
  // Streamed (large) models run one window at a time, the threads inside the GEMMs.
  int64_t params = 0;
  for (const auto& [name, shape] : llama_tensor_shapes(c)) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    params += n;
  }
  int P = mem ? window_threads(params) : 1;
  if (opt.max_window_threads > 0) P = std::min(P, opt.max_window_threads);
  P = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(P, N)));
  if (opt.fisher || opt.hessian || opt.act_fisher) {
    const bool backward = opt.fisher || opt.act_fisher;
    std::vector<float*> acc;
    for (std::size_t k = 0; k < res.tensors.size() && opt.fisher; ++k)
      acc.push_back(storage ? storage(k) : res.tensors[k].fisher.data());
    HessianAccumulator hacc(begin, end, opt.hessian, opt.full_hessian, opt.act_fisher);
    const auto tf = Clock::now();
    const char* stage = opt.fisher ? "fisher" : opt.act_fisher ? "act-fisher" : "hessian";
    if (P == 1) {
      std::unique_ptr<LlamaParamSource<float>> src;
      if (mem) src = std::make_unique<InMemoryParams<float>>(c, *mem);
      else src = std::make_unique<StreamedParams>(c, *store);
      FisherSink sink(begin, end, c.num_layers, opt.fisher, backward, acc, res.tensors);
      sink.set_recompute(opt.recompute_activations);
      for (int64_t n = 0; n < N; ++n) {
        sink.set_last(n == N - 1, N);
        llama_loss_and_grad<float>(c, *src, ids.data() + window_starts[static_cast<std::size_t>(n)], seq_len,
                                   &sink, opt.hessian || opt.act_fisher ? &hacc : nullptr);
        if (progress) progress(stage, n + 1, N, since(t0));
      }
    } else {
      struct Worker {
        std::unique_ptr<BufferSink> sink;
        std::unique_ptr<HessianAccumulator> hacc;
      };
      std::vector<Worker> workers(static_cast<std::size_t>(P));
      for (auto& w : workers) {
        w.sink = std::make_unique<BufferSink>(begin, end, c.num_layers, opt.fisher, backward);
        w.sink->set_recompute(opt.recompute_activations);
        w.hacc = std::make_unique<HessianAccumulator>(begin, end, opt.hessian, opt.full_hessian, opt.act_fisher);
      }
      InMemoryParams<float> src(c, *mem);
      for (int64_t b0 = 0; b0 < N; b0 += P) {
        const int64_t nb = std::min<int64_t>(P, N - b0);
        parallel_loop(nb, P, [&](int64_t j, int) {
          Worker& w = workers[static_cast<std::size_t>(j)];
          w.hacc->clear();
          llama_loss_and_grad<float>(c, src, ids.data() + window_starts[static_cast<std::size_t>(b0 + j)], seq_len,
                                     w.sink.get(), opt.hessian || opt.act_fisher ? w.hacc.get() : nullptr);
        });
        for (int64_t j = 0; j < nb; ++j) {  // fold in window order
          const Worker& w = workers[static_cast<std::size_t>(j)];
          for (std::size_t k = 0; k < acc.size(); ++k)
            add_squared(acc[k], w.sink->grad(k).data(), w.sink->grad(k).size());
          hacc.add(*w.hacc);
          if (progress) progress(stage, b0 + j + 1, N, since(t0));
        }
      }
      for (std::size_t k = 0; k < acc.size(); ++k)
        res.tensors[k].fisher_sum = finish_fisher(acc[k], res.tensors[k].rows * res.tensors[k].cols, N);
    }
    res.fisher_tokens_per_second = static_cast<double>(N * seq_len) / std::max(since(tf), 1e-9);
    const double T = static_cast<double>(N * seq_len);
    for (int64_t l = begin; l < end; ++l)
      for (int i = 0; i < 7; ++i) {
        const std::size_t k = static_cast<std::size_t>((l - begin) * 7 + i);
        TensorSensitivity& t = res.tensors[k];
        const int grp = linear_input_group(i);
        if (opt.act_fisher) {
          Eigen::VectorXd a = Eigen::VectorXd::Zero(t.cols);
          if (hacc.grad_sq(l, grp).size()) a += hacc.grad_sq(l, grp);
          a /= T;
          t.act_fisher.assign(a.data(), a.data() + a.size());
          t.act_fisher_sum = a.sum();
        }
        if (opt.hessian) {
          Eigen::VectorXd d = Eigen::VectorXd::Zero(t.cols);
          if (hacc.diag(l, grp).size()) d += hacc.diag(l, grp);
          d *= 2.0 / T;
          t.hessian_diag.assign(d.data(), d.data() + d.size());
          t.hessian_trace = d.sum();
          if (opt.full_hessian) {
            Eigen::MatrixXd h = Eigen::MatrixXd::Zero(t.cols, t.cols);
            if (hacc.full(l, grp).size()) h += hacc.full(l, grp);
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
    LlamaParams<float> loaded;
    if (!mem) loaded = load_llama_params(c, *store);
    const LlamaParams<float>& pf = mem ? *mem : loaded;
    const LlamaParams<double> theta0 = cast_params<double>(pf);
    const std::size_t n_tensors = res.tensors.size();
    int P = window_threads(params);  // samples at once, one per thread (results do not depend on it)
    if (opt.max_window_threads > 0) P = std::min(P, opt.max_window_threads);
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
  return run_passes(c, &pf, nullptr, ids, window_starts, seq_len, opt, progress, nullptr);
}

SensitivityResult compute_sensitivities(const LlamaConfig& c, const TensorStore& store,
                                        const std::vector<int32_t>& ids,
                                        const std::vector<int64_t>& window_starts, int64_t seq_len,
                                        const SensitivityOptions& opt, const SensitivityProgress& progress,
                                        const FisherStorage& fisher) {
  check_llama_checkpoint(c, store);
  int64_t params = 0;
  for (const auto& [name, shape] : llama_tensor_shapes(c)) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    params += n;
  }
  const bool in_memory = opt.weights == SensitivityOptions::Weights::kMemory ||
                         (opt.weights == SensitivityOptions::Weights::kAuto && window_threads(params) > 1);
  if (!in_memory) return run_passes(c, nullptr, &store, ids, window_starts, seq_len, opt, progress, fisher);
  const LlamaParams<float> p = load_llama_params(c, store);
  return run_passes(c, &p, nullptr, ids, window_starts, seq_len, opt, progress, fisher);
}

}  // namespace mpq
