// GPTQ end to end (issue [10/12]): the sequential calibration pass against an independent
// computation of its Hessians (the full model forward of lib/model/llama_grad with the
// already-quantized weights substituted), mpq-pack --method gptq (decodes to what the pass
// computed, beats RTN on the calibration loss, refuses bad flags), and mpq-search's final
// check (the plan is the lowest-KL entry; a single format that wins replaces it).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "calibration/gptq_calibration.h"
#include "calibration/windows.h"
#include "formats/hf_config.h"
#include "formats/packed_checkpoint.h"
#include "lib/model/llama.h"
#include "lib/model/llama_grad.h"
#include "lib/quant/gptq.h"
#include "lib/quant/gptq_grids.h"
#include "tests/test_util.h"

namespace mpq {
namespace {

namespace fs = std::filesystem;

// X^T X (float64) of one (layer, group) input, accumulated over forward passes.
class GramObserver final : public LinearInputObserver {
 public:
  GramObserver(int64_t layer, int group) : layer_(layer), group_(group) {}
  void on_linear_input(int64_t layer, int group, const MatRM<float>& x) override {
    if (layer != layer_ || group != group_) return;
    const MatRM<double> xd = x.cast<double>();
    if (g_.size() == 0) g_ = MatRM<double>::Zero(x.cols(), x.cols());
    g_ += xd.transpose() * xd;
    n_ += x.rows();
  }
  std::vector<double> hessian() const {
    std::vector<double> h(static_cast<std::size_t>(g_.size()));
    for (Eigen::Index i = 0; i < g_.size(); ++i) h[static_cast<std::size_t>(i)] = 2.0 * g_.data()[i] / static_cast<double>(n_);
    return h;
  }

