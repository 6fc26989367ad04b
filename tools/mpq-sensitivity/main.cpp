// mpq-sensitivity: Fisher, layer-Hessian and Hutchinson sensitivities of every linear layer
// of a Llama-family model, from calibration text. See docs/cli.md and docs/formats.md.
#include <omp.h>
#include <sys/resource.h>

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "calibration/sensitivity.h"
#include "calibration/windows.h"
#include "formats/hf_config.h"
#include "formats/packed_checkpoint.h"
#include "formats/safetensors.h"
#include "formats/sensitivity_file.h"
#include "lib/common/layer_range.h"
#include "lib/common/sha256.h"
#include "lib/model/llama.h"
#include "lib/model/tokenizer.h"
#include "tools/common.h"

namespace {

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // Linux reports KiB
}

}  // namespace

int main(int argc, char** argv) {
  using namespace mpq;
  namespace fs = std::filesystem;
  CLI::App app{"Fisher (squared gradients), layer-Hessian (2/T sum x x^T) and Hutchinson (trace of the "
               "loss Hessian) sensitivities of every linear layer, from calibration windows.",
               "mpq-sensitivity"};
  std::string model_dir, calib, out, kinds_str = "fisher,hessian", layers = ":", json_out;
  int64_t samples = 128, seq_len = 256;
  uint64_t seed = 0;
  int threads = 0;
  bool sequential = false, quiet = false;
  SensitivityOptions opt;
  app.add_option("--model", model_dir, "Model folder (dense weights)")->required();
  app.add_option("--calib", calib, "Calibration text (.txt) or pre-tokenized ids (.i32)")->required();
  app.add_option("--samples", samples, "Number of calibration windows N")->capture_default_str();
  app.add_option("--seq-len", seq_len, "Tokens per window L")->capture_default_str();
  app.add_option("--kind", kinds_str, "Comma list of fisher, hessian, hutchinson, act-fisher")->capture_default_str();
  app.add_option("--out", out, "Output sensitivity file (.safetensors, written atomically)")->required();
  app.add_option("--seed", seed, "Seed for window sampling and Rademacher vectors")->capture_default_str();
  app.add_flag("--sequential", sequential, "Take windows in order (0, L, 2L, ...) instead of sampling");
  app.add_flag("--full-hessian", opt.full_hessian, "Also store the full [in, in] layer Hessians");
  app.add_flag("--recompute-activations", opt.recompute_activations,
               "Keep only each layer's input in the forward pass and recompute its activations in the "
               "backward pass: about a third more time, the same numbers, far less memory");
  app.add_option("--hutchinson-iters", opt.hutchinson_iters, "Maximum Rademacher samples")->capture_default_str();
  app.add_option("--hutchinson-tol", opt.hutchinson_tol, "Stop when every running mean moves less (relative)")
      ->capture_default_str();
  app.add_option("--layers", layers,
                 "Only layers A:B (half-open; the model still runs whole): one part of a split run, "
                 "combined by mpq-merge into exactly the file one run writes");
  app.add_option("--json", json_out, "Also write the per-tensor summary as JSON");
  app.add_option("--threads", threads, "OpenMP threads (0 = all cores)");
  app.add_flag("-q,--quiet", quiet, "No progress on stderr");
  app.set_version_flag("--version", tool::version());

  return tool::run(app, argc, argv, [&]() -> int {
    if (threads > 0) omp_set_num_threads(threads);
    opt.fisher = opt.hessian = opt.hutchinson = false;
    std::stringstream ks(kinds_str);
    for (std::string k; std::getline(ks, k, ',');) {
      if (k == "fisher") opt.fisher = true;
      else if (k == "hessian") opt.hessian = true;
      else if (k == "hutchinson") opt.hutchinson = true;
      else if (k == "act-fisher") opt.act_fisher = true;
      else throw Error(ExitCode::kUsage, "--kind: unknown '" + k + "' (known: fisher, hessian, hutchinson, act-fisher)");
    }
    if (opt.full_hessian) opt.hessian = true;
    opt.seed = seed;

    const LlamaConfig config = load_llama_config(model_dir);
    const std::string config_path = (fs::path(model_dir) / "config.json").string();
    const LayerRange range = resolve_layer_range(parse_layer_range(layers), config.num_layers, config_path);
    opt.layer_begin = range.begin;
    opt.layer_end = range.end;
    if (!config.quantization_config.is_null())
      throw_input(config_path, "quantization_config: the model is quantized; sensitivities are computed on the "
                               "original model");
    const TensorStore store = TensorStore::open(model_dir);
    check_config_against_tensors(config, store);  // config sizes vs the tensors, before any loop over them
    for (int64_t l = 0; l < config.num_layers; ++l)
      for (const char* lin : kLinearNames) {
        const std::string prefix = "model.layers." + std::to_string(l) + "." + lin;
        const std::string f = detect_linear_format(store, prefix);
        if (f != "f32" && f != "f16" && f != "bf16")
          throw_input(model_dir, "module '" + prefix + "' holds quantized weights (" + f +
                                     "); sensitivities are computed on the original model");
      }
    check_llama_checkpoint(config, store);  // shapes and dtypes of every tensor, before any work
    std::vector<int32_t> ids;
    if (fs::path(calib).extension() == ".i32") ids = read_token_file(calib);
    else ids = Tokenizer::load(model_dir).encode(read_text_file(calib));
    const std::vector<int64_t> starts =
        calibration_window_starts(static_cast<int64_t>(ids.size()), samples, seq_len, seed, sequential);

    const SensitivityProgress progress = [&](const std::string& stage, int64_t done, int64_t total, double secs) {
      if (quiet) return;
      static std::string last_stage;
      static double stage_t0 = 0;
      if (stage != last_stage) {
        last_stage = stage;
        stage_t0 = secs;
      }
      const double per = (secs - stage_t0) / static_cast<double>(done);
      std::fprintf(stderr, "[%s %lld/%lld] %s elapsed, ETA %s\n", stage.c_str(), static_cast<long long>(done),
                   static_cast<long long>(total), tool::format_seconds(secs).c_str(),
                   tool::format_seconds(per * static_cast<double>(total - done)).c_str());
    };

    std::vector<std::string> weight_files;
    for (const auto& f : store.files()) weight_files.push_back(f->path());
    const nlohmann::json model_sha = sha256_model_inputs(model_dir, weight_files);
    std::string kinds;
    for (auto [on, name] : {std::pair{opt.fisher, "fisher"}, {opt.hessian, "hessian"}, {opt.hutchinson, "hutchinson"},
                            {opt.act_fisher, "act-fisher"}})
      if (on) kinds += (kinds.empty() ? "" : ",") + std::string(name);
    const std::map<std::string, std::string> meta = {
        {"tool", "mpq-sensitivity " + std::string(MPQ_VERSION)},
        {"kinds", kinds},
        {"samples", std::to_string(samples)},
        {"seq_len", std::to_string(seq_len)},
        {"seed", std::to_string(seed)},
        {"sequential", sequential ? "true" : "false"},
        {"layers", range.str()},
        {"num_layers", std::to_string(config.num_layers)},
        {"full_hessian", opt.full_hessian ? "true" : "false"},
        {"calibration_file", fs::path(calib).filename().string()},
        {"calibration_sha256", sha256_file(calib)},
        {"model_sha256", model_sha.dump()}};
    // The output file is laid out first: the Fisher accumulates in its mapped pages.
    SensitivityFileWriter writer(out,
                                 sensitivity_modules(config, range.begin, range.end, opt.fisher, opt.hessian,
                                                     opt.full_hessian, opt.act_fisher),
                                 meta);
    const SensitivityResult r = compute_sensitivities(config, store, ids, starts, seq_len, opt, progress,
                                                      [&](std::size_t k) { return writer.fisher(k); });
    writer.finish(r);

    std::printf("%-36s %12s %14s %14s %16s\n", "tensor", "params", "fisher_sum", "hessian_trace", "hutchinson/param");
    nlohmann::json j;
    for (const TensorSensitivity& t : r.tensors) {
      const double per = t.hutchinson_trace / static_cast<double>(t.rows * t.cols);
      std::printf("%-36s %12lld %14.6g %14.6g %16.6g\n", t.name.c_str(), static_cast<long long>(t.rows * t.cols),
                  t.fisher_sum, t.hessian_trace, per);
      j["tensors"][t.name] = {{"params", t.rows * t.cols}, {"fisher_sum", t.fisher_sum},
                              {"hessian_trace", t.hessian_trace}, {"act_fisher_sum", t.act_fisher_sum},
                              {"hutchinson_trace", t.hutchinson_trace},
                              {"hutchinson_trace_per_param", per}, {"hutchinson_stderr", t.hutchinson_stderr},
                              {"hutchinson_samples", t.hutchinson_samples}};
    }
    const double peak = peak_rss_mib();
    std::printf("windows %lld x %lld tokens; fisher pass %.1f tokens/s; %.2f s; peak memory %.1f MiB\n",
                static_cast<long long>(r.windows), static_cast<long long>(r.seq_len), r.fisher_tokens_per_second,
                r.seconds, peak);
    if (!json_out.empty()) {
      j["windows"] = r.windows;
      j["seq_len"] = r.seq_len;
      j["tokens"] = r.tokens;
      j["seconds"] = r.seconds;
      j["fisher_tokens_per_second"] = r.fisher_tokens_per_second;
      j["peak_rss_mib"] = peak;
      j["threads"] = omp_get_max_threads();
      j["metadata"] = meta;
      tool::write_json(json_out, j);
    }
    return 0;
  });
}
