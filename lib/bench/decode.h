// mpq-bench --decode: prefill and decode (token generation) speed of whole models on the
// CPU, several models measured in the same run (the source and its packed forms) with the
// speedup over the first, and each model's decode speed against the bound its weight bytes
// and a read bandwidth measured in the same run give.
//
// Method (docs/cli.md, "mpq-bench --decode"):
//   read_gbps = cpu_read_bandwidth_gbps(bandwidth_bytes) (lib/bench/dense_cpu.h), measured
//               once before the models and once after; the median of the two is reported
//   every model loaded (LlamaModel::load with cpu_kernels, KernelMode `mode`), then `reps`
//   rounds, each running every model once in order (interleave; or one model at a time,
//   its reps back to back), the first run of each model after an untimed warm-up
//   generation of 4 tokens; a run is:
//     prompt = prompt_tokens ids uniform in [0, vocab) from `seed` (the same for every model)
//     prefill: forward(prompt) into a fresh KV cache, last-token logits only (timed)
//     decode:  gen_tokens - 1 greedy decode steps, one token each (timed together)
//   prefill_tokens_per_second = prompt_tokens / median prefill time
//   decode_tokens_per_second  = (gen_tokens - 1) / median decode time
//   weight_bytes = LlamaModel::decode_weight_bytes() (every linear in its runtime form and
//                  the LM head: what one decode step reads), bound_tokens_per_second =
//                  read_gbps * 1e9 / weight_bytes, bound_fraction = decode / bound
//   speedup_* = this model's tokens/s / the first model's (same run); decode_speedup_runs:
//   per round, this model's run / the first model's run of the same round.
//   Before every timed run the read bandwidth is measured again (the same buffer, median of
//   3 passes): bound_fraction_runs[i] = run i's decode tokens/s / (that bandwidth /
//   weight_bytes), so a bound and its run share the machine's state on a noisy host.
// Attention over the short cache and the embedding row are not counted in weight_bytes.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lib/bench/bench.h"  // Stats
#include "lib/model/cpu_linear.h"

namespace mpq::bench {

struct DecodeOptions {
  std::vector<std::string> models;  ///< model folders, the first is the baseline
  int64_t prompt_tokens = 128;
  int64_t gen_tokens = 64;          ///< >= 2
  int reps = 3;
  /// true: every model loaded first, then `reps` rounds each running every model once (a
  /// noisy minute on a shared machine lands on all models of one round, not on one model's
  /// repetitions); peak memory is the sum of the models' (packed formats repacked at load
  /// hold their weights in anonymous memory). false: one model in memory at a time, its
  /// repetitions back to back.
  bool interleave = true;
  uint64_t seed = 1;
  KernelMode mode = KernelMode::kFast;
  bool copy_dense = true;  ///< LoadOptions::copy_dense (decode: on unless mpq-bench --map-dense)
  std::size_t bandwidth_bytes = std::size_t{1} << 30;
  std::function<void(const std::string&)> progress;  ///< one line per step (stderr), or null
};

struct DecodeResult {
  std::string model;                 ///< the folder
  std::string format;                ///< the linears' format ("nvfp4", ...; "mixed" when several)
  std::map<std::string, int64_t> linear_formats;  ///< format -> number of linears
  std::string lm_head_format;        ///< "f32", "bf16", ...
  int64_t parameters = 0;
  std::size_t weight_bytes = 0;      ///< per decode step
  Stats prefill_ms, decode_ms;       ///< per run (prefill: the prompt; decode: all steps), ms as the "us" fields' unit
  double prefill_tokens_per_second = 0;
  double decode_tokens_per_second = 0;
  double prefill_speedup = 0;        ///< vs the first model
  double decode_speedup = 0;
  std::vector<double> decode_tokens_per_second_runs;  ///< per repetition (round), in run order
  std::vector<double> decode_speedup_runs;            ///< per round: this run / the first model's same-round run
  std::vector<double> read_gbps_runs;       ///< read bandwidth measured just before each run (3 passes, median)
  std::vector<double> bound_fraction_runs;  ///< per run: its decode tokens/s * weight_bytes / (its read_gbps * 1e9)
  double bound_tokens_per_second = 0;
  double bound_fraction = 0;
  std::string prefill_path, decode_path;  ///< kernel paths of the first linear
};

struct DecodeReport {
  std::string device_name;
  std::string cpu_isa;
  std::string blas_core;  ///< OpenBLAS kernel set (lib/common/blas_runtime.h), "" without OpenBLAS
  int threads = 0;
  bool interleaved = true;  ///< DecodeOptions::interleave of the run
  double read_gbps = 0;
  double read_gbps_before = 0, read_gbps_after = 0;
  double load_average_start[3] = {0, 0, 0};
  double load_average_end[3] = {0, 0, 0};
  std::vector<DecodeResult> results;
};

/// Runs the benchmark. Throws Error(kUsage) for no model, prompt_tokens < 1, gen_tokens < 2
/// or reps < 1, and what LlamaModel::load throws for a bad folder (before any timing).
DecodeReport run_decode_bench(const DecodeOptions& opt);

/// The human table.
std::string decode_table(const DecodeReport& r);

/// The report as JSON (every field above; per model the keys prefill_tokens_per_second,
/// decode_tokens_per_second, format, speedups, bound).
nlohmann::json decode_report_json(const DecodeReport& r, const DecodeOptions& opt);

}  // namespace mpq::bench
