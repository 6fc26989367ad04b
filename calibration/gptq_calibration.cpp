// The sequential GPTQ calibration pass (see gptq_calibration.h).
#include "calibration/gptq_calibration.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <cstdio>

#include "calibration/windows.h"
#include "lib/common/error.h"

namespace mpq {
namespace {

// Keeps the input of one linear-input group of one layer (one window).
class GroupInput final : public LinearInputObserver {
 public:
  GroupInput(int64_t layer, int group, MatRM<float>* out) : layer_(layer), group_(group), out_(out) {}
  void on_linear_input(int64_t layer, int group, const MatRM<float>& x) override {
    if (layer == layer_ && group == group_) *out_ = x;
  }

 private:
  int64_t layer_;
  int group_;
  MatRM<float>* out_;
};

// Runs fn(n) for every window n in [0, N) on all threads (one window per thread: the layer
// forward's own parallel loops then run serially), rethrowing the first failure.
template <typename F>
void for_windows(int64_t N, F&& fn) {
  std::exception_ptr failure;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t n = 0; n < N; ++n) {
    try {
      fn(n);
    } catch (...) {
#pragma omp critical(mpq_gptq_window_failure)
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
}

// "model.layers.<l>.<...>" -> l, or -1.
int64_t layer_of(const std::string& module) {
  static const std::string p = "model.layers.";
  if (module.compare(0, p.size(), p) != 0) return -1;
  std::size_t end = p.size();
  while (end < module.size() && module[end] >= '0' && module[end] <= '9') ++end;
  if (end == p.size() || end >= module.size() || module[end] != '.') return -1;
  return std::stoll(module.substr(p.size(), end - p.size()));
}

}  // namespace

GptqSequentialPass::GptqSequentialPass(const LlamaConfig& c, const TensorStore& store, const std::vector<int32_t>& ids,
                                       const CalibWindowOptions& opt, GptqLinearFn quantize, GptqProgress progress)
    : c_(c), src_(std::make_unique<StreamedParams>(c, store)), quantize_(std::move(quantize)), progress_(std::move(progress)) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int64_t> starts =
      calibration_window_starts(static_cast<int64_t>(ids.size()), opt.samples, opt.seq_len, opt.seed, false);
  h_.resize(starts.size());
  for (std::size_t n = 0; n < starts.size(); ++n) {
    MatRM<float>& h = h_[n];
    h.resize(opt.seq_len, c.hidden_size);
    for (int64_t t = 0; t < opt.seq_len; ++t) {
      const int32_t id = ids[static_cast<std::size_t>(starts[n] + t)];
      if (id < 0 || id >= c.vocab_size)
        throw Error(ExitCode::kInput, "calibration token id " + std::to_string(id) + " outside the vocabulary [0, " +
                                          std::to_string(c.vocab_size) + ")");
      src_->embed_row(id, h.row(t).data());
    }
  }
  seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

GptqSequentialPass::~GptqSequentialPass() = default;

int64_t GptqSequentialPass::tokens() const {
  return h_.empty() ? 0 : static_cast<int64_t>(h_.size()) * h_[0].rows();
}

void GptqSequentialPass::run_layer(int64_t l) {
  const auto t0 = std::chrono::steady_clock::now();
  done_.clear();  // what earlier layers left untaken (layers before a --layers part, excluded modules)
  LlamaParams<float>::Layer L = src_->layer(l);  // a copy: its linears become their quantized values
  for (int group = 0; group < 4; ++group) {
    // The group's input Hessian, with the groups before it already quantized.
    std::vector<int> members;
    for (int i = 0; i < 7; ++i)
      if (linear_input_group(i) == group) members.push_back(i);
    // H = 2/N sum_n X_n^T X_n over the windows' tokens: the windows' inputs in batches (in
    // parallel), each X_n^T X_n in fp32 (BLAS) summed in float64 in window order, so the
    // result does not depend on the thread count.
    const int64_t cols = L.w[static_cast<std::size_t>(members[0])].cols();
    MatRM<double> gram = MatRM<double>::Zero(cols, cols);
    const int64_t N = static_cast<int64_t>(h_.size());
    const int64_t batch = std::max<int64_t>(1, 2 * omp_get_max_threads());
    std::vector<MatRM<float>> xs(static_cast<std::size_t>(std::min(batch, N)));
    int64_t tokens = 0;
    for (int64_t n0 = 0; n0 < N; n0 += batch) {
      const int64_t nb = std::min(batch, N - n0);
      for_windows(nb, [&](int64_t k) {
        GroupInput obs(l, group, &xs[static_cast<std::size_t>(k)]);
        (void)llama_layer_forward<float>(c_, L, l, h_[static_cast<std::size_t>(n0 + k)], &obs);
      });
      for (int64_t k = 0; k < nb; ++k) {
        const MatRM<float>& x = xs[static_cast<std::size_t>(k)];
        MPQ_ASSERT(x.cols() == cols);
        const MatRM<float> xtx = x.transpose() * x;
        gram += xtx.cast<double>();
        tokens += x.rows();
      }
    }
    std::vector<double> H(static_cast<std::size_t>(cols * cols));
    const double scale = tokens > 0 ? 2.0 / static_cast<double>(tokens) : 0.0;
    for (Eigen::Index i = 0; i < gram.size(); ++i) H[static_cast<std::size_t>(i)] = scale * gram.data()[i];
    for (int i : members) {
      const std::string module = "model.layers." + std::to_string(l) + "." + kLinearNames[static_cast<std::size_t>(i)];
      std::vector<float> deq;
      std::optional<PackedTensor> p = quantize_(module, H, deq);
      MatRM<float>& w = L.w[static_cast<std::size_t>(i)];
      if (p) {
        MPQ_ASSERT(deq.size() == static_cast<std::size_t>(w.size()));
        w = Eigen::Map<const MatRM<float>>(deq.data(), w.rows(), w.cols());
      }
      done_[module] = std::move(p);
    }
  }
  for_windows(static_cast<int64_t>(h_.size()), [&](int64_t n) {
    MatRM<float>& h = h_[static_cast<std::size_t>(n)];
    h = llama_layer_forward<float>(c_, L, l, h, nullptr);
  });
  seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (progress_) progress_(l + 1, c_.num_layers);
}

std::optional<PackedTensor> GptqSequentialPass::take(const std::string& module) {
  const int64_t l = layer_of(module);
  MPQ_ASSERT(l >= 0 && l < c_.num_layers);
  while (next_ <= l) run_layer(next_++);
  auto it = done_.find(module);
  MPQ_ASSERT(it != done_.end());  // taken twice, or not a linear of the layer
  std::optional<PackedTensor> p = std::move(it->second);
  done_.erase(it);
  return p;
}

}  // namespace mpq
