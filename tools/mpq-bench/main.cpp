// mpq-bench: per-layer matrix-vector / small-batch product time of each weight format on
// Llama-2-7B and Llama-3-8B layer shapes, against dense fp16 and a copy bandwidth measured
// in the same run; the latency table mpq-search reads. See docs/cli.md and lib/bench/bench.h.
#include <omp.h>

#include <cstdio>
#include <filesystem>

#include "lib/bench/bench.h"
#include "lib/bench/decode.h"
#include "tools/common.h"

int main(int argc, char** argv) {
  using namespace mpq;
  namespace fs = std::filesystem;
  CLI::App app{"Time matrix-vector products of every weight format on LLM layer shapes (median, spread, "
               "GB/s, fraction of copy bandwidth, speedup over fp16); write mpq-search's latency table. "
               "With --decode: prefill and decode tokens/s of whole models on the CPU.",
               "mpq-bench"};
  std::string device, json_out, latency_out, source = "f16";
  std::vector<std::string> formats, shapes;
  bench::Options opt;
  int rotate_mb = 0, latency_batch = 1;
  bool quiet = false;
  app.add_option("--device", device, "cpu or cuda (required without --decode; --decode runs on the cpu)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  bench::DecodeOptions dopt;
  bool decode = false;
  std::string kernels = "fast";
  app.add_flag("--decode", decode,
               "Decode benchmark: prefill and token-by-token decode speed of each --model (KV cache, greedy), "
               "speedup over the first model, bound from the weight bytes and a read bandwidth measured in the same run");
  app.add_option("--model", dopt.models, "--decode: a model folder (repeat for several; the first is the baseline)");
  app.add_option("--prompt-tokens", dopt.prompt_tokens, "--decode: prompt length (prefill)")->capture_default_str();
  app.add_option("--gen-tokens", dopt.gen_tokens, "--decode: tokens generated per run (the first comes from the prefill)")
      ->capture_default_str();
  app.add_option("--kernels", kernels, "--decode: fast or exact (mpq-eval --kernels)")
      ->check(CLI::IsMember({"fast", "exact"}))
      ->capture_default_str();
  bool map_dense = false;
  app.add_flag("--map-dense", map_dense,
               "--decode: read dense (f32/f16/bf16) linears and LM heads in place from the mapped files instead of "
               "copying them into huge pages at load (less anonymous memory, slower decode)");
  bool one_at_a_time = false;
  app.add_flag("--one-model-at-a-time", one_at_a_time,
               "--decode: load one model at a time and run its repetitions back to back (less memory; by "
               "default every model is loaded and the repetitions run in rounds over the models)");
  app.add_option("--bandwidth-mb", dopt.bandwidth_bytes, "--decode: MiB of the read-bandwidth buffer (several times the L3)")
      ->default_val(1024)
      ->check(CLI::PositiveNumber);
  app.add_option("--formats", formats,
                 "Comma-separated labels: f16, f32, fp8, nvfp4, squeezellm-<2|3|4>bit[-sparse], "
                 "uniform-<2|3|4>bit, fgmp-<0..100> (default: all; f16 always measured)")
      ->delimiter(',');
  app.add_option("--shapes", shapes, "Comma-separated ROWSxCOLS (default: the five Llama-2-7B / Llama-3-8B shapes)")
      ->delimiter(',');
  app.add_option("--batches", opt.batches, "Comma-separated batch sizes in [1, 16]")->delimiter(',')->capture_default_str();
  app.add_option("--reps", opt.reps, "Timed calls per measurement")->capture_default_str();
  app.add_option("--warmup", opt.warmup, "Untimed calls before them")->capture_default_str();
  app.add_option("--threads", opt.threads, "CPU: OpenMP threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--rotate-mb", rotate_mb,
                 "MiB the copies of one weight span at least, and the copy-bandwidth buffer size "
                 "(default 512 on cpu, 256 on cuda)")
      ->check(CLI::PositiveNumber);
  app.add_option("--json", json_out, "Write every measurement as JSON");
  app.add_option("--latency-table", latency_out, "Write mpq-search's latency table (JSON) for this device");
  app.add_option("--latency-batch", latency_batch, "Batch whose medians go into the latency table")->capture_default_str();
  app.add_option("--source", source, "The source models' dtype, whose timing is candidate 'source': f16 (also for bf16) or f32")
      ->check(CLI::IsMember({"f16", "f32"}))
      ->capture_default_str();
  app.add_flag("--e2e", opt.e2e, "CUDA: decode tokens/s of a Llama-2-7B-shaped stack of linear layers per format");
  app.add_option("--e2e-layers", opt.e2e_layers, "Layers of that stack")->capture_default_str();
  app.add_flag("-q,--quiet", quiet, "No progress lines");
  app.set_version_flag("--version", tool::version());

  return tool::run(app, argc, argv, [&]() -> int {
    const auto print_progress = [](const std::string& line) { std::fprintf(stderr, "mpq-bench: %s\n", line.c_str()); };
    const auto write_report = [&](nlohmann::json j) {
      j["tool"] = "mpq-bench";
      j["version"] = tool::version();
      tool::write_json(json_out, j);
    };
    // Fail before a long run, not after it, when an output folder is missing.
    for (const std::string& out : {json_out, latency_out}) {
      const fs::path parent = fs::path(out).parent_path();
      if (!out.empty() && !parent.empty() && !fs::is_directory(parent))
        throw_output(out, "parent folder does not exist");
    }
    if (decode) {
      if (device == "cuda") throw Error(ExitCode::kUsage, "--decode runs on the cpu (the CUDA decode is --e2e)");
      if (dopt.models.empty()) throw Error(ExitCode::kUsage, "--decode needs at least one --model");
      if (opt.threads > 0) omp_set_num_threads(opt.threads);
      dopt.reps = opt.reps == 20 ? 3 : opt.reps;
      dopt.interleave = !one_at_a_time;  // --reps default is the layer benchmark's
      dopt.bandwidth_bytes <<= 20;
      dopt.mode = parse_kernel_mode(kernels);
      dopt.copy_dense = !map_dense;
      if (!quiet) dopt.progress = print_progress;
      const bench::DecodeReport rep = bench::run_decode_bench(dopt);
      std::fputs(bench::decode_table(rep).c_str(), stdout);
      if (!json_out.empty()) write_report(bench::decode_report_json(rep, dopt));
      return 0;
    }
    if (device.empty()) throw Error(ExitCode::kUsage, "--device is required (cpu or cuda), or use --decode");
    if (!dopt.models.empty()) throw Error(ExitCode::kUsage, "--model needs --decode");
    opt.device = device == "cuda" ? bench::Device::kCuda : bench::Device::kCpu;
    opt.formats = formats;
    for (const auto& s : shapes) opt.shapes.push_back(bench::parse_shape(s));
    opt.rotate_bytes = static_cast<std::size_t>(rotate_mb > 0 ? rotate_mb : (device == "cuda" ? 256 : 512)) << 20;
    if (!quiet) opt.progress = print_progress;
    bench::check_options(opt);
    bool latency_batch_measured = false;
    for (int b : opt.batches) latency_batch_measured |= b == latency_batch;
    if (!latency_out.empty() && !latency_batch_measured)
      throw Error(ExitCode::kUsage, "--latency-batch " + std::to_string(latency_batch) + " is not among --batches");
    const bench::Report rep = opt.device == bench::Device::kCuda ? bench::run_cuda(opt) : bench::run_cpu(opt);
    std::fputs(bench::format_table(rep).c_str(), stdout);
    if (!json_out.empty()) write_report(bench::report_json(rep, opt));
    if (!latency_out.empty()) tool::write_json(latency_out, bench::latency_table_json(rep, latency_batch, source));
    return 0;
  });
}
