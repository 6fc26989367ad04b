// mpq-pack: quantize a Hugging Face Llama-family model into a packed checkpoint folder.
// See docs/cli.md and docs/formats.md.
#include <omp.h>

#include <cstdio>
#include <map>

#include "lib/common/sha256.h"
#include "lib/pack/pack_model.h"
#include "lib/search/search.h"
#include "lib/quant/fgmp.h"
#include "lib/quant/quantizer.h"
#include "tools/common.h"

int main(int argc, char** argv) {
  using namespace mpq;
  std::string formats_help = "Format label (" + format_label_forms().substr(std::string("source | ").size()) + "):";
  for (const FormatInfo& f : format_table())
    formats_help += std::string("\n  ") + f.label_forms + " (~" + std::to_string(f.nominal_bpw).substr(0, 4) +
                    " bpw): " + f.description;
  CLI::App app{"Quantize the linear projections (q/k/v/o/gate/up/down) of a Llama-family model "
               "and write a packed Hugging Face folder (ModelOpt tensor names).",
               "mpq-pack"};
  std::string model_dir, out_dir;
  PackOptions opt;
  int threads = 0;
  bool quiet = false;
  app.add_option("--model", model_dir, "Input model folder (config.json, *.safetensors, tokenizer)")->required();
  std::string plan_path;
  std::string format_label;
  auto* format_opt = app.add_option("--format", format_label, formats_help);
  app.add_option("--plan", plan_path,
                 "Instead of --format: a mixed-precision plan from mpq-search (one format per module); "
                 "its sensitivity file weights the squeezellm/fgmp entries unless --sensitivity is given")
      ->excludes(format_opt);
  app.add_option("--out", out_dir, "Output folder (written atomically)")->required();
  app.add_option("--bits", opt.params.bits, "Index bits for squeezellm/uniform (2, 3 or 4)")
      ->check(CLI::Range(2, 4))
      ->capture_default_str();
  app.add_option("--sensitivity", opt.sensitivity,
                 "squeezellm: sensitivity file (mpq-sensitivity --kind fisher) whose "
                 "<module>.fisher weights the k-means fit and picks sensitive weights; "
                 "without it the fit is unweighted. fgmp: the Fisher of the block scores and "
                 "of the clip search; without it both are unweighted");
  app.add_option("--outlier-pct", opt.params.outlier_pct,
                 "squeezellm: percent of weights (largest |w|) kept sparse in fp16")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  app.add_option("--sensitive-pct", opt.params.sensitive_pct,
                 "squeezellm: percent of weights (largest Fisher) kept sparse; needs --sensitivity")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  std::string fgmp_select = "fisher", fgmp_clip = "weighted";
  auto* fraction_opt = app.add_option("--fp8-fraction", opt.fgmp.fp8_fraction,
                                      "fgmp: fraction of all quantized blocks stored in FP8 (one global "
                                      "threshold over every tensor)")
                           ->check(CLI::Range(0.0, 1.0))
                           ->capture_default_str();
  app.add_option("--target-bpw", opt.target_bpw,
                 "fgmp: instead of --fp8-fraction, the most FP8 blocks whose bits per weight over "
                 "the quantized linears (all metadata counted) stay <= B")
      ->check(CLI::PositiveNumber)
      ->excludes(fraction_opt);
  app.add_option("--fgmp-select", fgmp_select,
                 "fgmp: how FP8 blocks are chosen: fisher (FGMP's Fisher-weighted perturbation), "
                 "random, amax (block amax / tensor amax); the last two are ablations")
      ->check(CLI::IsMember({"fisher", "random", "amax"}))
      ->capture_default_str();
  app.add_option("--fgmp-clip", fgmp_clip,
                 "fgmp: NVFP4 block-scale clipping: weighted (Fisher-weighted error over clip "
                 "ratios 0.70..1.00), unweighted, none (plain RTN scale)")
      ->check(CLI::IsMember({"weighted", "unweighted", "none"}))
      ->capture_default_str();
  app.add_option("--seed", opt.fgmp.seed, "fgmp --fgmp-select random: seed of the block scores")
      ->capture_default_str();
  app.add_option("--act-calib", opt.act.text,
                 "FGMP activations: calibration text (.txt) or ids (.i32); writes per-module activation "
                 "thresholds (needs --sensitivity with <module>.act_fisher); any format");
  app.add_option("--act-fp4-fraction", opt.act.fp4_fraction, "FGMP activations: fraction of NVFP4 blocks")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--act-samples", opt.act.samples, "FGMP activations: calibration windows")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--act-seq-len", opt.act.seq_len, "FGMP activations: tokens per window")
      ->check(CLI::Range(2, 1 << 20))
      ->capture_default_str();
  std::string export_kind = "auto", act_scheme = "none";
  app.add_option("--export", export_kind,
                 "Checkpoint contract: modelopt (vLLM/TensorRT-LLM ModelOpt loaders: fp8, nvfp4, mixed), "
                 "compressed-tensors (llm-compressor's format, vLLM), mpq (mpq-native, every format; engines "
                 "refuse it by name), or auto: the first of modelopt, compressed-tensors, mpq that can express "
                 "the pack")
      ->check(CLI::IsMember({"auto", "mpq", "modelopt", "compressed-tensors"}))
      ->capture_default_str();
  app.add_option("--activations", act_scheme,
                 "Engine exports: what the engine does with activations: none (weight-only: W4A16_NVFP4, FP8 "
                 "W8A16), static (calibrated per-tensor input scales, needs --calib: W4A4 NVFP4, W8A8 FP8), "
                 "dynamic (FP8 per-token scales at run time)")
      ->check(CLI::IsMember({"none", "static", "dynamic"}))
      ->capture_default_str();
  std::string method = "rtn";
  app.add_option("--method", method,
                 "How weights are rounded onto the format's grid: rtn (each on its own) or gptq (GPTQ error "
                 "compensation with the layer input Hessians of --calib, layer by layer; every format)")
      ->check(CLI::IsMember({"rtn", "gptq"}))
      ->capture_default_str();
  app.add_option("--calib", opt.calib.text,
                 "--method gptq / --activations static: calibration text (.txt) or ids (.i32)");
  app.add_option("--calib-samples", opt.calib.samples, "--method gptq / --activations static: calibration windows")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--calib-seq-len", opt.calib.seq_len, "--method gptq / --activations static: tokens per window")
      ->check(CLI::Range(2, 1 << 20))
      ->capture_default_str();
  app.add_option("--gptq-damp", opt.gptq.damp, "GPTQ: damping, fraction of mean(diag H) added to the diagonal")
      ->check(CLI::Range(0.0, 10.0))
      ->capture_default_str();
  app.add_option("--gptq-block", opt.gptq.block, "GPTQ: columns per lazy-batch block")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_flag("--gptq-act-order", opt.gptq.act_order,
               "GPTQ: columns by decreasing H_ii (desc_act); group parameters from the original weights");
  app.add_flag("--gptq-static-groups", opt.gptq.static_groups,
               "GPTQ: group / block scales from the original weights (default: from the compensated ones)");
  app.add_flag("--four-over-six", opt.four_over_six,
               "GPTQ, nvfp4: per 16-element block map the block maximum to 6 or to 4, whichever "
               "leaves the smaller error (Four Over Six)");
  std::string lm_head = "source";
  app.add_option("--lm-head", lm_head,
                 "Output head: source (kept in its stored dtype, what engines expect) or a format label "
                 "(fp8, nvfp4, squeezellm-4bit, int8-g32, ...) rounded on its own, as llama.cpp quantizes "
                 "output.weight; mpq-native export only, untied models only")
      ->capture_default_str();
  app.add_option("--exclude", opt.exclude, "Regex over module names to keep unquantized (repeatable)");
  std::string layers = ":", shard_size = "5GB";
  app.add_option("--layers", layers,
                 "Only layers A:B (half-open): one part of a split run, combined by mpq-merge into "
                 "exactly the folder one run writes; not with fgmp")
      ->capture_default_str();
  app.add_option("--max-shard-size", shard_size,
                 "Largest output shard, as transformers' save_pretrained reads it (5GB = 5e9 bytes, "
                 "2GiB, or bytes); one shard is written as model.safetensors")
      ->capture_default_str();
  app.add_flag("--force", opt.force, "Replace an existing non-empty output folder");
  app.add_option("--threads", threads, "OpenMP threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  app.add_flag("-q,--quiet", quiet, "No per-tensor progress on stderr");
  app.set_version_flag("--version", tool::version());

  return tool::run(app, argc, argv, [&]() -> int {
    if (threads > 0) omp_set_num_threads(threads);
    opt.layers = parse_layer_range(layers);
    opt.max_shard_bytes = parse_shard_size(shard_size);
    bool label_gptq = false, label_four_over_six = false;  // --format <label>+gptq[-4o6]
    if (format_label.empty() && plan_path.empty()) throw Error(ExitCode::kUsage, "give --format or --plan");
    if (!format_label.empty()) {  // the one label grammar; --bits / --fp8-fraction refine the bare names
      const FormatSpec spec = parse_format_label(format_label);
      label_gptq = spec.gptq;
      label_four_over_six = spec.four_over_six;
      if (spec.is_source()) throw Error(ExitCode::kUsage, "--format source: nothing to pack");
      opt.format = spec.format;
      const std::string base = spec.gptq ? format_label.substr(0, format_label.rfind('+')) : format_label;
      if (base != spec.format) {
        for (const char* flag : {"--bits", "--outlier-pct", "--sensitive-pct", "--fp8-fraction"})
          if (app.count(flag) > 0)
            throw Error(ExitCode::kUsage, std::string(flag) + " refines a bare --format name; '" + format_label +
                                              "' already sets it");
        opt.params = spec.params;
        opt.fgmp.fp8_fraction = spec.fgmp.fp8_fraction;
      }
    }
    opt.act_scheme = parse_act_scheme(act_scheme);
    opt.method = parse_pack_method(method);
    if (label_gptq) {
      if (app.count("--method") > 0 && opt.method != PackMethod::kGptq)
        throw Error(ExitCode::kUsage, "--format " + format_label + " with --method " + method);
      opt.method = PackMethod::kGptq;
    }
    if (label_four_over_six) opt.four_over_six = true;
    const bool gptq = opt.method == PackMethod::kGptq;
    for (const char* flag : {"--calib", "--calib-samples", "--calib-seq-len"})
      if (opt.act_scheme != ActScheme::kStatic && !gptq && plan_path.empty() && app.count(flag) > 0)
        throw Error(ExitCode::kUsage, std::string(flag) + " applies to --method gptq, a --plan with +gptq candidates "
                                                          "or --activations static only");
    for (const char* flag : {"--gptq-damp", "--gptq-block", "--gptq-act-order", "--gptq-static-groups", "--four-over-six"})
      if (!gptq && app.count(flag) > 0) throw Error(ExitCode::kUsage, std::string(flag) + " needs --method gptq");
    if (!plan_path.empty()) {
      std::string plan_sens, plan_sha, plan_export;
      opt.plan = read_plan(plan_path, &plan_sens, &plan_sha, &plan_export);
      if (app.count("--export") == 0 && plan_export != "mpq") export_kind = plan_export;  // the plan's target
      opt.plan_file = plan_path;
      opt.format = "plan";
      if (opt.sensitivity.empty()) opt.sensitivity = plan_sens;
      if (!opt.sensitivity.empty() && !plan_sha.empty() && sha256_file(opt.sensitivity) != plan_sha)
        throw_input(opt.sensitivity, "sha256 differs from the plan's inputs_sha256.sensitivity (" + plan_path +
                                         "): not the file the plan was searched with");
    }
    opt.export_kind = parse_export(export_kind);
    opt.lm_head = parse_format_label(lm_head);
    const bool planned = opt.format == "plan";
    const bool squeeze = opt.format == "squeezellm" || opt.format == "uniform";
    const bool fgmp = opt.format == "fgmp";
    const bool act = !opt.act.text.empty();
    for (const char* flag : {"--bits", "--outlier-pct", "--sensitive-pct"})
      if (!squeeze && app.count(flag) > 0)
        throw Error(ExitCode::kUsage, std::string(flag) + " applies to --format squeezellm/uniform only");
    if (!squeeze && !fgmp && !act && !planned && app.count("--sensitivity") > 0)
      throw Error(ExitCode::kUsage, "--sensitivity applies to --format squeezellm/uniform/fgmp, or with --act-calib");
    for (const char* flag : {"--fp8-fraction", "--target-bpw", "--fgmp-select", "--fgmp-clip", "--seed"})
      if (!fgmp && app.count(flag) > 0)
        throw Error(ExitCode::kUsage, std::string(flag) + " applies to --format fgmp only");
    for (const char* flag : {"--act-fp4-fraction", "--act-samples", "--act-seq-len"})
      if (!act && app.count(flag) > 0) throw Error(ExitCode::kUsage, std::string(flag) + " needs --act-calib");
    if (act && opt.sensitivity.empty())
      throw Error(ExitCode::kUsage, "--act-calib needs --sensitivity (an mpq-sensitivity --kind act-fisher file)");
    opt.act.sensitivity = opt.sensitivity;
    opt.fgmp.selection = parse_fgmp_selection(fgmp_select);
    opt.fgmp.clipping = parse_fgmp_clipping(fgmp_clip);
    if (fgmp && opt.sensitivity.empty() &&
        (opt.fgmp.selection == FgmpParams::Selection::kFisher || opt.fgmp.clipping == FgmpParams::Clipping::kWeighted))
      std::fprintf(stderr, "mpq-pack: note: no --sensitivity: fgmp scores and clipping are unweighted "
                           "(uniform Fisher)\n");
    if (opt.format == "uniform" &&
        ((act ? 0 : app.count("--sensitivity")) + app.count("--outlier-pct") + app.count("--sensitive-pct")) > 0)
      std::fprintf(stderr, "mpq-pack: note: --format uniform has no sparse part and no weighted fit; "
                           "--sensitivity/--outlier-pct/--sensitive-pct are ignored\n");
    else if (opt.format == "squeezellm" && opt.sensitivity.empty() && opt.params.sensitive_pct > 0)
      std::fprintf(stderr, "mpq-pack: note: no --sensitivity: unweighted k-means, and --sensitive-pct "
                           "(%g) is ignored (recorded as 0)\n", opt.params.sensitive_pct);
    if (opt.format == "uniform") opt.sensitivity.clear();
    for (int i = 0; i < argc; ++i) opt.command_line += (i ? " " : "") + std::string(argv[i]);
    const PackReport r = pack_model(model_dir, out_dir, opt, [&](std::size_t i, std::size_t n, const std::string& name) {
      if (!quiet) std::fprintf(stderr, "[%zu/%zu] %s\n", i, n, name.c_str());
    });
    for (const std::string& n : r.notes) std::fprintf(stderr, "mpq-pack: note: %s\n", n.c_str());
    std::printf("wrote        %s\n", out_dir.c_str());
    std::printf("format       %s\n", opt.format.c_str());
    std::printf("export       %s (activations %s)\n", export_name(r.export_kind), act_scheme.c_str());
    if (gptq)
      std::printf("method       gptq (damp %g, block %lld%s%s%s), %lld calibration tokens, %.1f s\n", opt.gptq.damp,
                  static_cast<long long>(opt.gptq.block), opt.gptq.act_order ? ", act order" : "",
                  opt.gptq.static_groups || opt.gptq.act_order ? ", static groups" : "",
                  opt.four_over_six ? ", four over six" : "",
                  r.manifest["method"]["calibration"]["tokens"].get<long long>(), r.gptq_seconds);
    else if (r.manifest["method"]["name"] == "plan")
      std::printf("method       per plan entry (GPTQ for its +gptq candidates), %lld calibration tokens, %.1f s\n",
                  r.manifest["method"]["calibration"]["tokens"].get<long long>(), r.gptq_seconds);
    else
      std::printf("method       rtn\n");
    if (squeeze)
      std::printf("params       bits %d, outlier %g%%, sensitive %g%%, fisher %s\n", opt.params.bits,
                  opt.format == "uniform" ? 0.0 : opt.params.outlier_pct,
                  opt.format == "squeezellm" && !opt.sensitivity.empty() ? opt.params.sensitive_pct : 0.0,
                  opt.format == "squeezellm" && !opt.sensitivity.empty() ? "yes" : "no");
    if (fgmp) {
      const auto& qc = r.manifest["quantization_config"];
      std::printf("fgmp         %lld of %lld blocks FP8 (%.4f), selection %s, clipping %s, fisher %s\n",
                  qc["fp8_blocks"].get<long long>(), qc["total_blocks"].get<long long>(),
                  qc["fp8_fraction"].get<double>(), fgmp_select.c_str(), fgmp_clip.c_str(),
                  opt.sensitivity.empty() ? "no" : "yes");
    }
    std::printf("quantized    %lld weights, %zu bytes, %.4f bpw\n", static_cast<long long>(r.quantized_params),
                r.quantized_bytes, r.quantized_bpw());
    std::printf("whole model  %lld params, %zu bytes, %.4f bpw\n", static_cast<long long>(r.total_params),
                r.total_bytes, r.model_bpw());
    if (planned) {
      std::map<std::string, int> counts;
      for (const auto& [m, e] : opt.plan) ++counts[e.candidate];
      for (const auto& [c, k] : counts) std::printf("  %-24s %d modules\n", c.c_str(), k);
    } else {
      std::printf("4096x4096    %.4f bpw (same format on one Llama-7B-sized layer)\n", r.bpw_4096x4096);
    }
    if (r.manifest["tensors"].contains("lm_head"))  // a --layers part without the last layer holds no head
      std::printf("lm_head      %s, %zu bytes, %.4f bpw\n", opt.lm_head.label.c_str(), r.lm_head_bytes,
                  r.manifest["tensors"]["lm_head"]["bpw"].get<double>());
    if (act)
      std::printf("activations  fgmp thresholds for %.2f NVFP4 blocks (%.4f on the calibration windows)\n",
                  opt.act.fp4_fraction, r.manifest["quantization_config"]["activation"]["measured_fp4_fraction"].get<double>());
    return 0;
  });
}
