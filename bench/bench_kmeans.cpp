// SqueezeLLM-style per-row weighted k-means (lib/quant/kmeans1d) on a random 4096 x 4096
// layer: seconds per million weights, k = 8 and 16, uniform weights ("gauss") or
// Fisher-like sensitivities ("fisher": squared gradients with a heavy-tailed scale), with
// 1 thread and with all OpenMP threads. BM_KMeansLloydOnly is the same layer with the DP
// candidate, the restarts and the refinement switched off (quantile-initialized Lloyd
// only), for scale: what the extra quality costs.
//
//   build/bench/bench_kmeans --benchmark_counters_tabular=true [--benchmark_format=json]
//   MPQ_BENCH_ROWS=512 build/bench/bench_kmeans   (a smaller layer, for a quick look)
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

#include "lib/quant/kmeans1d.h"

namespace {

constexpr int64_t kCols = 4096;

int64_t bench_rows() {
  const char* env = std::getenv("MPQ_BENCH_ROWS");
  const int64_t r = env ? std::atoll(env) : 4096;
  return r > 0 ? r : 4096;
}

/// The layer: gaussian weights (std 0.02, as in Llama linear layers) and Fisher-like
/// sensitivities g^2 with g = N(0, 1) * exp(N(0, 1)) (heavy-tailed per-weight scale).
struct Layer {
  int64_t rows;
  std::vector<float> w, fisher;
};

const Layer& layer() {
  static const Layer L = [] {
    Layer l;
    l.rows = bench_rows();
    const std::size_t n = static_cast<std::size_t>(l.rows * kCols);
    l.w.resize(n);
    l.fisher.resize(n);
    std::mt19937_64 rng(2023);
    std::normal_distribution<float> g(0.0f, 1.0f);
    for (std::size_t i = 0; i < n; ++i) {
      l.w[i] = 0.02f * g(rng);
      const float grad = g(rng) * std::exp(g(rng));
      l.fisher[i] = grad * grad;
    }
    return l;
  }();
  return L;
}

// Args: k, fisher (0/1), threads (0 = all).
void BM_KMeansRows(benchmark::State& state) {
  const Layer& L = layer();
  const int k = static_cast<int>(state.range(0));
  const bool fisher = state.range(1) != 0;
  const int threads = state.range(2) > 0 ? static_cast<int>(state.range(2)) : omp_get_max_threads();
  std::vector<float> centroids(static_cast<std::size_t>(L.rows * k));
  std::vector<uint8_t> codes(L.w.size());
  std::vector<double> sse(static_cast<std::size_t>(L.rows));
  for (auto _ : state) {
    mpq::kmeans_rows(L.w.data(), fisher ? L.fisher.data() : nullptr, L.rows, kCols, k,
                     centroids.data(), codes.data(), sse.data(), {}, threads);
    benchmark::DoNotOptimize(codes.data());
  }
  const double mweights = static_cast<double>(L.rows * kCols) / 1e6;
  state.counters["s_per_Mweights"] = benchmark::Counter(
      mweights, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  state.counters["threads"] = threads;
  state.SetLabel(fisher ? "fisher" : "gauss");
}
BENCHMARK(BM_KMeansRows)
    ->ArgNames({"k", "fisher", "threads"})
    ->ArgsProduct({{8, 16}, {0, 1}, {1, 0}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_KMeansLloydOnly(benchmark::State& state) {
  const Layer& L = layer();
  const int k = static_cast<int>(state.range(0));
  mpq::KMeans1DOptions opt;
  opt.dp_max_points = 0;
  opt.restarts = 0;
  opt.refine_radius = 0;
  std::vector<float> centroids(static_cast<std::size_t>(L.rows * k));
  std::vector<uint8_t> codes(L.w.size());
  for (auto _ : state) {
    mpq::kmeans_rows(L.w.data(), nullptr, L.rows, kCols, k, centroids.data(), codes.data(), nullptr,
                     opt, 1);
    benchmark::DoNotOptimize(codes.data());
  }
  const double mweights = static_cast<double>(L.rows * kCols) / 1e6;
  state.counters["s_per_Mweights"] = benchmark::Counter(
      mweights, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  state.counters["threads"] = 1;
}
BENCHMARK(BM_KMeansLloydOnly)
    ->ArgName("k")
    ->Arg(8)
    ->Arg(16)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

