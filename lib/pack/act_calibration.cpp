// FGMP activation-threshold calibration; the method is described in act_calibration.h.
#include "lib/pack/act_calibration.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>

#include "calibration/linear_inputs.h"
#include "formats/safetensors.h"
#include "lib/common/error.h"
#include "lib/common/sha256.h"
#include "lib/common/shape.h"
#include "lib/model/llama.h"
#include "lib/model/llama_grad.h"
#include "lib/model/tokenizer.h"
#include "lib/quant/act_quant.h"

namespace mpq {
namespace fs = std::filesystem;

namespace {

std::string module_name(int64_t layer, int i) { return "model.layers." + std::to_string(layer) + "." + kLinearNames[i]; }

// Appends the FGMP block scores of every linear input to scores[layer * 7 + i], computed
// with module i's act_fisher.
class ScoreCollector final : public LinearInputObserver {
 public:
  explicit ScoreCollector(const std::vector<const float*>& act_fisher) : act_fisher_(act_fisher), scores_(act_fisher.size()) {}
  void on_linear_input(int64_t layer, int group, const MatRM<float>& x) override {
    const int64_t nb = (x.cols() + kActBlockSize - 1) / kActBlockSize;
    for (int i = 0; i < 7; ++i) {
      if (linear_input_group(i) != group) continue;
      const std::size_t k = static_cast<std::size_t>(layer * 7 + i);
      std::vector<float>& s = scores_[k];
      const std::size_t off = s.size();
      s.resize(off + static_cast<std::size_t>(x.rows() * nb));
      fgmp_block_scores(x.data(), x.rows(), x.cols(), act_fisher_[k], s.data() + off);
    }
  }
  std::vector<std::vector<float>>& scores() { return scores_; }

 private:
  std::vector<const float*> act_fisher_;
  std::vector<std::vector<float>> scores_;
};

}  // namespace

float fgmp_threshold_for_fraction(std::vector<float> scores, double fp4_fraction) {
  const std::size_t n = scores.size();
  const auto k = static_cast<std::size_t>(std::llround(fp4_fraction * static_cast<double>(n)));
  if (k >= n) return std::numeric_limits<float>::infinity();
  if (k == 0) return -std::numeric_limits<float>::infinity();
  std::nth_element(scores.begin(), scores.begin() + static_cast<std::ptrdiff_t>(k - 1), scores.end());
  return scores[k - 1];
}

ActCalibration calibrate_act_thresholds(const std::string& model_dir, const ActCalibOptions& opt) {
  if (!(opt.fp4_fraction >= 0.0 && opt.fp4_fraction <= 1.0))
    throw Error(ExitCode::kUsage, "--act-fp4-fraction " + std::to_string(opt.fp4_fraction) + " outside [0, 1]");
  if (opt.sensitivity.empty())
    throw Error(ExitCode::kUsage, "--act-calib needs --sensitivity: a file from mpq-sensitivity --kind act-fisher");
  LlamaModel model = LlamaModel::load(model_dir);
  const LlamaConfig c = model.config();

  // act_fisher of every module, checked before any forward pass.
  const TensorStore sens = TensorStore::open(opt.sensitivity);
  ActCalibration res;
  std::vector<const float*> fisher_ptr;
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (int i = 0; i < 7; ++i) {
      const std::string m = module_name(l, i), fname = m + ".act_fisher";
      const int64_t cols = linear_shape(c, i)[1];
      if (!sens.has(fname))
        throw_input(opt.sensitivity, "tensor '" + fname + "' missing (--act-calib needs it; compute it with "
                                     "mpq-sensitivity --kind act-fisher)");
      const TensorView& f = sens.get(fname);
      if (f.dtype != DType::F32 || f.shape != std::vector<int64_t>{cols})
        throw_input(f.file, "tensor '" + fname + "': " + dtype_name(f.dtype) + " " + shape_str(f.shape) +
                                ", expected F32 " + shape_str({cols}));
      ActModuleCalibration& mc = res.modules[m];
      mc.act_fisher = to_f32(f);
      for (std::size_t j = 0; j < mc.act_fisher.size(); ++j)
        if (!std::isfinite(mc.act_fisher[j]) || mc.act_fisher[j] < 0.0f)
          throw_input(f.file, "tensor '" + fname + "': value " + std::to_string(mc.act_fisher[j]) + " at [" +
                                  std::to_string(j) + "], expected finite and >= 0");
      fisher_ptr.push_back(mc.act_fisher.data());
    }

  // Calibration windows, ids checked against the vocabulary up front; forward passes of the
  // original model, one window per thread for small models.
  const std::vector<int32_t> ids = read_calibration_ids(model_dir, opt.text, c.vocab_size);
  const LlamaParams<float> params = to_params(std::move(model.mutable_weights()));  // no copy
  std::vector<ScoreCollector> collectors(static_cast<std::size_t>(calibration_threads(params)),
                                         ScoreCollector(fisher_ptr));
  std::vector<LinearInputObserver*> observers;
  for (ScoreCollector& col : collectors) observers.push_back(&col);
  observe_linear_inputs(c, params, ids, {opt.text, opt.samples, opt.seq_len, opt.seed}, observers);

  // Per-module quantile.
  int64_t blocks = 0, fp4 = 0;
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (int i = 0; i < 7; ++i) {
      const std::size_t k = static_cast<std::size_t>(l * 7 + i);
      std::vector<float> all;
      for (ScoreCollector& col : collectors) {
        all.insert(all.end(), col.scores()[k].begin(), col.scores()[k].end());
        std::vector<float>().swap(col.scores()[k]);
      }
      ActModuleCalibration& mc = res.modules[module_name(l, i)];
      mc.threshold = fgmp_threshold_for_fraction(all, opt.fp4_fraction);
      mc.blocks = static_cast<int64_t>(all.size());
      mc.fp4_blocks = std::count_if(all.begin(), all.end(), [&](float s) { return !(s > mc.threshold); });
      blocks += mc.blocks;
      fp4 += mc.fp4_blocks;
    }

  res.record = {{"method", "fgmp"},
                {"block_size", kActBlockSize},
                {"fp4_fraction", opt.fp4_fraction},
                {"measured_fp4_fraction", blocks ? static_cast<double>(fp4) / static_cast<double>(blocks) : 0.0},
                {"scales", "dynamic per token"},
                {"calibration", {{"file", fs::path(opt.text).filename().string()},
                                 {"sha256", sha256_file(opt.text)},
                                 {"samples", opt.samples},
                                 {"seq_len", opt.seq_len},
                                 {"seed", opt.seed}}},
                {"sensitivity", {{"file", fs::path(opt.sensitivity).filename().string()},
                                 {"sha256", sha256_file(opt.sensitivity)}}}};
  return res;
}

}  // namespace mpq
