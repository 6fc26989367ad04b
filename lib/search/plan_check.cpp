// The plan check (see plan_check.h).
#include "lib/search/plan_check.h"

#include <filesystem>

#include "lib/common/error.h"
#include "lib/eval/perplexity.h"
#include "lib/model/llama.h"
#include "lib/pack/pack_model.h"

namespace mpq {
namespace fs = std::filesystem;

std::vector<PlanCheckEntry> check_plan(const std::string& model_dir, const std::string& plan_path,
                                       const std::vector<std::string>& singles, const PlanCheckOptions& opt,
                                       const SearchProgress& progress) {
  std::error_code ec;
  fs::create_directories(opt.work_dir, ec);
  if (ec) throw_output(opt.work_dir, "cannot create: " + ec.message());
  const LlamaModel base = LlamaModel::load(model_dir);
  const std::vector<int32_t> ids = read_calibration_ids(model_dir, opt.calib.text, base.config().vocab_size);
  PerplexityOptions po;
  po.ctx = opt.ctx;
  po.max_tokens = opt.tokens;
  po.base = &base;

  std::vector<PlanCheckEntry> out;
  const std::size_t total = singles.size() + 1;
  auto score = [&](const std::string& label, PackOptions pack) {
    const std::string dir = (fs::path(opt.work_dir) / ("check-" + std::to_string(out.size()))).string();
    pack.export_kind = ExportKind::kMpq;  // every candidate as mpq-native: the same runtime path for all
    pack.force = true;
    pack.calib = opt.calib;
    const PackReport r = pack_model(model_dir, dir, pack);
    const LlamaModel m = LlamaModel::load(dir);
    const PerplexityResult e = evaluate_perplexity(m, ids, po);
    PlanCheckEntry entry;
    entry.label = label;
    entry.bytes = static_cast<double>(r.quantized_bytes);
    entry.bpw = r.quantized_bpw();
    entry.kl = e.mean_kl.value_or(0.0);
    entry.ppl = e.ppl;
    out.push_back(entry);
    fs::remove_all(dir, ec);
    if (progress) progress(out.size(), total, label);
  };

  PackOptions plan;
  std::string plan_sens, plan_sha, plan_export;
  plan.plan = read_plan(plan_path, &plan_sens, &plan_sha, &plan_export);
  plan.plan_file = plan_path;
  plan.format = "plan";
  plan.sensitivity = opt.sensitivity.empty() ? plan_sens : opt.sensitivity;
  score("plan", plan);

  for (const std::string& label : singles) {
    const FormatSpec spec = parse_format_label(label);
    if (spec.is_source()) continue;
    PackOptions p;
    p.format = spec.format;
    p.params = spec.params;
    p.fgmp.fp8_fraction = spec.fgmp.fp8_fraction;
    p.method = spec.gptq ? PackMethod::kGptq : PackMethod::kRtn;
    p.four_over_six = spec.four_over_six;
    const bool fitted = spec.info->layout == FormatId::kSqueezeLLM || spec.info->layout == FormatId::kFgmp;
    if (fitted && spec.format != "uniform") p.sensitivity = opt.sensitivity;
    score(label, p);
  }
  return out;
}

}  // namespace mpq
