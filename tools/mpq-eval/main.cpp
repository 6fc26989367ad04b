// mpq-eval: perplexity (and KL divergence vs a base model) of a dense or packed model,
// with regression gates for CI. See docs/cli.md.
#include <omp.h>

#include <cstdio>
#include <set>

#include "formats/hf_config.h"
#include "kernels/cpu/cpu_features.h"  // cpu_isa(), for the report
#include "lib/common/blas_runtime.h"  // blas_core_name(), for the report
#include "lib/eval/perplexity.h"
#include "lib/model/generate.h"  // forward_token_by_token
#include "lib/model/llama.h"
#include "lib/model/tokenizer.h"
#include "tools/common.h"

#ifdef MPQ_HAVE_CUDA
#include "kernels/cuda/dequant.h"  // device_count(), device_name()
#include "kernels/cuda/forward.h"
#endif

int main(int argc, char** argv) {
  using namespace mpq;
  CLI::App app{"Perplexity of a Llama-family model (dense or mpq/ModelOpt packed) over "
               "non-overlapping windows; optional KL divergence vs a base model and "
               "regression gates.",
               "mpq-eval"};
  std::string model_dir, text_file, token_file, json_out, base_dir, act_name = "auto", device = "cpu",
              kernels_name = "fast";
  int64_t ctx = 512, max_tokens = 0;
  int threads = 0;
  double max_ppl = 0, baseline_ppl = 0, max_increase_pct = -1;
  bool quiet = false, token_by_token = false, map_dense = false;
  app.add_option("--model", model_dir, "Model folder (config.json, *.safetensors, tokenizer.model)")
      ->required();
  auto* text_opt = app.add_option("--text", text_file, "Text file: BOS + whole-file tokenization");
  auto* tok_opt = app.add_option("--tokens", token_file, "Pre-tokenized ids, int32 little-endian");
  text_opt->excludes(tok_opt);
  app.add_option("--ctx", ctx, "Window length in tokens (default: min(512, config.json max_position_embeddings))")->check(CLI::Range(2, 1 << 20));
  bool allow_long_ctx = false;
  app.add_flag("--allow-long-ctx", allow_long_ctx,
               "Allow --ctx beyond config.json max_position_embeddings (the model then runs outside its "
               "trained context; warned on stderr and recorded in the JSON)");
  app.add_option("--max-tokens", max_tokens, "Use only the first N ids (0 = all)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--json", json_out, "Write the results as JSON to this file");
  app.add_option("--base", base_dir, "Base model folder: also report mean KL(base || model)");
  app.add_option("--act", act_name,
                 "Activation quantization of every linear input (emulated): auto (what the checkpoint's "
                 "quantization_config declares an engine does: static W4A4 NVFP4 / W8A8 FP8 with its "
                 "input_scale, FP8 per-token, or nothing for weight-only and dense models), none, fp8, "
                 "nvfp4 (per-token scales, or the checkpoint's static scale made for that mode), or fgmp "
                 "(per 16-element block, needs the checkpoint's --act-calib thresholds); the --base model "
                 "always runs unquantized activations")
      ->check(CLI::IsMember({"auto", "none", "fp8", "nvfp4", "fgmp"}))
      ->capture_default_str();
  app.add_option("--device", device,
                 "cpu, or cuda: the whole forward pass on CUDA device 0 with the packed weights "
                 "(--base runs there too; --act must be none)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--kernels", kernels_name,
                 "CPU: fast (int8 activations in the NVFP4 / SqueezeLLM GEMVs, bf16 activations and weights "
                 "in window products on AMX / AVX512_BF16) or exact (fp32 products of the exactly decoded "
                 "weights); --base runs the same mode")
      ->check(CLI::IsMember({"fast", "exact"}))
      ->capture_default_str();
  app.add_flag("--map-dense", map_dense,
               "CPU, --token-by-token: read dense (f32/f16/bf16) linears and the LM head in place from the mapped "
               "files instead of copying them into huge pages at load (less anonymous memory, slower)");
  app.add_flag("--token-by-token", token_by_token,
               "CPU: score each window one token at a time through the KV cache (the decode path: single-token "
               "products) instead of one window product; --base stays windowed");
  app.add_option("--threads", threads, "OpenMP threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--max-ppl", max_ppl, "Gate: exit 5 if ppl > X");
  auto* gate_base = app.add_option("--baseline-ppl", baseline_ppl, "Gate: baseline ppl for --max-increase-pct");
  auto* gate_pct = app.add_option("--max-increase-pct", max_increase_pct,
                                  "Gate: exit 5 if ppl > baseline * (1 + P/100)");
  gate_pct->needs(gate_base);
  gate_base->needs(gate_pct);
  app.add_flag("-q,--quiet", quiet, "No per-window progress on stderr");
  app.set_version_flag("--version", tool::version());

  return tool::run(app, argc, argv, [&]() -> int {
    if (text_file.empty() && token_file.empty())
      throw Error(ExitCode::kUsage, "one of --text or --tokens is required");
    if (threads > 0) omp_set_num_threads(threads);
    const bool cuda = device == "cuda";
    if (cuda && act_name != "none" && act_name != "auto")
      throw Error(ExitCode::kUsage, "--act " + act_name + " needs --device cpu (the CUDA runtime runs fp32 activations)");
    if (cuda && token_by_token) throw Error(ExitCode::kUsage, "--token-by-token needs --device cpu");
    if (cuda) {
#ifdef MPQ_HAVE_CUDA
      if (cuda::device_count() == 0)
        throw Error(ExitCode::kInput, "--device cuda: no CUDA device visible (driver missing or no GPU)");
#else
      throw Error(ExitCode::kInput,
                  "--device cuda: this mpq was built without CUDA (configure with -DMPQ_CUDA=ON where nvcc is installed)");
#endif
    }
    // A window longer than the trained context is refused before any weight is read.
    // Without --ctx the window is min(512, max_position_embeddings).
    const int64_t max_pos = load_llama_config(model_dir).max_position_embeddings;  // 0 = not given
    if (app.count("--ctx") == 0 && max_pos > 0 && ctx > max_pos) ctx = max_pos;
    const bool beyond_max_pos = max_pos > 0 && ctx > max_pos;
    if (beyond_max_pos && !allow_long_ctx)
      throw Error(ExitCode::kUsage, "--ctx " + std::to_string(ctx) + " exceeds max_position_embeddings " +
                                        std::to_string(max_pos) + " of " + model_dir +
                                        "/config.json: the model would run outside its trained context; give --ctx <= " +
                                        std::to_string(max_pos) + " or --allow-long-ctx");
    if (beyond_max_pos)
      std::fprintf(stderr, "mpq-eval: warning: --ctx %lld exceeds max_position_embeddings %lld: positions past %lld "
                           "are outside the trained context (recorded in the JSON)\n",
                   static_cast<long long>(ctx), static_cast<long long>(max_pos), static_cast<long long>(max_pos));
    // The CPU runs every weight in its stored form through its kernels (no fp32 copy); the
    // CUDA upload reads the default (fp32 / packed view) form.
    LoadOptions load_opt;
    load_opt.cpu_kernels = !cuda;
    load_opt.copy_dense = token_by_token && !map_dense;  // single-token products: huge pages pay
    const KernelMode kernel_mode = parse_kernel_mode(kernels_name);
    LlamaModel model = LlamaModel::load(model_dir, load_opt);
    model.set_kernel_mode(kernel_mode);
    ActQuantMode act_mode = parse_act_mode(act_name);
    std::string act_declared = "none";  // what auto resolved to, per linear: "none", "fp8", "nvfp4" or "mixed"
    if (act_mode == ActQuantMode::kDeclared) {
      std::set<std::string> modes;
      for (const LlamaLayer& L : model.weights().layers)
        for (const Linear& lin : L.linear)
          modes.insert(std::string(act_mode_name(lin.declared_act)) + (lin.input_dynamic ? " per-token" : ""));
      modes.erase("none");
      act_declared = modes.empty() ? "none" : modes.size() == 1 ? *modes.begin() : "mixed";
      if (modes.empty()) act_mode = ActQuantMode::kNone;
      if (cuda && !modes.empty())
        throw Error(ExitCode::kUsage, "--device cuda: the checkpoint declares " + act_declared +
                                          " activations, which the CUDA runtime does not emulate (it runs fp32 "
                                          "activations); use --device cpu, or --act none for weights only");
    }
    model.set_act_quant(act_mode, model_dir);
    std::vector<int32_t> ids;
    if (!token_file.empty()) {
      ids = read_token_file(token_file);
    } else {
      const std::string text = read_text_file(text_file);  // an empty text fails first
      ids = Tokenizer::load(model_dir).encode(text);
    }
    std::optional<LlamaModel> base;
    PerplexityOptions opt;
    opt.ctx = ctx;
    opt.max_tokens = max_tokens;
    if (!base_dir.empty()) {
      base.emplace(LlamaModel::load(base_dir, load_opt));
      base->set_kernel_mode(kernel_mode);
      if (base->config().vocab_size != model.config().vocab_size)
        throw_input(base_dir, "vocab_size " + std::to_string(base->config().vocab_size) +
                                  " differs from the model's " + std::to_string(model.config().vocab_size));
      opt.base = &*base;
    }
    if (model.config().sliding_window > 0 && ctx > model.config().sliding_window)
      std::fprintf(stderr, "mpq-eval: note: ctx %lld exceeds sliding_window %lld; windowed attention applied\n",
                   static_cast<long long>(ctx), static_cast<long long>(model.config().sliding_window));
    const PerplexityProgress progress = [&](int64_t done, int64_t total, double ppl, double secs) {
      if (quiet) return;
      const double eta = secs / static_cast<double>(done) * static_cast<double>(total - done);
      std::fprintf(stderr, "[%lld/%lld] ppl %.4f  %s elapsed, ETA %s\n", static_cast<long long>(done),
                   static_cast<long long>(total), ppl, tool::format_seconds(secs).c_str(),
                   tool::format_seconds(eta).c_str());
    };
    PerplexityResult r;
    std::string device_name = "cpu";
    if (!cuda && token_by_token) {
      const WindowForward f = [&model](const int32_t* tok, int64_t T) { return forward_token_by_token(model, tok, T); };
      WindowForward b;
      if (base) b = [&base](const int32_t* tok, int64_t T) { return base->forward(tok, T); };
      r = evaluate_perplexity(f, ids, opt, b, window_threads(model.parameter_count()) > 1, progress);
    } else if (!cuda) {
      r = evaluate_perplexity(model, ids, opt, progress);
    } else {
#ifdef MPQ_HAVE_CUDA
      // Windows run one at a time on the device; the base model (if any) is uploaded too.
      device_name = cuda::device_name();
      const cuda::CudaLlamaModel gpu = cuda::CudaLlamaModel::upload(model, model_dir);
      std::optional<cuda::CudaLlamaModel> gpu_base;
      WindowForward base_forward;
      if (base) {
        gpu_base.emplace(cuda::CudaLlamaModel::upload(*base, base_dir));
        base_forward = [&](const int32_t* tok, int64_t T) { return gpu_base->forward(tok, T); };
      }
      r = evaluate_perplexity([&](const int32_t* tok, int64_t T) { return gpu.forward(tok, T); }, ids, opt,
                              base_forward, /*parallel_windows=*/false, progress);
#endif
    }

    // Bits per weight of the quantizable linears as stored.
    std::size_t linear_bytes = 0;
    int64_t linear_params = 0;
    std::map<std::string, int64_t> formats;
    std::map<std::string, std::string> paths;  // format -> kernel path of a ctx-token window
    for (const auto& L : model.weights().layers)
      for (const auto& l : L.linear) {
        linear_bytes += l.stored_bytes;
        linear_params += l.numel();
        formats[l.format] += 1;
        if (l.kernel) paths[l.format] = l.kernel->path(ctx, kernel_mode);
      }
    const double linear_bpw = 8.0 * static_cast<double>(linear_bytes) / static_cast<double>(linear_params);

    std::printf("model        %s\n", model_dir.c_str());
    std::printf("device       %s\n", device_name.c_str());
    std::printf("input        %s (%zu tokens)\n", (token_file.empty() ? text_file : token_file).c_str(), ids.size());
    std::printf("windows      %lld x %lld tokens, %lld scored\n", static_cast<long long>(r.windows),
                static_cast<long long>(r.ctx), static_cast<long long>(r.scored_tokens));
    std::printf("mean NLL     %.6f nats\n", r.mean_nll);
    std::printf("perplexity   %.4f\n", r.ppl);
    if (r.mean_kl) std::printf("mean KL      %.6f nats (vs %s)\n", *r.mean_kl, base_dir.c_str());
    std::printf("linear bpw   %.4f\n", linear_bpw);
    if (!cuda) {
      std::string p;
      for (const auto& [f, path] : paths) p += (p.empty() ? "" : ", ") + f + ": " + path;
      std::printf("kernels      %s (%s; cpu %s; blas %s)\n", kernels_name.c_str(), p.c_str(), cpu_isa_name(cpu_isa()),
                  blas_core_name().c_str());
    }
    const ActBlockCounts act = model.act_block_counts();
    if (model.act_quant() != ActQuantMode::kNone)
      std::printf("activations  %s: %lld NVFP4 + %lld FP8 blocks (FP4 fraction %.4f)\n",
                  act_mode == ActQuantMode::kDeclared ? ("declared " + act_declared).c_str() : act_name.c_str(),
                  static_cast<long long>(act.fp4), static_cast<long long>(act.fp8), act.fp4_fraction());
    std::printf("throughput   %.1f tokens/s (%.2f s)\n", r.tokens_per_second, r.seconds);

    nlohmann::json j;
    j["tool"] = tool::version();
    j["model"] = model_dir;
    j["input"] = token_file.empty() ? text_file : token_file;
    j["input_tokens"] = ids.size();
    j["ctx"] = r.ctx;
    j["max_position_embeddings"] = max_pos > 0 ? nlohmann::json(max_pos) : nlohmann::json(nullptr);
    j["ctx_beyond_max_position_embeddings"] = beyond_max_pos;
    j["windows"] = r.windows;
    j["scored_tokens"] = r.scored_tokens;
    j["mean_nll"] = r.mean_nll;
    j["ppl"] = r.ppl;
    j["mean_kl"] = r.mean_kl ? nlohmann::json(*r.mean_kl) : nlohmann::json(nullptr);
    j["seconds"] = r.seconds;
    j["tokens_per_second"] = r.tokens_per_second;
    j["threads"] = omp_get_max_threads();
    j["device"] = device;
    j["device_name"] = device_name;
    j["linear_bpw"] = linear_bpw;
    j["linear_bytes"] = linear_bytes;
    j["linear_params"] = linear_params;
    j["linear_formats"] = formats;
    j["window_nll"] = r.window_nll;
    j["act"] = act_name;
    j["act_declared"] = act_declared;
    j["kernels"] = cuda ? "cuda" : kernels_name;
    j["token_by_token"] = token_by_token;
    j["kernel_paths"] = paths;
    j["cpu_isa"] = cpu_isa_name(cpu_isa());
    j["blas_core"] = blas_core_name();  // OpenBLAS kernel set of the eigen-fp32 path
    if (model.act_quant() != ActQuantMode::kNone) {
      j["act_fp4_blocks"] = act.fp4;
      j["act_fp8_blocks"] = act.fp8;
      j["act_fp4_fraction"] = act.fp4_fraction();
    }

    int rc = 0;
    std::string gate_msg;
    if (max_ppl > 0 && r.ppl > max_ppl) {
      gate_msg = "ppl " + std::to_string(r.ppl) + " > --max-ppl " + std::to_string(max_ppl);
    } else if (max_increase_pct >= 0) {
      const double limit = baseline_ppl * (1.0 + max_increase_pct / 100.0);
      if (r.ppl > limit)
        gate_msg = "ppl " + std::to_string(r.ppl) + " is " +
                   std::to_string(100.0 * (r.ppl / baseline_ppl - 1.0)) + "% above baseline " +
                   std::to_string(baseline_ppl) + " (limit " + std::to_string(max_increase_pct) + "%)";
    }
    j["gate"] = gate_msg.empty() ? "pass" : "fail: " + gate_msg;
    if (!json_out.empty()) tool::write_json(json_out, j);
    if (!gate_msg.empty()) {
      std::fprintf(stderr, "mpq-eval: gate failed: %s\n", gate_msg.c_str());
      rc = static_cast<int>(ExitCode::kGate);
    }
    return rc;
  });
}
