// mpq-bench --decode (lib/bench/decode.h).
#include "lib/bench/decode.h"

#include <omp.h>

#include <algorithm>  // std::min
#include <chrono>
#include <cstdio>
#include <cstdlib>  // getloadavg
#include <map>
#include <memory>
#include <random>
#include <utility>

#include "kernels/cpu/cpu_features.h"
#include "lib/bench/dense_cpu.h"
#include "lib/common/blas_runtime.h"
#include "lib/common/error.h"
#include "lib/model/generate.h"
#include "lib/model/llama.h"

namespace mpq::bench {
namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

nlohmann::json stats_ms_json(const Stats& s) {
  return {{"median_ms", s.median_us}, {"p25_ms", s.p25_us}, {"p75_ms", s.p75_us},
          {"min_ms", s.min_us},       {"max_ms", s.max_us}, {"reps", s.reps}};
}

// Median of per-run values (never empty: reps >= 1 is checked up front).
double median_of(std::vector<double> v) { return summarize_us(std::move(v)).median_us; }

}  // namespace

DecodeReport run_decode_bench(const DecodeOptions& opt) {
  if (opt.models.empty()) throw Error(ExitCode::kUsage, "--decode needs at least one --model");
  if (opt.prompt_tokens < 1 || opt.gen_tokens < 2 || opt.reps < 1)
    throw Error(ExitCode::kUsage, "--decode needs --prompt-tokens >= 1, --gen-tokens >= 2 and --reps >= 1");
  auto progress = [&](const std::string& s) {
    if (opt.progress) opt.progress(s);
  };
  DecodeReport rep;
  rep.device_name = cpu_model_name();
  rep.cpu_isa = cpu_isa_name(cpu_isa());
  rep.blas_core = blas_core_name();
  rep.threads = omp_get_max_threads();
  rep.interleaved = opt.interleave;
  getloadavg(rep.load_average_start, 3);
  ReadBandwidthProbe probe(opt.bandwidth_bytes);
  rep.read_gbps_before = probe.measure(5);
  progress("read bandwidth (" + std::to_string(rep.threads) + " threads, " +
           fmt("%.0f", static_cast<double>(opt.bandwidth_bytes) / 1048576.0) + " MiB): " + fmt("%.2f", rep.read_gbps_before) +
           " GB/s");
  LoadOptions lo;
  lo.cpu_kernels = true;
  lo.copy_dense = opt.copy_dense;
  const auto t_start = std::chrono::steady_clock::now();
  const std::size_t M = opt.models.size();
  // One model's state: loaded (all at once when interleaved), described, warmed up.
  struct Slot {
    std::unique_ptr<LlamaModel> model;
    DecodeResult r;
    std::vector<int32_t> prompt;
    std::vector<double> pre, dec, gbps;
  };
  std::vector<Slot> slots(M);
  auto load = [&](std::size_t mi) {
    Slot& sl = slots[mi];
    const std::string& dir = opt.models[mi];
    const auto tl = std::chrono::steady_clock::now();
    sl.model = std::make_unique<LlamaModel>(LlamaModel::load(dir, lo));
    LlamaModel& model = *sl.model;
    model.set_kernel_mode(opt.mode);
    DecodeResult& r = sl.r;
    r.model = dir;
    for (const auto& L : model.weights().layers)
      for (const auto& l : L.linear) r.linear_formats[l.format] += 1;
    r.format = r.linear_formats.size() == 1 ? r.linear_formats.begin()->first : "mixed";
    r.lm_head_format = model.weights().lm_head_kernel->format();
    r.parameters = model.parameter_count();
    r.weight_bytes = model.decode_weight_bytes();
    const Linear& first = model.weights().layers.at(0).linear[0];
    r.prefill_path = first.kernel->path(opt.prompt_tokens, opt.mode);
    r.decode_path = first.kernel->path(1, opt.mode);
    const int64_t V = model.config().vocab_size;
    std::mt19937_64 g(opt.seed);
    sl.prompt.resize(static_cast<std::size_t>(opt.prompt_tokens));
    for (int32_t& t : sl.prompt) t = static_cast<int32_t>(g() % static_cast<uint64_t>(V));
    progress("[" + std::to_string(mi + 1) + "/" + std::to_string(M) + "] " + dir + ": " + r.format + ", " +
             fmt("%.1f", static_cast<double>(r.weight_bytes) / 1e6) + " MB per decode step, loaded in " +
             fmt("%.1f", seconds_since(tl)) + " s");
  };
  SamplingOptions greedy;
  auto timed_run = [&](std::size_t mi, int i) {
    Slot& sl = slots[mi];
    if (i == 0)  // warm-up: pages, caches, OpenMP threads
      generate(*sl.model, std::vector<int32_t>(sl.prompt.begin(), sl.prompt.begin() + std::min<int64_t>(opt.prompt_tokens, 16)),
               4, greedy);
    sl.gbps.push_back(probe.measure(3));  // this run's bound: the machine of this minute
    const GenerationResult gr = generate(*sl.model, sl.prompt, opt.gen_tokens, greedy);
    sl.pre.push_back(gr.prefill_seconds * 1e3);
    sl.dec.push_back(gr.decode_seconds * 1e3);
    progress("  " + opt.models[mi] + " run " + std::to_string(i + 1) + "/" + std::to_string(opt.reps) + ": prefill " +
             fmt("%.1f", static_cast<double>(opt.prompt_tokens) / gr.prefill_seconds) + " tokens/s, decode " +
             fmt("%.2f", static_cast<double>(opt.gen_tokens - 1) / gr.decode_seconds) + " tokens/s (elapsed " +
             fmt("%.0f", seconds_since(t_start)) + " s)");
  };
  if (opt.interleave) {  // every model loaded; round i runs each model once, in order
    for (std::size_t mi = 0; mi < M; ++mi) load(mi);
    for (int i = 0; i < opt.reps; ++i)
      for (std::size_t mi = 0; mi < M; ++mi) timed_run(mi, i);
  } else {  // one model in memory at a time, its repetitions back to back
    for (std::size_t mi = 0; mi < M; ++mi) {
      load(mi);
      for (int i = 0; i < opt.reps; ++i) timed_run(mi, i);
      slots[mi].model.reset();
    }
  }
  for (Slot& sl : slots) {
    DecodeResult& r = sl.r;
    r.prefill_ms = summarize_us(sl.pre);
    r.decode_ms = summarize_us(sl.dec);
    r.prefill_tokens_per_second = static_cast<double>(opt.prompt_tokens) / (r.prefill_ms.median_us * 1e-3);
    r.decode_tokens_per_second = static_cast<double>(opt.gen_tokens - 1) / (r.decode_ms.median_us * 1e-3);
    r.decode_tokens_per_second_runs.reserve(sl.dec.size());
    for (double ms : sl.dec) r.decode_tokens_per_second_runs.push_back(static_cast<double>(opt.gen_tokens - 1) / (ms * 1e-3));
    r.read_gbps_runs = sl.gbps;
    for (std::size_t i = 0; i < sl.gbps.size(); ++i)
      r.bound_fraction_runs.push_back(r.decode_tokens_per_second_runs[i] * static_cast<double>(r.weight_bytes) / (sl.gbps[i] * 1e9));
    rep.results.push_back(r);
  }
  // Per-round speedups (interleaved: the models of one round ran within minutes of each
  // other), and their median.
  for (DecodeResult& r : rep.results) {
    std::vector<double> sp;
    for (std::size_t i = 0; i < r.decode_tokens_per_second_runs.size(); ++i)
      sp.push_back(r.decode_tokens_per_second_runs[i] / rep.results[0].decode_tokens_per_second_runs[i]);
    r.decode_speedup_runs = sp;
  }
  rep.read_gbps_after = probe.measure(5);
  rep.read_gbps = 0.5 * (rep.read_gbps_before + rep.read_gbps_after);
  getloadavg(rep.load_average_end, 3);
  for (DecodeResult& r : rep.results) {
    r.prefill_speedup = r.prefill_tokens_per_second / rep.results[0].prefill_tokens_per_second;
    r.decode_speedup = r.decode_tokens_per_second / rep.results[0].decode_tokens_per_second;
    r.bound_tokens_per_second = rep.read_gbps * 1e9 / static_cast<double>(r.weight_bytes);
    r.bound_fraction = r.decode_tokens_per_second / r.bound_tokens_per_second;
  }
  return rep;
}

