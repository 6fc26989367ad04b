// Engine-export conformance: every export mpq-pack writes, read by an independent reader written
// from vLLM's / ModelOpt's / compressed-tensors' loading rules (tests/interop/engine_reader.py,
// python3 + numpy, no mpq code), must make mpq-eval compute the same thing on the reader's dense
// weights as on the packed folder (perplexity within 1e-4 relative, KL < 1e-6 weights-only;
// with the declared activation scheme the perplexities too), and the reader must refuse or
// misload what the engines refuse or misload (mpq-native folders, missing input scales, per-
// module global scales of fused shards, exclude_modules in config.json).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <cstring>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "tests/test_util.h"

namespace mpq {
namespace {

namespace fs = std::filesystem;
using test::run_tool;
using test::tool_path;
using test::ToolRun;

// A python3 with numpy ($MPQ_PYTHON, Debian's /usr/bin/python3, then python3 on PATH); "" if none.
std::string python_with_numpy() {
  std::vector<std::string> cands;
  if (const char* e = std::getenv("MPQ_PYTHON")) cands.push_back(e);
  cands.push_back("/usr/bin/python3");
  cands.push_back("python3");
  for (const std::string& p : cands)
    if (test::run_command(p + " -c 'import numpy' 2>/dev/null") == 0) return p;
  return "";
}

#define MPQ_REQUIRE_NUMPY()                                                                           \
  do {                                                                                                \
    if (python_with_numpy().empty())                                                                  \
      GTEST_SKIP() << "no python3 with numpy (Debian: apt-get install python3-numpy, or set MPQ_PYTHON)"; \
  } while (0)

// The reader script: $MPQ_SOURCE_DIR (a checkout moved elsewhere) or the source tree built from.
std::string reader() {
  const char* e = std::getenv("MPQ_SOURCE_DIR");
  return std::string(e ? e : MPQ_SOURCE_DIR) + "/tests/interop/engine_reader.py";
}

ToolRun read_export(const std::string& packed, const std::string& dense) {
  return run_tool(python_with_numpy() + " " + reader() + " " + packed + " " + dense);
}

// --kernels exact: fp32 products on both sides (the fast CPU kernels round activations and
// the packed and the dense folder take different kernels).
nlohmann::json eval_json(const std::string& model, const std::string& input, const std::string& extra,
                         const std::string& json) {
  const ToolRun r = run_tool(tool_path("mpq-eval") + " --model " + model + " " + input + " -q --kernels exact --json " +
                             json + " " + extra);
  EXPECT_EQ(r.rc, 0) << r.out;
  std::ifstream f(json);
  return f ? nlohmann::json::parse(f) : nlohmann::json::object();
}

struct Export {
  std::string name;
  std::string args;
  bool act;  ///< declares activation quantization
};

std::vector<Export> exports(std::string calib, bool gptq) {
  calib += " --calib-samples 8";
  std::vector<Export> out = {
      {"modelopt-nvfp4", "--format nvfp4 --export modelopt", false},
      {"ct-nvfp4", "--format nvfp4 --export compressed-tensors", false},
      {"ct-fp8", "--format fp8 --export compressed-tensors", false},
      {"modelopt-fp8-dynamic", "--format fp8 --export modelopt --activations dynamic", true},
      {"ct-fp8-dynamic", "--format fp8 --export compressed-tensors --activations dynamic", true},
      {"modelopt-nvfp4-static", "--format nvfp4 --export modelopt --activations static --calib " + calib, true},
      {"ct-nvfp4-static", "--format nvfp4 --export compressed-tensors --activations static --calib " + calib, true},
      {"modelopt-fp8-static", "--format fp8 --export modelopt --activations static --calib " + calib, true},
      {"ct-fp8-static", "--format fp8 --export compressed-tensors --activations static --calib " + calib, true},
  };
  // GPTQ changes the codes, never the contract: Four Over Six's global scale and the shared
  // fused-layer scale read back the same under the engines' rules (tiny model only: the
  // sequential pass on stories260K is minutes under the sanitizers).
  if (gptq) {
    out.push_back({"modelopt-nvfp4-gptq-4o6", "--format nvfp4+gptq-4o6 --export modelopt --calib " + calib, false});
    out.push_back({"ct-fp8-gptq", "--format fp8+gptq --export compressed-tensors --calib " + calib, false});
  }
  return out;
}

// Packs `model` with every export, reads each with the independent reader and compares
// mpq-eval of the two folders on `input` (mpq-eval's --text/--tokens flags).
void check_exports(const std::string& model, const std::string& input, const std::string& calib,
                   const std::string& tag, bool gptq) {
  const std::string dir = test::scratch_dir(tag);
  for (const Export& e : exports(calib, gptq)) {
    SCOPED_TRACE(e.name);
    const std::string packed = dir + "/" + e.name, dense = dir + "/" + e.name + "-dense";
    const ToolRun p = run_tool(tool_path("mpq-pack") + " --model " + model + " " + e.args + " --out " + packed + " -q");
    ASSERT_EQ(p.rc, 0) << p.out;
    const ToolRun r = read_export(packed, dense);
    ASSERT_EQ(r.rc, 0) << r.out;
    // Weights only: the same model, logit for logit.
    const auto a = eval_json(packed, input, "--act none", dir + "/a.json");
    const auto b = eval_json(dense, input, "--act none --base " + packed, dir + "/b.json");
    EXPECT_NEAR(b["ppl"].get<double>() / a["ppl"].get<double>(), 1.0, 1e-4);
    EXPECT_LT(b["mean_kl"].get<double>(), 1e-6);
    // With the activation scheme each folder declares (the reader re-declares it with the input
    // scales in ModelOpt's meaning): the same perplexity again.
    const auto c = eval_json(packed, input, "--act auto", dir + "/c.json");
    const auto d = eval_json(dense, input, "--act auto", dir + "/d.json");
    EXPECT_NEAR(d["ppl"].get<double>() / c["ppl"].get<double>(), 1.0, 1e-4);
    EXPECT_EQ(c["act_declared"] != "none", e.act) << c["act_declared"];
    EXPECT_EQ(d["act_declared"], c["act_declared"]);
    if (e.act) {  // the activations count
      EXPECT_GT(std::fabs(c["ppl"].get<double>() - a["ppl"].get<double>()), 0.0);
    }
  }
}

std::string tiny_ids(const std::string& dir, int64_t n, int64_t vocab) {
  const std::vector<int32_t> ids = test::random_tokens(n, vocab, 7);
  std::vector<uint8_t> b(ids.size() * 4);
  std::memcpy(b.data(), ids.data(), b.size());
  const std::string p = dir + "/ids.i32";
  test::write_bytes(p, b);
  return p;
}

TEST(Interop, TinyModelEveryExportReadsBackIdentically) {
  MPQ_REQUIRE_NUMPY();
  const std::string m = test::scratch_dir("interop-tiny");
  test::TinyLlamaSpec s;
  s.intermediate = 40;  // down_proj in_features 40: kept in the source dtype by NVFP4 exports
  test::write_tiny_llama(m, s);
  const std::string ids = tiny_ids(m, 512, s.vocab);
  check_exports(m, "--tokens " + ids + " --ctx 64", ids, "interop-tiny-out", true);
}

TEST(Interop, Stories260KEveryExportReadsBackIdentically) {
  MPQ_REQUIRE_DATA();
  MPQ_REQUIRE_NUMPY();
  const std::string d = test::data_dir();
  check_exports(d + "/models/stories260K-hf",
                "--tokens " + d + "/reference/stories260K_tinystories_eval_tokens_20480.i32 --ctx 512 --max-tokens 8192",
                d + "/text/tinystories_valid_calib.txt", "interop-stories-out", false);
}

// Copies a packed folder, replacing tensors by `edit` (name -> F32 scalar value; a new name is
// added as an F32 scalar) or dropping those mapped to NaN, and config.json by `config` (when
// not null).
void rewrite(const std::string& src, const std::string& dst, const std::map<std::string, float>& edit,
             const nlohmann::json& config = nullptr) {
  fs::create_directories(dst);
  for (const auto& f : fs::directory_iterator(src))
    if (f.path().filename() != "model.safetensors") fs::copy_file(f.path(), dst / f.path().filename());
  const TensorStore st = TensorStore::open(src);
  SafetensorsWriter w;
  for (const std::string& n : st.names()) {
    const TensorView& t = st.get(n);
    auto it = edit.find(n);
    if (it == edit.end()) w.add(n, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes));
    else if (!std::isnan(it->second)) w.add_f32(n, t.shape, {it->second});
  }
  for (const auto& [n, v] : edit)
    if (!st.has(n)) w.add_f32(n, {}, {v});
  w.write(dst + "/model.safetensors");
  if (!config.is_null()) test::write_text(dst + "/config.json", config.dump(2));
}

TEST(Interop, ReaderRefusesOrMisloadsWhatEnginesDo) {
  MPQ_REQUIRE_NUMPY();
  const std::string m = test::scratch_dir("interop-neg");
  test::TinyLlamaSpec s;
  test::write_tiny_llama(m, s);
  const std::string ids = tiny_ids(m, 512, s.vocab);
  const std::string dir = test::scratch_dir("interop-neg-out");
  auto pack = [&](const std::string& name, const std::string& args) {
    const ToolRun r = run_tool(tool_path("mpq-pack") + " --model " + m + " " + args + " --out " + dir + "/" + name + " -q");
    EXPECT_EQ(r.rc, 0) << r.out;
    return dir + "/" + name;
  };
  // mpq-native: refused by name.
  const std::string native = pack("native", "--format squeezellm-3bit");
  ToolRun r = read_export(native, dir + "/native-dense");
  EXPECT_EQ(r.rc, 3) << r.out;
  EXPECT_NE(r.out.find("Unknown quantization method: mpq"), std::string::npos) << r.out;

  // Per-module global scales inside a fused layer (what mpq wrote before engine exports):
  // the engine dequantizes every shard with the max, so the reader's weights differ.
  const std::string mo = pack("mo", "--format nvfp4");
  const TensorStore st = TensorStore::open(mo);
  const std::string k = "model.layers.0.self_attn.k_proj.weight_scale_2";
  const float s2 = to_f32(st.get(k))[0];
  rewrite(mo, dir + "/mo-halved", {{k, s2 * 0.5f}});
  ASSERT_EQ(read_export(dir + "/mo-halved", dir + "/mo-halved-dense").rc, 0);
  const auto a = eval_json(dir + "/mo-halved", "--tokens " + ids + " --ctx 64", "", dir + "/a.json");
  const auto b = eval_json(dir + "/mo-halved-dense", "--tokens " + ids + " --ctx 64", "--base " + dir + "/mo-halved", dir + "/b.json");
  EXPECT_GT(b["mean_kl"].get<double>(), 1e-4) << "the reader must apply vLLM's max-of-shards global scale";

  // A static W4A4 export without its input_scale: the engine would read an uninitialized scale.
  const std::string st4 = pack("static", "--format nvfp4 --activations static --calib " + ids);
  rewrite(st4, dir + "/static-noscale", {{"model.layers.1.mlp.up_proj.input_scale", NAN}});
  r = read_export(dir + "/static-noscale", dir + "/x");
  EXPECT_EQ(r.rc, 3) << r.out;
  EXPECT_NE(r.out.find("model.layers.1.mlp.up_proj.input_scale missing"), std::string::npos) << r.out;
  r = run_tool(tool_path("mpq-eval") + " --model " + dir + "/static-noscale --tokens " + ids + " --ctx 64 -q");
  EXPECT_EQ(r.rc, 3) << r.out;
  EXPECT_NE(r.out.find("model.layers.1.mlp.up_proj.input_scale' missing"), std::string::npos) << r.out;

  // exclude_modules in config.json (vLLM reads "ignore" there): refused.
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(mo + "/config.json"));
  cfg["quantization_config"]["exclude_modules"] = cfg["quantization_config"]["ignore"];
  cfg["quantization_config"].erase("ignore");
  rewrite(mo, dir + "/mo-exclude", {}, cfg);
  r = read_export(dir + "/mo-exclude", dir + "/y");
  EXPECT_EQ(r.rc, 3) << r.out;
  EXPECT_NE(r.out.find("vLLM reads 'ignore' there"), std::string::npos) << r.out;

  // An extra tensor an engine does not register (KeyError in vLLM's load_weights).
  rewrite(mo, dir + "/mo-extra", {{"model.layers.0.self_attn.q_proj.input_scale", 0.01f}});
  r = read_export(dir + "/mo-extra", dir + "/z");
  EXPECT_EQ(r.rc, 3) << r.out;
  EXPECT_NE(r.out.find("unknown to the engine"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace mpq
