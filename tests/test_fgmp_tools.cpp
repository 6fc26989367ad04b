// mpq-pack --format fgmp end to end on tiny random models (and on stories260K-hf when the real
// data is there): the folder's tensors and quantization_config, bytes on disk against the
// manifest and the documented formula, the global FP8 fraction and --target-bpw, the
// ablation flags, pack -> load -> eval, and hostile fgmp checkpoints (exit 3, one error line
// naming the file and the tensor).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "lib/model/llama.h"
#include "lib/quant/fgmp.h"
#include "tests/test_util.h"

namespace mpq {
namespace {
namespace fs = std::filesystem;

using test::error_lines;
using test::ToolRun;
const auto tool = &test::tool_path;
const auto run = &test::run_tool;


nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

// Tiny model with a 40-wide down_proj (a partial block), and a random positive Fisher file.
struct Tiny {
  std::string model, sens;
  std::vector<std::string> modules;
};

Tiny tiny(const std::string& tag) {
  Tiny t;
  t.model = test::scratch_dir(tag);
  test::TinyLlamaSpec s;
  s.intermediate = 40;
  test::write_tiny_llama(t.model, s);
  const LlamaModel m = LlamaModel::load(t.model);
  SafetensorsWriter w;
  std::mt19937 g(5);
  std::exponential_distribution<float> e(1.0f);
  for (int l = 0; l < 2; ++l)
    for (int i = 0; i < 7; ++i) {
      const std::string mod = "model.layers." + std::to_string(l) + "." + kLinearNames[static_cast<std::size_t>(i)];
      t.modules.push_back(mod);
      const auto [r, c] = linear_shape(m.config(), i);
      std::vector<float> f(static_cast<std::size_t>(r * c));
      for (float& x : f) x = e(g) * e(g);
      w.add_f32(mod + ".fisher", {r, c}, f);
    }
  t.sens = t.model + "/sens.safetensors";
  w.write(t.sens);
  return t;
}

int64_t total_blocks(const Tiny& t) {
  const LlamaModel m = LlamaModel::load(t.model);
  int64_t n = 0;
  for (int i = 0; i < 7; ++i) {
    const auto [r, c] = linear_shape(m.config(), i);
    n += 2 * r * ((c + 15) / 16);
  }
  return n;
}

TEST(FgmpPack, FolderConfigAndBytes) {
  const Tiny t = tiny("fgmp-src");
  const std::string out = test::scratch_dir("fgmp-out") + "/p";
  const ToolRun r = run(tool("mpq-pack") + " --model " + t.model + " --format fgmp --sensitivity " + t.sens +
                    " --fp8-fraction 0.3 --out " + out + " -q");
  ASSERT_EQ(r.rc, 0) << r.out;
  const auto qc = read_json(out + "/config.json")["quantization_config"];
  const int64_t nb = total_blocks(t);
  EXPECT_EQ(qc["quant_method"], "mpq");  // mpq-native: engines refuse it by name
  EXPECT_EQ(qc["format"], "fgmp");
  EXPECT_EQ(qc["block_size"], 16);
  EXPECT_EQ(qc["selection"], "fisher");
  EXPECT_EQ(qc["clipping"], "weighted");
  EXPECT_EQ(qc["fisher_weighted"], true);
  EXPECT_EQ(qc["total_blocks"], nb);
  EXPECT_EQ(qc["fp8_blocks"], std::llround(0.3 * static_cast<double>(nb)));
  EXPECT_DOUBLE_EQ(qc["fp8_fraction"].get<double>(), qc["fp8_blocks"].get<double>() / static_cast<double>(nb));
  EXPECT_EQ(qc["clip_grid"]["min"], 0.7);
  EXPECT_EQ(qc["exclude_modules"], nlohmann::json({"lm_head"}));
  EXPECT_FALSE(fs::exists(out + "/hf_quant_config.json"));

  // Each module's bytes on disk = the manifest's = the documented formula at its N8.
  const TensorStore st = TensorStore::open(out);
  const auto man = read_json(out + "/mpq_manifest.json");
  std::size_t sum = 0;
  int64_t n8_sum = 0;
  for (const std::string& mod : t.modules) {
    std::size_t disk = 0;
    for (const std::string& n : st.names())
      if (n.rfind(mod + ".", 0) == 0) disk += st.get(n).nbytes;
    const auto& rec = man["tensors"][mod];
    EXPECT_EQ(rec["format"], "fgmp");
    EXPECT_EQ(rec["bytes"].get<std::size_t>(), disk) << mod;
    const int64_t rows = rec["shape"][0], cols = rec["shape"][1], nbr = (cols + 15) / 16;
    const int64_t n8 = st.get(mod + ".weight_fp8").shape[0];
    EXPECT_EQ(rec["fp8_blocks"], n8);
    EXPECT_EQ(disk, static_cast<std::size_t>(rows * ((nbr + 7) / 8) + 4 * (rows + 1) + 9 * (rows * nbr - n8) + 16 * n8 + 8));
    sum += disk;
    n8_sum += n8;
  }
  EXPECT_EQ(n8_sum, qc["fp8_blocks"].get<int64_t>());
  EXPECT_EQ(man["totals"]["quantized_bytes"].get<std::size_t>(), sum);
  EXPECT_EQ(st.get("model.layers.0.mlp.down_proj.weight_block_map").shape, (std::vector<int64_t>{64, 1}));
  EXPECT_EQ(st.get("model.layers.0.mlp.down_proj.weight_fp8_row_offset").dtype, DType::I32);
  // bpw_4096x4096 at the achieved fraction.
  const double f = qc["fp8_fraction"];
  const double n8_4k = static_cast<double>(std::llround(f * 4096 * 256));
  EXPECT_NEAR(man["totals"]["bpw_4096x4096"].get<double>(),
              (4096.0 * 32 + 4 * 4097 + 9 * (4096.0 * 256 - n8_4k) + 16 * n8_4k + 8) * 8 / (4096.0 * 4096.0), 1e-12);
}

// The loaded model holds the global selection's decode, and mpq-eval agrees with an
// in-process forward of it.
TEST(FgmpPack, LoadedWeightsEqualGlobalSelectionAndEvalAgrees) {
  const Tiny t = tiny("fgmp-rt");
  const std::string out = test::scratch_dir("fgmp-rt-out") + "/p";
  ASSERT_EQ(run(tool("mpq-pack") + " --model " + t.model + " --format fgmp --sensitivity " + t.sens + " --out " + out +
                " -q --exclude 'layers\\.1\\.self_attn\\.v_proj'").rc, 0);
  LlamaModel fake = LlamaModel::load(t.model);
  LoadOptions expand;
  expand.expand_packed = true;  // decoded fp32 w, to compare with the encoder's decode
  const LlamaModel packed = LlamaModel::load(out, expand);
  const TensorStore sens = TensorStore::open(t.sens);
  const FgmpQuantizer q;  // defaults: 30%, fisher, weighted
  std::vector<FgmpTensorScores> scores;
  std::vector<std::vector<float>> fishers;
  for (std::size_t l = 0; l < 2; ++l)
    for (std::size_t i = 0; i < 7; ++i) {
      if (l == 1 && i == 2) continue;
      const Linear& lin = fake.weights().layers[l].linear[i];
      const std::string mod = "model.layers." + std::to_string(l) + "." + kLinearNames[i];
      fishers.push_back(to_f32(sens.get(mod + ".fisher")));
      scores.push_back({mod, lin.rows, lin.cols, q.block_scores(mod, lin.w.data(), fishers.back().data(), lin.rows, lin.cols)});
    }
  const FgmpSelection sel = fgmp_select_global(scores, 0.3, 0.0);
  std::size_t k = 0;
  for (std::size_t l = 0; l < 2; ++l)
    for (std::size_t i = 0; i < 7; ++i) {
      Linear& lin = fake.mutable_weights().layers[l].linear[i];
      const Linear& got = packed.weights().layers[l].linear[i];
      if (l == 1 && i == 2) {
        EXPECT_EQ(got.format, "f32");
        continue;
      }
      EXPECT_EQ(got.format, "fgmp");
      const PackedTensor p = q.encode_count(scores[k].name, lin.w.data(), fishers[k].data(), lin.rows, lin.cols,
                                            sel.fp8_blocks.at(scores[k].name));
      ++k;
      q.decode(p, lin.w.data());
      EXPECT_EQ((got.w - lin.w).cwiseAbs().maxCoeff(), 0.0f);
    }
  std::vector<int32_t> tok(96);
  for (int i = 0; i < 96; ++i) tok[static_cast<std::size_t>(i)] = (i * 37 + 11) % 128;
  const std::string ids = test::scratch_dir("fgmp-rt-ids") + "/ids.i32";
  std::vector<uint8_t> b(tok.size() * 4);
  std::memcpy(b.data(), tok.data(), b.size());
  test::write_bytes(ids, b);
  const std::string js = test::scratch_dir("fgmp-rt-json") + "/e.json";
  // --kernels exact: fp32 products, the fp32 reference computed below.
  const ToolRun e = run(tool("mpq-eval") + " --model " + out + " --tokens " + ids + " --ctx 32 -q --kernels exact --json " + js);
  ASSERT_EQ(e.rc, 0) << e.out;
  double nll = 0;
  for (int w = 0; w < 3; ++w) {
    const MatrixRM lg = fake.forward(tok.data() + w * 32, 32);
    for (int i = 0; i < 31; ++i) {
      const double mx = lg.row(i).maxCoeff();
      nll += mx + std::log((lg.row(i).array().cast<double>() - mx).exp().sum()) -
             lg(i, tok[static_cast<std::size_t>(w * 32 + i + 1)]);
    }
  }
  EXPECT_NEAR(read_json(js)["mean_nll"].get<double>(), nll / 93.0, 1e-5);
}

TEST(FgmpPack, TargetBpwAndUsageErrors) {
  const Tiny t = tiny("fgmp-bpw");
  const std::string dir = test::scratch_dir("fgmp-bpw-out");
  const std::string base = tool("mpq-pack") + " --model " + t.model + " --format fgmp --sensitivity " + t.sens + " -q";
  for (double target : {5.5, 6.25}) {  // 0% FP8 is 5.32 bpw on these tiny shapes
    const std::string out = dir + "/t" + std::to_string(static_cast<int>(target * 100));
    const ToolRun r = run(base + " --target-bpw " + std::to_string(target) + " --out " + out);
    ASSERT_EQ(r.rc, 0) << r.out;
    const auto man = read_json(out + "/mpq_manifest.json");
    const double params = man["totals"]["quantized_params"];
    const double bytes = man["totals"]["quantized_bytes"];
    EXPECT_LE(8.0 * bytes / params, target);
    EXPECT_GT(8.0 * (bytes + 7) / params, target);  // one more FP8 block: +16 - 9 bytes
    EXPECT_EQ(man["quantization_config"]["target_bpw"], target);
  }
  const ToolRun low = run(base + " --target-bpw 4.0 --out " + dir + "/low");
  EXPECT_EQ(low.rc, 2) << low.out;
  EXPECT_NE(low.out.find("target-bpw"), std::string::npos) << low.out;
  EXPECT_FALSE(fs::exists(dir + "/low"));
  EXPECT_EQ(run(base + " --target-bpw 5 --fp8-fraction 0.2 --out " + dir + "/x").rc, 2);
  EXPECT_EQ(run(base + " --fp8-fraction 1.5 --out " + dir + "/x").rc, 2);
  EXPECT_EQ(run(base + " --fgmp-select best --out " + dir + "/x").rc, 2);
  EXPECT_EQ(run(tool("mpq-pack") + " --model " + t.model + " --format nvfp4 --fp8-fraction 0.2 -q --out " + dir + "/x").rc, 2);
}

TEST(FgmpPack, AblationsSelectTheGlobalCount) {
  const Tiny t = tiny("fgmp-abl");
  const int64_t nb = total_blocks(t);
  for (const std::string flags : {"--fgmp-select random --seed 3", "--fgmp-select amax --fgmp-clip none",
                                  "--fgmp-clip unweighted --fp8-fraction 0.5"}) {
    const std::string out = test::scratch_dir("fgmp-abl-out") + "/p";
    const ToolRun r = run(tool("mpq-pack") + " --model " + t.model + " --format fgmp --sensitivity " + t.sens + " " +
                      flags + " --out " + out + " -q");
    ASSERT_EQ(r.rc, 0) << flags << r.out;
    const auto qc = read_json(out + "/config.json")["quantization_config"];
    const double frac = flags.find("0.5") != std::string::npos ? 0.5 : 0.3;
    EXPECT_EQ(qc["fp8_blocks"], std::llround(frac * static_cast<double>(nb))) << flags;
    const TensorStore st = TensorStore::open(out);
    int64_t n8 = 0;
    for (const std::string& m : t.modules) n8 += st.get(m + ".weight_fp8").shape[0];
    EXPECT_EQ(n8, qc["fp8_blocks"].get<int64_t>()) << flags;
  }
}

// Rewrites one tensor of a packed folder (bytes and shape) through the safetensors writer.
void tamper(const std::string& dir, const std::string& name,
            const std::function<void(std::vector<int64_t>&, std::vector<uint8_t>&)>& f) {
  const std::string p = dir + "/model.safetensors";
  SafetensorsWriter w;
  {
    const TensorStore st = TensorStore::open(p);
    for (const auto& [k, v] : st.files()[0]->metadata()) w.set_metadata(k, v);
    for (const auto& n : st.names()) {
      const TensorView& t = st.get(n);
      std::vector<int64_t> shape = t.shape;
      std::vector<uint8_t> bytes(t.data, t.data + t.nbytes);
      if (n == name) f(shape, bytes);
      w.add(n, t.dtype, shape, bytes);
    }
  }
  w.write(p + ".new");
  fs::rename(p + ".new", p);
}

TEST(FgmpPack, HostileCheckpointsAreInputErrors) {
  const Tiny t = tiny("fgmp-bad");
  const std::string good = test::scratch_dir("fgmp-bad-out") + "/p";
  ASSERT_EQ(run(tool("mpq-pack") + " --model " + t.model + " --format fgmp --sensitivity " + t.sens + " --out " + good + " -q").rc, 0);
  const std::string ids = test::scratch_dir("fgmp-bad-ids") + "/ids.i32";
  test::write_bytes(ids, std::vector<uint8_t>(4 * 64, 1));
  const std::string m = "model.layers.1.mlp.up_proj";
  struct Case {
    std::string tensor;
    std::function<void(std::vector<int64_t>&, std::vector<uint8_t>&)> f;
  };
  const std::vector<Case> cases = {
      {m + ".weight_fp8_row_offset", [](auto&, auto& b) { b[0] = 1; }},                    // offset[0] != 0
      {m + ".weight_fp8_row_offset", [](auto&, auto& b) { b[4 * 3] = 0xFF, b[4 * 3 + 3] = 0xFF; }},  // decreasing
      {m + ".weight_block_map", [](auto&, auto& b) { b[0] ^= 1; }},                         // map vs offsets
      {m + ".weight_fp4", [](auto& s, auto& b) { s[0] -= 1, b.resize(b.size() - 8); }},    // truncated stream
      {m + ".weight_fp8", [](auto& s, auto& b) { s[0] -= 1, b.resize(b.size() - 16); }},   // N4 != R*NB - N8
      {m + ".weight_fp8_scale", [](auto&, auto& b) { b[3] = 0x7F, b[2] = 0xC0; }},          // NaN scale
      {m + ".weight_fp8", [](auto&, auto& b) { b[5] = 0x7F; }},                              // NaN FP8 code
      {m + ".weight_fp4_scale", [](auto&, auto& b) { b[0] = 0xFF; }},                        // NaN block scale
  };
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const std::string dir = test::scratch_dir("fgmp-bad-" + std::to_string(i)) + "/p";
    fs::copy(good, dir);
    tamper(dir, cases[i].tensor, cases[i].f);
    const ToolRun r = run(tool("mpq-eval") + " --model " + dir + " --tokens " + ids + " --ctx 32 -q");
    EXPECT_EQ(r.rc, 3) << i << ": " << r.out;
    const auto lines = error_lines(r.out);
    ASSERT_EQ(lines.size(), 1u) << i << ": " << r.out;
    EXPECT_NE(lines[0].find("model.safetensors"), std::string::npos) << lines[0];
    EXPECT_NE(lines[0].find(m + ".weight_"), std::string::npos) << lines[0];
  }
}

// stories260K-hf: fgmp at 30% FP8 (no sensitivity file) evaluates, and lands between fp32
// and nvfp4 in perplexity on the first 4096 eval tokens.
TEST(FgmpPack, Stories260K) {
  MPQ_REQUIRE_DATA();
  const std::string data = test::data_dir();
  const std::string model = data + "/models/stories260K-hf";
  const std::string text = data + "/text/tinystories_valid_eval.txt";
  const std::string dir = test::scratch_dir("fgmp-stories");
  auto ppl = [&](const std::string& m) {
    const std::string js = dir + "/e.json";
    const ToolRun e = run(tool("mpq-eval") + " --model " + m + " --text " + text + " --ctx 512 --max-tokens 4096 -q --json " + js);
    EXPECT_EQ(e.rc, 0) << e.out;
    return read_json(js)["ppl"].get<double>();
  };
  for (const char* f : {"fgmp", "nvfp4"}) {
    const ToolRun r = run(tool("mpq-pack") + " --model " + model + " --format " + f + " --out " + dir + "/" + f + " -q");
    ASSERT_EQ(r.rc, 0) << r.out;
  }
  const double p32 = ppl(model), p4 = ppl(dir + "/nvfp4"), pg = ppl(dir + "/fgmp");
  EXPECT_GT(pg, p32 * 0.99);
  EXPECT_LT(pg, p4);
}

}  // namespace
}  // namespace mpq