std::string decode_table(const DecodeReport& r) {
  const std::string blas = r.blas_core.empty() ? "" : ", blas " + r.blas_core;
  std::string s = "device " + r.device_name + " (" + r.cpu_isa + blas + "), " + std::to_string(r.threads) +
                  " threads, read bandwidth " + fmt("%.2f", r.read_gbps) + " GB/s (before " + fmt("%.2f", r.read_gbps_before) +
                  ", after " + fmt("%.2f", r.read_gbps_after) + ")\n";
  char line[512];
  std::snprintf(line, sizeof line, "%-10s %-7s %10s %12s %8s %12s %8s %9s %12s %7s %8s  %s\n", "format", "head", "MB/step",
                "prefill t/s", "x first", "decode t/s", "x first", "x rounds", "bound t/s", "of bnd", "bnd runs", "model");
  s += line;
  for (const DecodeResult& m : r.results) {
    std::snprintf(line, sizeof line, "%-10s %-7s %10.1f %12.1f %8.2f %12.2f %8.2f %9.2f %12.2f %6.1f%% %7.1f%%  %s\n",
                  m.format.c_str(), m.lm_head_format.c_str(), static_cast<double>(m.weight_bytes) / 1e6,
                  m.prefill_tokens_per_second, m.prefill_speedup, m.decode_tokens_per_second, m.decode_speedup,
                  median_of(m.decode_speedup_runs), m.bound_tokens_per_second, 100.0 * m.bound_fraction,
                  100.0 * median_of(m.bound_fraction_runs), m.model.c_str());
    s += line;
  }
  const std::size_t n = r.results.empty() ? 0 : r.results[0].decode_speedup_runs.size();
  s += "x first: median tokens/s over the first model's; x rounds: median over runs i of run i's ratio (" +
       std::to_string(n) + (r.interleaved ? " rounds over all models)\n" : " runs, one model at a time: not the same minute)\n");
  s += "of bnd: median decode / (mean read bandwidth before and after / bytes); bnd runs: median over runs of the run's "
       "decode / (the read bandwidth measured just before it / bytes)\n";
  return s;
}

