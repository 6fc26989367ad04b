// Input amax calibration (see input_scales.h).
#include "lib/pack/input_scales.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "lib/common/error.h"
#include "lib/common/sha256.h"
#include "lib/model/llama.h"

namespace mpq {
namespace fs = std::filesystem;

namespace {

// Running max |x| of each linear's input, indexed layer * 7 + i (kLinearNames). NaN
// propagates (std::max would drop it), so a NaN activation is reported, not hidden.
class AmaxCollector final : public LinearInputObserver {
 public:
  explicit AmaxCollector(int64_t layers) : amax_(static_cast<std::size_t>(layers * 7), 0.0f) {}
  void on_linear_input(int64_t layer, int group, const MatRM<float>& x) override {
    float m = 0.0f;
    for (Eigen::Index k = 0; k < x.size(); ++k) {
      const float a = std::fabs(x.data()[k]);
      if (!(a <= m)) m = a;  // NaN wins
    }
    for (int i = 0; i < 7; ++i) {
      if (linear_input_group(i) != group) continue;
      float& slot = amax_[static_cast<std::size_t>(layer * 7 + i)];
      if (!(m <= slot)) slot = m;
    }
  }
  const std::vector<float>& amax() const { return amax_; }

 private:
  std::vector<float> amax_;
};

}  // namespace

InputAmax calibrate_input_amax(const std::string& model_dir, const CalibWindowOptions& opt) {
  LlamaModel model = LlamaModel::load(model_dir);
  const LlamaConfig c = model.config();
  const std::vector<int32_t> ids = read_calibration_ids(model_dir, opt.text, c.vocab_size);
  const LlamaParams<float> params = to_params(std::move(model.mutable_weights()));  // no copy
  std::vector<AmaxCollector> collectors(static_cast<std::size_t>(calibration_threads(params)),
                                        AmaxCollector(c.num_layers));
  std::vector<LinearInputObserver*> observers;
  for (AmaxCollector& col : collectors) observers.push_back(&col);
  observe_linear_inputs(c, params, ids, opt, observers);

  InputAmax res;
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (int i = 0; i < 7; ++i) {
      const std::size_t k = static_cast<std::size_t>(l * 7 + i);
      float m = 0.0f;
      for (const AmaxCollector& col : collectors)
        if (!(col.amax()[k] <= m)) m = col.amax()[k];
      const std::string module = "model.layers." + std::to_string(l) + "." + kLinearNames[i];
      if (!std::isfinite(m) || !(m > 0.0f))
        throw_input(opt.text, "calibration: the input of " + module + " has amax " + std::to_string(m) +
                                  " (expected finite and > 0): cannot derive a static input scale");
      res.amax[module] = m;
    }
  res.record = {{"method", "max"},
                {"calibration", {{"file", fs::path(opt.text).filename().string()},
                                 {"sha256", sha256_file(opt.text)},
                                 {"samples", opt.samples},
                                 {"seq_len", opt.seq_len},
                                 {"seed", opt.seed}}}};
  return res;
}

}  // namespace mpq
