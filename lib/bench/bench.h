// mpq-bench's engine: per-layer matrix-vector / small-batch product time of each weight
// format on LLM layer shapes, against dense fp16 and a copy-bandwidth reference measured in
// the same run, and the latency table mpq-search reads (--latency-table).
//
// Method (docs/cli.md, "mpq-bench"; the rules of ../shared/design: warm-up, repetitions,
// median and spread, buffers rotated beyond the cache, GB/s against a bandwidth measured in
// the same run):
//   for each shape [rows, cols]:
//     W = random fp32 N(0, 0.02^2), a synthetic Fisher F = g^2 (g ~ N(0, 1)), both from the
//     shape's seed; every format is encoded from this W with its real quantizer
//     (make_quantizer / FgmpQuantizer, encode_weighted(W, F)), fp16 / fp32 are W rounded;
//     the encoded tensor is copied `copies` times (separate memory) so that the copies
//     together exceed the last-level cache (Options::rotate_bytes) and each timed call reads
//     a copy not touched for copies - 1 calls;
//     for each batch B: X fp32 [B, cols] random; `warmup` untimed calls, then `reps` timed
//     calls, call i on copy i mod copies; each call timed alone (CPU: steady_clock around
//     the call; CUDA: CUDA events, cuda::time_device_us).
//   Reported per (shape, format, B): median, quartiles, min, max in microseconds;
//   GB/s = weight bytes / median time (weight bytes = the packed tensor's stored bytes,
//   PackedTensor::bytes(), every part and scale counted; fp16 2 and fp32 4 bytes per weight);
//   copy_fraction = GB/s / copy bandwidth (the copy bandwidth counts read + write, so a
//   read-only stream may exceed 1); speedup_vs_f16 = median of f16 / median of the format
//   (same shape, same B, same run).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lib/quant/quantizer.h"