nlohmann::json decode_report_json(const DecodeReport& r, const DecodeOptions& opt) {
  nlohmann::json j;
  j["mode"] = "decode";
  j["device"] = r.device_name;
  j["cpu_isa"] = r.cpu_isa;
  j["blas_core"] = r.blas_core;
  j["threads"] = r.threads;
  j["kernels"] = kernel_mode_name(opt.mode);
  j["prompt_tokens"] = opt.prompt_tokens;
  j["gen_tokens"] = opt.gen_tokens;
  j["reps"] = opt.reps;
  j["interleaved"] = r.interleaved;
  j["read_bandwidth_gbps"] = r.read_gbps;
  j["read_bandwidth_gbps_before"] = r.read_gbps_before;
  j["read_bandwidth_gbps_after"] = r.read_gbps_after;
  j["read_bandwidth_bytes"] = opt.bandwidth_bytes;
  j["load_average_start"] = {r.load_average_start[0], r.load_average_start[1], r.load_average_start[2]};
  j["load_average_end"] = {r.load_average_end[0], r.load_average_end[1], r.load_average_end[2]};
  j["models"] = nlohmann::json::array();
  for (const DecodeResult& m : r.results)
    j["models"].push_back({{"model", m.model},
                           {"format", m.format},
                           {"linear_formats", m.linear_formats},
                           {"lm_head_format", m.lm_head_format},
                           {"parameters", m.parameters},
                           {"weight_bytes", m.weight_bytes},
                           {"prefill_tokens_per_second", m.prefill_tokens_per_second},
                           {"decode_tokens_per_second", m.decode_tokens_per_second},
                           {"prefill_speedup", m.prefill_speedup},
                           {"decode_speedup", m.decode_speedup},
                           {"bound_tokens_per_second", m.bound_tokens_per_second},
                           {"bound_fraction", m.bound_fraction},
                           {"prefill_path", m.prefill_path},
                           {"decode_path", m.decode_path},
                           {"prefill", stats_ms_json(m.prefill_ms)},
                           {"decode", stats_ms_json(m.decode_ms)},
                           {"decode_tokens_per_second_runs", m.decode_tokens_per_second_runs},
                           {"decode_speedup_runs", m.decode_speedup_runs},
                           {"decode_speedup_median_of_runs", median_of(m.decode_speedup_runs)},
                           {"read_bandwidth_gbps_runs", m.read_gbps_runs},
                           {"bound_fraction_runs", m.bound_fraction_runs},
                           {"bound_fraction_median_of_runs", median_of(m.bound_fraction_runs)}});
  return j;
}

}  // namespace mpq::bench
