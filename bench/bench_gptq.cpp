// GPTQ compensation time per tensor (lib/quant/gptq.h) on a Llama-2-7B down_proj-shaped
// layer: W [4096, 11008] (std 0.02) and H = 2/N X^T X of N = 2048 correlated random inputs
// (a shared low-rank part, as real activations have), one tensor per iteration, for the
// int4 per-row, int4-g128, nvfp4 (static and compensated block scales, Four Over Six) and
// fp8 grids. The Hessian's collection (the calibration forward passes) is not included:
// the sequential pass's cost is docs/results.md's pack seconds.
//
//   build/bench/bench_gptq --benchmark_counters_tabular=true
//   MPQ_BENCH_ROWS=512 MPQ_BENCH_COLS=2048 build/bench/bench_gptq   (smaller, for a quick look)
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "lib/quant/gptq.h"
#include "lib/quant/gptq_grids.h"
#include "lib/quant/quantizer.h"

namespace {

int64_t env_or(const char* name, int64_t d) {
  const char* e = std::getenv(name);
  const int64_t v = e ? std::atoll(e) : d;
  return v > 0 ? v : d;
}

struct Layer {
  int64_t rows, cols;
  std::vector<float> w;
  std::vector<double> h;
};

const Layer& layer() {
  static const Layer L = [] {
    Layer l;
    l.rows = env_or("MPQ_BENCH_ROWS", 4096);
    l.cols = env_or("MPQ_BENCH_COLS", 11008);
    std::mt19937_64 rng(7);
    std::normal_distribution<float> n(0.0f, 1.0f);
    l.w.resize(static_cast<std::size_t>(l.rows * l.cols));
    for (float& v : l.w) v = 0.02f * n(rng);
    const int64_t N = 2048, K = 32;
    Eigen::MatrixXf base(K, l.cols), z(N, K), X(N, l.cols);
    for (Eigen::Index i = 0; i < base.size(); ++i) base.data()[i] = n(rng);
    for (Eigen::Index i = 0; i < z.size(); ++i) z.data()[i] = n(rng);
    for (Eigen::Index i = 0; i < X.size(); ++i) X.data()[i] = 0.5f * n(rng);
    X.noalias() += z * base;
    const Eigen::MatrixXd G = (X.transpose() * X).cast<double>() * (2.0 / static_cast<double>(N));
    l.h.assign(G.data(), G.data() + G.size());  // symmetric: row- = column-major
    return l;
  }();
  return L;
}

void run(benchmark::State& state, const std::string& label, bool static_groups, bool four_over_six) {
  const Layer& L = layer();
  const std::unique_ptr<mpq::Quantizer> q = mpq::make_quantizer(mpq::parse_format_label(label));
  for (auto _ : state) {
    mpq::GptqGridInput in{"bench", L.w.data(), nullptr, L.rows, L.cols};
    in.four_over_six = four_over_six;
    auto grid = mpq::make_gptq_grid(*q, in);
    mpq::GptqOptions o;
    o.static_groups = static_groups;
    std::vector<float> out = mpq::gptq_quantize("bench", L.w.data(), L.rows, L.cols, L.h.data(), *grid, o);
    benchmark::DoNotOptimize(out.data());
    mpq::PackedTensor p = grid->encode();
    benchmark::DoNotOptimize(p.parts.data());
  }
  state.counters["rows"] = static_cast<double>(L.rows);
  state.counters["cols"] = static_cast<double>(L.cols);
  state.counters["s_per_tensor"] = benchmark::Counter(static_cast<double>(state.iterations()),
                                                      benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void BM_GptqInt4PerRow(benchmark::State& s) { run(s, "int4", false, false); }
void BM_GptqInt4G128(benchmark::State& s) { run(s, "int4-g128", false, false); }
void BM_GptqNvfp4StaticScales(benchmark::State& s) { run(s, "nvfp4", true, false); }
void BM_GptqNvfp4FourOverSix(benchmark::State& s) { run(s, "nvfp4", false, true); }
void BM_GptqFp8(benchmark::State& s) { run(s, "fp8", false, false); }
BENCHMARK(BM_GptqInt4PerRow)->Unit(benchmark::kSecond)->Iterations(1);
BENCHMARK(BM_GptqInt4G128)->Unit(benchmark::kSecond)->Iterations(1);
BENCHMARK(BM_GptqNvfp4StaticScales)->Unit(benchmark::kSecond)->Iterations(1);
BENCHMARK(BM_GptqNvfp4FourOverSix)->Unit(benchmark::kSecond)->Iterations(1);
BENCHMARK(BM_GptqFp8)->Unit(benchmark::kSecond)->Iterations(1);

}  // namespace

