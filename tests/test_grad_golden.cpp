// Golden check of the hand-derived backward pass on the real stories260K-hf model: loss and
// gradients of window 0 (the first 256 ids of the calibration text) against an independent
// float64 torch-autograd reference, tests/golden/stories260k_grads_window0.json (made by
// tests/golden/stories260k_grads.py; its docstring says how to regenerate it).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lib/model/llama_grad.h"
#include "lib/model/tokenizer.h"
#include "tests/test_util.h"

namespace mpq {
namespace {

namespace fs = std::filesystem;

// The golden file sits beside this source file (no CMake definition needed).
fs::path golden_path() {
  return fs::path(__FILE__).parent_path() / "golden" / "stories260k_grads_window0.json";
}

nlohmann::json load_golden() {
  std::ifstream in(golden_path());
  if (!in) throw std::runtime_error("cannot open " + golden_path().string());
  return nlohmann::json::parse(in);
}

struct GradTensor {
  const float* data;
  Eigen::Index n;
};

TEST(GradGolden, Stories260kWindow0MatchesTorchAutogradFloat64) {
  MPQ_REQUIRE_DATA();
  const fs::path data = test::data_dir();
  const std::string model_dir = (data / "models" / "stories260K-hf").string();
  const nlohmann::json golden = load_golden();

  // Tokens: [bos] + sentencepiece encode of the calibration text, first 256 ids.
  const Tokenizer tok = Tokenizer::load(model_dir);
  const std::vector<int32_t> all =
      tok.encode(read_text_file((data / "text" / "tinystories_valid_calib.txt").string()));
  const std::vector<int32_t> want = golden.at("tokens").get<std::vector<int32_t>>();
  ASSERT_EQ(want.size(), 256u);
  ASSERT_GE(all.size(), want.size());
  const std::vector<int32_t> tokens(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(want.size()));
  ASSERT_EQ(tokens, want) << "tokenization of the calibration text differs from the golden file";

  const LlamaModel m = LlamaModel::load(model_dir);
  LlamaParams<float> grad;
  const float loss = llama_loss_and_grad<float>(m.config(), to_params<float>(m.weights()), tokens.data(),
                                                static_cast<int64_t>(tokens.size()), &grad);
  const double golden_loss = golden.at("loss").get<double>();
  const double loss_rel = std::abs(static_cast<double>(loss) - golden_loss) / golden_loss;
  EXPECT_LT(loss_rel, 1e-5) << "loss " << loss << " vs golden " << golden_loss;

  std::map<std::string, GradTensor> ours;
  grad.for_each([&](const std::string& name, const float* d, Eigen::Index n) {
    EXPECT_TRUE(ours.emplace(name, GradTensor{d, n}).second) << "duplicate gradient tensor " << name;
  });
  const nlohmann::json& gt = golden.at("tensors");

  // Same set of tensors both ways.
  std::set<std::string> golden_names;
  for (auto it = gt.begin(); it != gt.end(); ++it) golden_names.insert(it.key());
  for (const auto& [name, t] : ours)
    EXPECT_TRUE(golden_names.count(name)) << "mpq gradient " << name << " missing from the golden file";
  for (const auto& name : golden_names)
    EXPECT_TRUE(ours.count(name)) << "golden tensor " << name << " has no mpq gradient";

  double worst_sample = 0, worst_l2 = 0;
  std::string worst_sample_name, worst_l2_name;
  for (const auto& name : golden_names) {
    const auto found = ours.find(name);
    if (found == ours.end()) continue;
    const GradTensor& g = found->second;
    const nlohmann::json& e = gt.at(name);
    Eigen::Index count = 1;
    for (const auto& s : e.at("shape")) count *= s.get<Eigen::Index>();
    ASSERT_EQ(g.n, count) << name;
    const double max_abs = e.at("max_abs").get<double>();
    const double l2 = e.at("l2").get<double>();
    ASSERT_GT(max_abs, 0.0) << name;
    const auto idx = e.at("indices").get<std::vector<int64_t>>();
    const auto val = e.at("values").get<std::vector<double>>();
    ASSERT_EQ(idx.size(), val.size()) << name;
    ASSERT_FALSE(idx.empty()) << name;

    double err = 0;
    for (std::size_t s = 0; s < idx.size(); ++s) {
      ASSERT_GE(idx[s], 0) << name;
      ASSERT_LT(idx[s], g.n) << name;
      err = std::max(err, std::abs(static_cast<double>(g.data[idx[s]]) - val[s]) / max_abs);
    }
    double ss = 0;
    for (Eigen::Index i = 0; i < g.n; ++i) ss += static_cast<double>(g.data[i]) * g.data[i];
    const double l2_rel = std::abs(std::sqrt(ss) - l2) / l2;
    EXPECT_LT(err, 1e-4) << name << ": sampled entries differ from the golden gradient";
    EXPECT_LT(l2_rel, 1e-4) << name << ": l2 norm " << std::sqrt(ss) << " vs golden " << l2;
    if (err > worst_sample) worst_sample = err, worst_sample_name = name;
    if (l2_rel > worst_l2) worst_l2 = l2_rel, worst_l2_name = name;
  }
  std::cout << "[ golden   ] loss " << loss << " vs " << golden_loss << " (rel " << loss_rel << ")\n"
            << "[ golden   ] worst sampled |ours - golden| / max_abs = " << worst_sample << " ("
            << worst_sample_name << ")\n"
            << "[ golden   ] worst l2 relative error = " << worst_l2 << " (" << worst_l2_name << ")\n";
}

}  // namespace
}  // namespace mpq