namespace mpq::bench {

/// A linear layer's weight shape: rows = out_features, cols = in_features (y = x W^T).
struct LayerShape {
  int64_t rows = 0;
  int64_t cols = 0;
  std::string model;  ///< where the shape comes from ("llama2-7b q/k/v/o", "custom")
};

/// The five default shapes: Llama-2-7B 4096x4096 (q/k/v/o), 11008x4096 (gate/up),
/// 4096x11008 (down); Llama-3-8B 14336x4096 (gate/up), 4096x14336 (down).
std::vector<LayerShape> default_shapes();

/// Parses "RxC" (e.g. "4096x11008", rows first) into a custom shape. Throws Error(kUsage)
/// naming the text unless both are integers in [1, 2^20].
LayerShape parse_shape(const std::string& text);

/// The device a run measures.
enum class Device { kCpu, kCuda };

/// One format label mpq-bench measures. Labels: "f16" and "f32" (dense weights), "fp8",
/// "nvfp4", and mpq-search's candidate labels (parse_format_label, lib/quant/quantizer.h):
/// "squeezellm-<b>bit" (b = 2, 3, 4; LUT only, no CSR part), "squeezellm-<b>bit-sparse"
/// (plus the 0.45% outlier + 0.05% Fisher-sensitive CSR part), "uniform-<b>bit" (min-max
/// grid, same layout as squeezellm without CSR), "fgmp-<p>" (p percent of blocks FP8, p in
/// 0..100).
struct FormatSpec {
  std::string label;
  std::string format;       ///< "f16", "f32", or the quantizer format name
  QuantizerParams params;   ///< squeezellm / uniform
  double fp8_fraction = 0;  ///< fgmp
  mpq::FormatSpec quant;    ///< the parsed label (info == nullptr for f16 / f32)
};

/// Parses a format label (above). Throws Error(kUsage) listing the accepted forms.
FormatSpec parse_format(const std::string& label);

/// The labels measured when --formats is not given: every label below, in this order:
/// f16, f32, squeezellm-{2,3,4}bit, squeezellm-{2,3,4}bit-sparse, uniform-{2,3,4}bit,
/// fgmp-10, fgmp-30, fgmp-50, fp8, nvfp4 (CUDA: no f32, it has no device kernel).
std::vector<std::string> default_formats(Device device);

/// "" when `device` has a product kernel for the format, else why not (e.g. fp8/nvfp4 on
/// the CPU: "no CPU kernel: the CPU runtime decodes fp8 to fp32 at load").
std::string unsupported_reason(const FormatSpec& spec, Device device);

/// The quantizer of a quantized format (nullptr for f16 / f32).
std::unique_ptr<Quantizer> make_format_quantizer(const FormatSpec& spec);

/// The mpq-search candidate label a measured format stands for: quantized labels map to
/// themselves; `source` ("f16" or "f32", the source model's dtype, bf16 counted as f16)
/// maps to "source"; anything else to "" (not a candidate).
std::string candidate_label(const std::string& format_label, const std::string& source);

/// Order statistics of one measurement, microseconds.
struct Stats {
  double median_us = 0;
  double p25_us = 0;  ///< quartiles by linear interpolation between order statistics
  double p75_us = 0;
  double min_us = 0;
  double max_us = 0;
  int reps = 0;
};

/// The "model name" line of /proc/cpuinfo, or "cpu".
std::string cpu_model_name();

/// Stats of `us` (>= 1 value). Throws Error(kUsage) when empty.
Stats summarize_us(std::vector<double> us);

/// Copies of a `bytes`-byte weight to rotate over: ceil(rotate_bytes / bytes), at least 2,
/// at most 4096, and at most max_total_bytes / bytes (at least 1).
int rotation_copies(std::size_t bytes, std::size_t rotate_bytes, std::size_t max_total_bytes);

/// A random weight [rows, cols] and its synthetic Fisher (method above); deterministic in
/// `seed`. Both fp32 row-major.
void random_weight(int64_t rows, int64_t cols, uint64_t seed, std::vector<float>* w,
                   std::vector<float>* fisher);

/// W encoded in a quantized format (spec.format not f16/f32), named "bench.<label>".
PackedTensor encode_format(const FormatSpec& spec, const float* w, const float* fisher,
                           int64_t rows, int64_t cols);

/// What a run does.
struct Options {
  Device device = Device::kCpu;
  std::vector<LayerShape> shapes;    ///< default_shapes() when empty
  std::vector<std::string> formats;  ///< default_formats() when empty; f16 always measured
  std::vector<int> batches{1, 4, 16};  ///< each in [1, 16]
  int reps = 20;
  int warmup = 3;
  int threads = 0;  ///< CPU OpenMP threads (0: all)
  /// The copies of one weight together span at least this (CPU 512 MiB, beyond a server
  /// LLC; CUDA 256 MiB, beyond a 50 MB L2); also the size of the copy-bandwidth buffers.
  std::size_t rotate_bytes = std::size_t{512} << 20;
  std::size_t max_total_bytes = std::size_t{4} << 30;  ///< cap of all copies of one weight
  bool e2e = false;      ///< CUDA: decode tokens/s of a Llama-2-7B-shaped stack of linears
  int e2e_layers = 32;   ///< layers of that stack
  std::function<void(const std::string&)> progress;  ///< one line per step (stderr), or null
};

/// One (shape, format, batch) measurement.
struct Measurement {
  LayerShape shape;
  std::string format;  ///< the label
  int batch = 1;
  std::size_t weight_bytes = 0;  ///< one copy's bytes, as read by one call
  double bpw = 0;                ///< weight_bytes * 8 / (rows * cols)
  int copies = 0;
  std::string kernel;            ///< code path ("avx2", "f16c", "eigen", "cuda", ...)
  Stats stats;
  double gbps = 0;            ///< weight_bytes / median, 1e9 bytes/s
  double copy_fraction = 0;   ///< gbps / copy bandwidth
  double speedup_vs_f16 = 0;  ///< f16 median / this median
};

/// A format requested but not measurable on the device.
struct Skipped {
  std::string format;
  std::string reason;
};

/// End-to-end decode of a Llama-2-7B-shaped stack of linear layers (CUDA only).
struct E2eResult {
  std::string format;
  int layers = 0;
  std::size_t weight_bytes = 0;  ///< all linears of all layers
  Stats stats;                   ///< per token
  double tokens_per_s = 0;       ///< 1e6 / median
  double gbps = 0;
  double speedup_vs_f16 = 0;
  bool cuda_graph = false;       ///< the token was replayed as one CUDA Graph
};

/// Everything a run measured.
struct Report {
  std::string device_kind;  ///< "cpu" or "cuda"
  std::string device_name;  ///< CPU model or GPU name
  int threads = 0;          ///< CPU OpenMP threads
  double copy_gbps = 0;     ///< copy bandwidth reference (read + write), GB/s
  std::size_t copy_bytes = 0;
  double load_average_start[3] = {0, 0, 0};  ///< CPU: getloadavg at start / end
  double load_average_end[3] = {0, 0, 0};
  std::vector<Measurement> results;
  std::vector<Skipped> skipped;
  std::vector<E2eResult> e2e;
  std::string e2e_scope;  ///< what the e2e numbers include, in words
};

/// The formats a run measures, in order: "f16" first (the baseline, always measured), then
/// opt.formats (or default_formats()) without duplicates; those `opt.device` cannot run go
/// to *skipped with unsupported_reason(). Throws Error(kUsage) for a bad label.
std::vector<FormatSpec> resolve_formats(const Options& opt, std::vector<Skipped>* skipped);

/// Fills gbps, copy_fraction (from r.copy_gbps) and speedup_vs_f16 (from the f16
/// measurement of the same shape and batch; 0 when there is none) of every result, and
/// gbps / speedup_vs_f16 of every e2e result.
void finalize(Report* r);

/// Runs the benchmark on the CPU. Throws Error(kUsage) for a bad label, batch or count.
Report run_cpu(const Options& opt);

/// Runs the benchmark on CUDA device 0 (kernels/cuda/gemv.h). Throws Error(kInput)
/// "--device cuda: ..." when mpq was built without CUDA or no device is visible, and
/// Error(kUsage) as run_cpu.
Report run_cuda(const Options& opt);

/// Checks the options shared by both devices (batches in [1, 16], reps >= 1, warmup >= 0,
/// every label parses). Throws Error(kUsage).
void check_options(const Options& opt);

/// The human table (one line per measurement, then skipped formats and e2e).
std::string format_table(const Report& r);

/// The whole report as JSON (fields of the structs above, docs/cli.md).
nlohmann::json report_json(const Report& r, const Options& opt);

/// mpq-search's latency table: {"device": ..., "batch": B, "entries": [{"rows", "cols",
/// "candidate", "us"}]}, one entry per (shape, measured format with a candidate label) at
/// batch B (median microseconds). Throws Error(kUsage) when B was not measured.
nlohmann::json latency_table_json(const Report& r, int batch, const std::string& source);

}  // namespace mpq::bench