 private:
  int64_t layer_;
  int group_;
  MatRM<double> g_;
  int64_t n_ = 0;
};

// int32 little-endian ids, the .i32 calibration input.
void write_ids(const std::string& path, const std::vector<int32_t>& ids) {
  std::vector<uint8_t> b(ids.size() * 4);
  std::memcpy(b.data(), ids.data(), b.size());
  test::write_bytes(path, b);
}

TEST(GptqPass, HessiansAreThoseOfTheModelWithEarlierLinearsQuantized) {
  const std::string m = test::scratch_dir("gptq-pass") + "/model";
  test::TinyLlamaSpec spec;
  spec.layers = 2;
  test::write_tiny_llama(m, spec);
  const LlamaConfig c = load_llama_config(m);
  const TensorStore store = TensorStore::open(m);
  const std::vector<int32_t> ids = test::random_tokens(4000, spec.vocab, 5);
  CalibWindowOptions w;
  w.samples = 6;
  w.seq_len = 40;
  w.seed = 3;

  // The pass with an int3 GPTQ grid; record every Hessian and every dequantized weight.
  const std::unique_ptr<Quantizer> q = make_quantizer(parse_format_label("int3-g16"));
  std::map<std::string, std::vector<double>> hs;
  std::map<std::string, std::vector<float>> deqs;
  LlamaParams<float> params = load_llama_params(c, store);
  GptqSequentialPass pass(c, store, ids, w, [&](const std::string& module, const std::vector<double>& h, std::vector<float>& deq) {
    hs[module] = h;
    const int64_t l = std::stoll(module.substr(std::string("model.layers.").size()));
    int i = 0;
    while (module.substr(module.rfind('.', module.rfind('.') - 1) + 1) != kLinearNames[static_cast<std::size_t>(i)]) ++i;
    const MatRM<float>& W = params.layers[static_cast<std::size_t>(l)].w[static_cast<std::size_t>(i)];
    GptqGridInput in{module, W.data(), nullptr, W.rows(), W.cols()};
    auto grid = make_gptq_grid(*q, in);
    deq = gptq_quantize(module, W.data(), W.rows(), W.cols(), h.data(), *grid, GptqOptions{});
    deqs[module] = deq;
    return std::optional<PackedTensor>(grid->encode());
  });
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (int i = 0; i < 7; ++i) ASSERT_TRUE(pass.take("model.layers." + std::to_string(l) + "." + kLinearNames[static_cast<std::size_t>(i)]));
  EXPECT_EQ(pass.tokens(), 6 * 40);

  // Independent: the whole-model forward over the same windows, with every linear that the
  // pass quantized before a group replaced by its dequantized weights.
  const std::vector<int64_t> starts = calibration_window_starts(static_cast<int64_t>(ids.size()), 6, 40, 3, false);
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (int group = 0; group < 4; ++group) {
      LlamaParams<float> p = params;
      for (int64_t l2 = 0; l2 <= l; ++l2)
        for (int i = 0; i < 7; ++i)
          if (l2 < l || linear_input_group(i) < group) {
            const std::string mod = "model.layers." + std::to_string(l2) + "." + kLinearNames[static_cast<std::size_t>(i)];
            MatRM<float>& W = p.layers[static_cast<std::size_t>(l2)].w[static_cast<std::size_t>(i)];
            W = Eigen::Map<const MatRM<float>>(deqs.at(mod).data(), W.rows(), W.cols());
          }
      GramObserver obs(l, group);
      for (int64_t s : starts) llama_loss_and_grad<float>(c, p, ids.data() + s, 40, nullptr, &obs);
      const std::vector<double> want = obs.hessian();
      for (int i = 0; i < 7; ++i) {
        if (linear_input_group(i) != group) continue;
        const std::vector<double>& got = hs.at("model.layers." + std::to_string(l) + "." + kLinearNames[static_cast<std::size_t>(i)]);
        ASSERT_EQ(got.size(), want.size());
        double scale = 0;
        for (double v : want) scale = std::max(scale, std::fabs(v));
        for (std::size_t k = 0; k < got.size(); ++k)
          ASSERT_NEAR(got[k], want[k], 1e-4 * scale) << "layer " << l << " group " << group << " entry " << k;
      }
    }
}

TEST(GptqPack, PacksWhatThePassComputedAndBeatsRtnOnTheCalibrationLoss) {
  const std::string dir = test::scratch_dir("gptq-pack");
  const std::string m = dir + "/model";
  test::TinyLlamaSpec spec;
  spec.layers = 2;
  spec.hidden = 64;
  spec.intermediate = 128;
  test::write_tiny_llama(m, spec);
  write_ids(dir + "/calib.i32", test::random_tokens(6000, spec.vocab, 9));
  const std::string pack = test::tool_path("mpq-pack") + " -q --model " + m + " --export mpq --format int3-g32 ";
  const std::string calib = " --calib " + dir + "/calib.i32 --calib-samples 16 --calib-seq-len 64";
  ASSERT_EQ(test::run_tool(pack + "--out " + dir + "/rtn").rc, 0);
  const test::ToolRun g = test::run_tool(pack + "--method gptq" + calib + " --out " + dir + "/gptq");
  ASSERT_EQ(g.rc, 0) << g.out;
  EXPECT_NE(g.out.find("method       gptq (damp 0.01, block 128)"), std::string::npos) << g.out;
  const nlohmann::json man = nlohmann::json::parse(std::ifstream(dir + "/gptq/mpq_manifest.json"));
  EXPECT_EQ(man["method"]["name"], "gptq");
  EXPECT_EQ(man["method"]["calibration"]["tokens"], 16 * 64);
  // The same layout and bytes as RTN; a lower loss on the calibration windows.
  const nlohmann::json rman = nlohmann::json::parse(std::ifstream(dir + "/rtn/mpq_manifest.json"));
  EXPECT_EQ(man["totals"]["quantized_bytes"], rman["totals"]["quantized_bytes"]);
  auto kl = [&](const std::string& d) {
    const test::ToolRun e = test::run_tool(test::tool_path("mpq-eval") + " -q --model " + d + " --tokens " + dir +
                                           "/calib.i32 --ctx 64 --max-tokens 1024 --base " + m + " --json " + d + ".json");
    EXPECT_EQ(e.rc, 0) << e.out;
    return nlohmann::json::parse(std::ifstream(d + ".json"))["mean_kl"].get<double>();
  };
  const double k_rtn = kl(dir + "/rtn"), k_gptq = kl(dir + "/gptq");
  EXPECT_LT(k_gptq, k_rtn) << "gptq KL " << k_gptq << " vs rtn " << k_rtn;
  // Label suffix = --method gptq: byte-identical shards.
  ASSERT_EQ(test::run_tool(test::tool_path("mpq-pack") + " -q --model " + m + " --export mpq --format int3-g32+gptq" +
                           calib + " --out " + dir + "/label").rc, 0);
  EXPECT_EQ(test::read_bytes(dir + "/label/model.safetensors"), test::read_bytes(dir + "/gptq/model.safetensors"));
  // Bad usage: exit 2, nothing written.
  for (const std::string& bad : {std::string("--method gptq --out ") + dir + "/x1",               // no --calib
                                 "--four-over-six --out " + dir + "/x2",                          // needs gptq
                                 "--gptq-damp 0.1 --out " + dir + "/x3",                          // needs gptq
                                 "--method gptq --gptq-damp -1" + calib + " --out " + dir + "/x4",  // out of range
                                 "--method rtn" + calib + " --out " + dir + "/x5"}) {
    const test::ToolRun r = test::run_tool(pack + bad);
    EXPECT_EQ(r.rc, 2) << bad << "\n" << r.out;
  }
  for (const char* x : {"x1", "x2", "x3", "x4", "x5"}) EXPECT_FALSE(fs::exists(dir + "/" + x)) << x;
}

TEST(GptqSearch, TheFinalCheckKeepsTheLowestKlAndASingleFormatThatWinsBecomesThePlan) {
  const std::string dir = test::scratch_dir("gptq-search");
  const std::string m = dir + "/model";
  test::TinyLlamaSpec spec;
  spec.layers = 2;
  spec.intermediate = 128;
  test::write_tiny_llama(m, spec);
  write_ids(dir + "/calib.i32", test::random_tokens(6000, spec.vocab, 11));
  const test::ToolRun s = test::run_tool(test::tool_path("mpq-sensitivity") + " -q --model " + m + " --calib " + dir +
                                         "/calib.i32 --samples 8 --seq-len 64 --kind fisher --out " + dir + "/sens.safetensors");
  ASSERT_EQ(s.rc, 0) << s.out;
  const std::string search = test::tool_path("mpq-search") + " -q --model " + m + " --sensitivity " + dir +
                             "/sens.safetensors --calib " + dir + "/calib.i32 --calib-samples 8 --calib-seq-len 64 "
                             "--check-tokens 1024 --target-bpw 4.6 --formats int3,int4,int4+gptq,nvfp4+gptq-4o6,int8 --out ";
  const test::ToolRun r = test::run_tool(search + dir + "/plan.json");
  ASSERT_EQ(r.rc, 0) << r.out;
  const nlohmann::json plan = nlohmann::json::parse(std::ifstream(dir + "/plan.json"));
  EXPECT_EQ(plan["cost"], "kfac");
  const nlohmann::json& check = plan["check"];
  ASSERT_TRUE(check.is_object());
  // Every single format within the budget was scored (int8 is not: 8+ bpw).
  std::vector<std::string> labels;
  double best = 1e300;
  std::string best_label;
  for (const auto& e : check["entries"]) {
    labels.push_back(e["label"]);
    EXPECT_LE(e["bpw"].get<double>(), 4.6 + 1e-9) << e;
    if (e["kl"].get<double>() < best) best = e["kl"], best_label = e["label"];
  }
  EXPECT_EQ(labels, (std::vector<std::string>{"plan", "int3", "int4", "int4+gptq", "nvfp4+gptq-4o6"}));
  EXPECT_EQ(check["winner"], best_label);
  if (best_label != "plan") {
    for (const auto& [module, t] : plan["tensors"].items()) EXPECT_EQ(t["candidate"], best_label) << module;
  }
  EXPECT_LE(plan["totals"]["bpw"].get<double>(), 4.6 + 1e-9);
  // The plan packs (its +gptq entries through the sequential pass) and mpq-eval runs it.
  const test::ToolRun p = test::run_tool(test::tool_path("mpq-pack") + " -q --model " + m + " --plan " + dir +
                                         "/plan.json --calib " + dir + "/calib.i32 --calib-samples 8 --calib-seq-len 64 --out " +
                                         dir + "/packed");
  ASSERT_EQ(p.rc, 0) << p.out;
  // Without --calib, a +gptq candidate is a usage error; --check-tokens needs --calib.
  EXPECT_EQ(test::run_tool(test::tool_path("mpq-search") + " -q --model " + m + " --sensitivity " + dir +
                           "/sens.safetensors --target-bpw 4.6 --formats int4+gptq --out " + dir + "/p2.json").rc, 2);
  EXPECT_EQ(test::run_tool(test::tool_path("mpq-search") + " -q --model " + m + " --sensitivity " + dir +
                           "/sens.safetensors --target-bpw 4.6 --check-tokens 10 --out " + dir + "/p3.json").rc, 2);
}

}  // namespace
}  // namespace mpq
