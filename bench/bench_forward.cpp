// Forward + perplexity-scoring throughput of the CPU runtime (what mpq-eval does per
// window), in tokens/s: stories260K-hf (when ../shared/data is present) and a random
// Llama with hidden size 2048 and 8 layers (Llama-7B-like proportions).
//
//   build/bench/bench_forward --benchmark_counters_tabular=true [--benchmark_format=json]
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>

#include "lib/eval/perplexity.h"
#include "lib/model/llama.h"

namespace {

std::vector<int32_t> random_ids(int64_t n, int64_t vocab) {
  std::mt19937_64 rng(42);
  std::uniform_int_distribution<int32_t> u(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> ids(static_cast<std::size_t>(n));
  for (auto& x : ids) x = u(rng);
  return ids;
}

// One 512-token window: forward + NLL, reported as tokens/s.
void run_windows(benchmark::State& state, const mpq::LlamaModel& m, int64_t ctx) {
  const auto ids = random_ids(ctx, m.config().vocab_size);
  for (auto _ : state) {
    const mpq::MatrixRM logits = m.forward(ids.data(), ctx);
    benchmark::DoNotOptimize(mpq::sum_next_token_nll(logits, ids.data()));
  }
  state.counters["tokens_per_s"] = benchmark::Counter(static_cast<double>(state.iterations() * ctx),
                                                      benchmark::Counter::kIsRate);
}

void BM_ForwardStories260K(benchmark::State& state) {
  const char* env = std::getenv("MPQ_DATA");
  const std::string dir = std::string(env ? env : "../shared/data") + "/models/stories260K-hf";
  if (!std::filesystem::exists(dir + "/config.json")) {
    state.SkipWithError(("stories260K-hf not found at " + dir + " (set MPQ_DATA)").c_str());
    return;
  }
  static const auto model = std::make_unique<mpq::LlamaModel>(mpq::LlamaModel::load(dir));
  run_windows(state, *model, 512);
}
BENCHMARK(BM_ForwardStories260K)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_ForwardRandomH2048L8(benchmark::State& state) {
  const mpq::LlamaConfig c = mpq::llama_config();  // hidden 2048, 8 layers
  static const auto model = std::make_unique<mpq::LlamaModel>(c, mpq::random_llama_weights(c, 1));
  run_windows(state, *model, 512);
}
BENCHMARK(BM_ForwardRandomH2048L8)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5.0);

}  // namespace

