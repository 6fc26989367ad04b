// Solver time of mpq-search's assignment ILP (lib/search/ilp.h, GLPK):
//  * BM_SolveStories260K: the real stories260K problem (35 tensors x the default 12
//    candidates, Fisher costs from a sensitivity file) at 3.5 / 4.0 / 4.5 bpw. Needs
//    MPQ_BENCH_MODEL and MPQ_BENCH_SENS (a model folder and an mpq-sensitivity --kind
//    fisher file); skipped otherwise. Candidate evaluation (quantize + decode) is set-up,
//    not timed.
//  * BM_SolveLlama7BShape: a synthetic 32-layer, 7-tensors-per-layer problem with
//    Llama-2-7B shapes (q/k/v/o 4096x4096, gate/up 11008x4096, down 4096x11008), the
//    default candidates' exact byte counts from their quantizers' layouts, and costs
//    Omega = s_t * 4^-bpw_c * noise (s_t log-normal per tensor, the second-order model's
//    scaling with step size), at 3.5 / 4.0 / 4.5 / 6.0 bpw; with and without the ties
//    q,k,v and gate,up.
//
//   export MPQ_BENCH_MODEL=../shared/data/models/stories260K-hf MPQ_BENCH_SENS=sens.safetensors
//   build/bench/bench_search --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "lib/model/llama.h"
#include "lib/search/ilp.h"
#include "lib/search/search.h"

namespace {

std::vector<mpq::CandidateSpec> default_specs() {
  std::vector<mpq::CandidateSpec> s;
  for (const auto& l : mpq::default_candidate_labels()) s.push_back(mpq::parse_format_label(l));
  return s;
}

void report(benchmark::State& state, const mpq::IlpSolution& s, double n, int64_t tensors) {
  state.counters["tensors"] = static_cast<double>(tensors);
  state.counters["variables"] = static_cast<double>(s.variables);
  state.counters["bpw"] = 8.0 * s.bytes / n;
  state.counters["optimal"] = s.status == "optimal" ? 1 : 0;
  state.counters["relaxation_gap"] = s.relaxation_gap;
}

// Arg: budget in tenths of a bit per weight.
void BM_SolveStories260K(benchmark::State& state) {
  const char* model = std::getenv("MPQ_BENCH_MODEL");
  const char* sens = std::getenv("MPQ_BENCH_SENS");
  if (!model || !sens) {
    state.SkipWithError("set MPQ_BENCH_MODEL and MPQ_BENCH_SENS");
    return;
  }
  static const auto specs = default_specs();
  static const auto tensors = mpq::evaluate_candidates(model, sens, specs);
  const double n = static_cast<double>(mpq::total_linear_params(tensors));
  mpq::SearchOptions opt;
  opt.max_bytes = static_cast<double>(state.range(0)) / 10.0 * n / 8.0;
  const mpq::IlpProblem p = mpq::build_problem(tensors, specs, opt);
  mpq::IlpSolution s;
  for (auto _ : state) {
    s = mpq::solve_assignment_ilp(p);
    benchmark::DoNotOptimize(s.cost);
  }
  report(state, s, n, static_cast<int64_t>(tensors.size()));
}
BENCHMARK(BM_SolveStories260K)->ArgName("bpw_x10")->Arg(35)->Arg(40)->Arg(45)->Unit(benchmark::kMillisecond);

// Args: budget in tenths of a bit per weight, ties (0/1).
void BM_SolveLlama7BShape(benchmark::State& state) {
  static const auto specs = default_specs();
  const std::array<std::array<int64_t, 2>, 7> shapes = {{{4096, 4096}, {4096, 4096}, {4096, 4096}, {4096, 4096},
                                                         {11008, 4096}, {11008, 4096}, {4096, 11008}}};
  std::mt19937_64 g(42);
  std::lognormal_distribution<double> sens(0.0, 1.0), noise(0.0, 0.15);
  mpq::IlpProblem p;
  double n = 0;
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 7; ++i) {
      const auto [r, c] = shapes[static_cast<std::size_t>(i)];
      n += static_cast<double>(r * c);
      const double s_t = sens(g);
      std::vector<mpq::IlpCandidate> cs;
      for (const auto& spec : specs) {
        const double bytes = spec.format == "source" ? 2.0 * static_cast<double>(r * c)  // bf16
                                                     : static_cast<double>(mpq::make_quantizer(spec)->bytes(r, c));
        const double bpw = 8.0 * bytes / static_cast<double>(r * c);
        cs.push_back({bytes, spec.format == "source" ? 0.0 : s_t * std::pow(4.0, -bpw) * noise(g), 0.0});
      }
      p.tensors.push_back(std::move(cs));
    }
  if (state.range(1)) {
    for (int l = 0; l < 32; ++l) {
      p.tie_groups.push_back({7 * l + 0, 7 * l + 1, 7 * l + 2});
      p.tie_groups.push_back({7 * l + 4, 7 * l + 5});
    }
  }
  p.max_bytes = static_cast<double>(state.range(0)) / 10.0 * n / 8.0;
  mpq::IlpSolution s;
  for (auto _ : state) {
    s = mpq::solve_assignment_ilp(p);
    benchmark::DoNotOptimize(s.cost);
  }
  report(state, s, n, static_cast<int64_t>(p.tensors.size()));
}
BENCHMARK(BM_SolveLlama7BShape)
    ->ArgNames({"bpw_x10", "ties"})
    ->ArgsProduct({{35, 40, 45, 60}, {0, 1}})
    ->Unit(benchmark::kMillisecond);

}  // namespace

