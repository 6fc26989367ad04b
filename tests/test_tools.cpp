// The tools end to end on tiny random models: packing layouts, pack -> eval round trips,
// regression gates, and one test per bad input (exit code 3, one-line error naming the file
// and the field, no output left behind).
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"
#include "lib/model/llama.h"
#include "lib/quant/quantizer.h"
#include "tests/test_util.h"

namespace mpq {
namespace {
namespace fs = std::filesystem;

using test::error_lines;
using test::ToolRun;
const auto tool = &test::tool_path;
const auto run = &test::run_tool;


// Writes int32 ids to a file.
void write_ids(const std::string& path, const std::vector<int32_t>& ids) {
  std::vector<uint8_t> b(ids.size() * 4);
  std::memcpy(b.data(), ids.data(), b.size());
  test::write_bytes(path, b);
}

std::string tiny_model(const std::string& tag, int intermediate = 96) {
  const std::string dir = test::scratch_dir(tag);
  test::TinyLlamaSpec s;
  s.intermediate = intermediate;
  test::write_tiny_llama(dir, s);
  return dir;
}

std::string tiny_tokens(const std::string& dir, int n = 96) {
  std::vector<int32_t> ids(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) ids[static_cast<std::size_t>(i)] = (i * 37 + 11) % 128;
  const std::string p = dir + "/ids.i32";
  write_ids(p, ids);
  return p;
}

// --- Pack layouts and round trips -------------------------------------------

TEST(Pack, Nvfp4MpqNativeFolderPadsPartialBlocks) {
  const std::string m = tiny_model("nvfp4-src", 40);  // 40 inputs to down_proj: a partial block
  const std::string out = test::scratch_dir("nvfp4-out") + "/packed";
  const ToolRun r = run(tool("mpq-pack") + " --model " + m + " --format nvfp4 --export mpq --out " + out + " -q");
  ASSERT_EQ(r.rc, 0) << r.out;
  const TensorStore st = TensorStore::open(out);
  const TensorView& w = st.get("model.layers.0.mlp.down_proj.weight");
  EXPECT_EQ(w.dtype, DType::U8);
  EXPECT_EQ(w.shape, (std::vector<int64_t>{64, 24}));  // ceil(40/16) = 3 blocks * 8 bytes
  const TensorView& s = st.get("model.layers.0.mlp.down_proj.weight_scale");
  EXPECT_EQ(s.dtype, DType::F8_E4M3);
  EXPECT_EQ(s.shape, (std::vector<int64_t>{64, 3}));
  const TensorView& s2 = st.get("model.layers.0.mlp.down_proj.weight_scale_2");
  EXPECT_EQ(s2.dtype, DType::F32);
  EXPECT_TRUE(s2.shape.empty());
  EXPECT_EQ(st.get("model.layers.0.self_attn.q_proj.weight").shape, (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(st.get("model.embed_tokens.weight").dtype, DType::F32);  // not quantized
  EXPECT_EQ(st.get("lm_head.weight").dtype, DType::F32);
  const auto meta = st.files()[0]->metadata();
  EXPECT_EQ(nlohmann::json::parse(meta.at("mpq_logical_shapes"))["model.layers.0.mlp.down_proj"],
            nlohmann::json({64, 40}));

  std::ifstream cfg(out + "/config.json");
  const auto c = nlohmann::json::parse(cfg);
  EXPECT_EQ(c["quantization_config"]["quant_method"], "mpq");  // vLLM: "Unknown quantization method: mpq"
  EXPECT_EQ(c["quantization_config"]["format"], "nvfp4");
  EXPECT_EQ(c["quantization_config"]["group_size"], 16);
  EXPECT_EQ(c["quantization_config"]["exclude_modules"], nlohmann::json({"lm_head"}));
  EXPECT_FALSE(fs::exists(out + "/hf_quant_config.json"));
  EXPECT_FALSE(fs::exists(out + ".partial-" + std::to_string(0)));
}

// The ModelOpt export as vLLM reads it: W4A16_NVFP4 in config.json (ignore) and the legacy
// hf_quant_config.json (exclude_modules, producer.name "modelopt"); q/k/v and gate/up share one
// weight_scale_2 = max shard amax / (6 * 448), computed here from the source weights; the
// 40-wide down_proj stays F32 and is listed as excluded.
TEST(Pack, Nvfp4ModelOptExportSharesFusedScales) {
  const std::string m = tiny_model("nvfp4-mo-src", 40);
  const std::string out = test::scratch_dir("nvfp4-mo-out") + "/packed";
  const ToolRun r = run(tool("mpq-pack") + " --model " + m + " --format nvfp4 --out " + out + " -q");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("model.layers.0.mlp.down_proj: in_features 40 is not a multiple of 16"), std::string::npos) << r.out;
  const TensorStore src = TensorStore::open(m), st = TensorStore::open(out);
  auto amax = [&](const std::string& name) {
    float a = 0;
    for (float v : to_f32(src.get(name + ".weight"))) a = std::max(a, std::fabs(v));
    return a;
  };
  auto s2 = [&](const std::string& name) { return to_f32(st.get(name + ".weight_scale_2"))[0]; };
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const float qkv = std::max({amax(p + "self_attn.q_proj"), amax(p + "self_attn.k_proj"), amax(p + "self_attn.v_proj")});
    for (const char* n : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}) EXPECT_EQ(s2(p + n), qkv / 2688.0f) << n;
    const float gu = std::max(amax(p + "mlp.gate_proj"), amax(p + "mlp.up_proj"));
    for (const char* n : {"mlp.gate_proj", "mlp.up_proj"}) EXPECT_EQ(s2(p + n), gu / 2688.0f) << n;
    EXPECT_EQ(s2(p + "self_attn.o_proj"), amax(p + "self_attn.o_proj") / 2688.0f);
    EXPECT_EQ(st.get(p + "mlp.down_proj.weight").dtype, DType::F32);
    EXPECT_FALSE(st.has(p + "mlp.down_proj.weight_scale"));
    EXPECT_FALSE(st.has(p + "self_attn.q_proj.input_scale"));  // weight-only
  }
  const auto c = nlohmann::json::parse(std::ifstream(out + "/config.json"))["quantization_config"];
  EXPECT_EQ(c["quant_method"], "modelopt");
  EXPECT_EQ(c["quant_algo"], "W4A16_NVFP4");
  EXPECT_EQ(c["group_size"], 16);
  EXPECT_EQ(c["ignore"], nlohmann::json({"lm_head", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"}));
  EXPECT_FALSE(c.contains("exclude_modules"));
  const auto h = nlohmann::json::parse(std::ifstream(out + "/hf_quant_config.json"));
  EXPECT_EQ(h["producer"]["name"], "modelopt");
  EXPECT_EQ(h["quantization"]["quant_algo"], "W4A16_NVFP4");
  EXPECT_EQ(h["quantization"]["exclude_modules"], c["ignore"]);
  for (const char* key : {"group_size", "kv_cache_quant_algo", "exclude_modules"})  // vLLM's required keys
    EXPECT_TRUE(h["quantization"].contains(key)) << key;
}

// What an engine export cannot express is refused before any output, naming the module.
TEST(Pack, EngineExportsRefuseWhatTheyCannotExpress) {
  const std::string m = tiny_model("export-bad-src");
  const std::string out = test::scratch_dir("export-bad-out") + "/p";
  struct Case {
    std::string args;
    int rc;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {"--format squeezellm-3bit --export modelopt", 2, "--export modelopt cannot express model.layers.0.self_attn.q_proj in squeezellm"},
           {"--format fgmp --export compressed-tensors", 2, "cannot express model.layers.0.self_attn.q_proj in fgmp"},
           {"--format fp8 --export modelopt", 2, "no weight-only FP8"},
           {"--format nvfp4 --activations dynamic", 2, "dynamic activation scales for FP8 only"},
           {"--format nvfp4 --activations static", 2, "--activations static needs --calib"},
           {"--format nvfp4 --export mpq --activations static --calib x.txt", 2, "needs --export modelopt or compressed-tensors"},
           {"--format nvfp4 --export modelopt --exclude 'layers\\.1\\.self_attn\\.v_proj'", 3,
            "--exclude: model.layers.1.self_attn.v_proj is unquantized but model.layers.1.self_attn.q_proj is nvfp4"},
       }) {
    const ToolRun r = run(tool("mpq-pack") + " --model " + m + " " + c.args + " --out " + out + " -q");
    EXPECT_EQ(r.rc, c.rc) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.message), std::string::npos) << c.args << "\n" << r.out;
    EXPECT_EQ(test::error_lines(r.out).size(), 1u) << r.out;
    EXPECT_FALSE(fs::exists(out)) << c.args;
  }
}

TEST(Pack, ManifestHashesMatchSha256sum) {
  const std::string m = tiny_model("manifest-src");
  const std::string out = test::scratch_dir("manifest-out") + "/p";
  ASSERT_EQ(run(tool("mpq-pack") + " --model " + m + " --format fp8 --out " + out + " -q").rc, 0);
  std::ifstream f(out + "/mpq_manifest.json");
  const auto man = nlohmann::json::parse(f);
  for (const char* name : {"model.safetensors", "config.json"}) {
    std::string sum;
    ASSERT_EQ(test::run_command("sha256sum " + m + "/" + name, &sum), 0);
    EXPECT_EQ(man["inputs_sha256"][name], sum.substr(0, 64)) << name;
  }
  const auto& t = man["tensors"]["model.layers.1.mlp.up_proj"];
  EXPECT_EQ(t["format"], "fp8");
  EXPECT_EQ(t["bytes"], 96 * 64 + 4);
  EXPECT_NEAR(t["bpw"].get<double>(), 8.0 + 32.0 / (96 * 64), 1e-12);
  EXPECT_NEAR(man["totals"]["bpw_4096x4096"].get<double>(), 8.0 + 32.0 / (4096.0 * 4096.0), 1e-12);
}

class PackRoundTrip : public ::testing::TestWithParam<const char*> {};

// The packed folder loads to exactly the quantizer's decode of the original weights, and
// mpq-eval on it gives the perplexity of that fake-quantized model computed in-process.
TEST_P(PackRoundTrip, LoadedWeightsEqualDecodeAndEvalAgrees) {
  const std::string fmt = GetParam();
  const std::string m = tiny_model(std::string("rt-src-") + fmt, 40);
  const std::string out = test::scratch_dir("rt-out") + "/p";
  ASSERT_EQ(run(tool("mpq-pack") + " --model " + m + " --format " + fmt + " --export mpq --out " + out +
                " -q --exclude 'layers\\.1\\.self_attn\\.v_proj'").rc, 0);
  const LlamaModel orig = LlamaModel::load(m);
  const LlamaModel packed = LlamaModel::load(out);
  LlamaModel fake = LlamaModel::load(m);
  const Quantizer& q = quantizer_for(fmt);
  for (std::size_t l = 0; l < 2; ++l)
    for (int i = 0; i < 7; ++i) {
      Linear& lin = fake.mutable_weights().layers[l].linear[static_cast<std::size_t>(i)];
      const bool excluded = l == 1 && i == 2;
      EXPECT_EQ(packed.weights().layers[l].linear[static_cast<std::size_t>(i)].format, excluded ? "f32" : fmt);
      if (excluded) continue;
      const PackedTensor p = q.encode("w", lin.w.data(), lin.w.rows(), lin.w.cols());
      q.decode(p, lin.w.data());
      const MatrixRM& got = packed.weights().layers[l].linear[static_cast<std::size_t>(i)].w;
      EXPECT_EQ((got - lin.w).cwiseAbs().maxCoeff(), 0.0f);
      EXPECT_GT((got - orig.weights().layers[l].linear[static_cast<std::size_t>(i)].w).cwiseAbs().maxCoeff(), 0.0f);
    }
  const std::string ids = tiny_tokens(test::scratch_dir("rt-ids"));
  const std::string js = test::scratch_dir("rt-json") + "/e.json";
  // --kernels exact: fp32 products, the fp32 reference computed below.
  const ToolRun e = run(tool("mpq-eval") + " --model " + out + " --tokens " + ids + " --ctx 32 -q --kernels exact --json " + js +
                    " --base " + m);
  ASSERT_EQ(e.rc, 0) << e.out;
  std::ifstream f(js);
  const auto j = nlohmann::json::parse(f);
  std::vector<int32_t> tok(96);
  for (int i = 0; i < 96; ++i) tok[static_cast<std::size_t>(i)] = (i * 37 + 11) % 128;
  double nll = 0;
  for (int w = 0; w < 3; ++w) {
    const MatrixRM lg = fake.forward(tok.data() + w * 32, 32);
    for (int t = 0; t < 31; ++t) {
      const double mx = lg.row(t).maxCoeff();
      nll += mx + std::log((lg.row(t).array().cast<double>() - mx).exp().sum()) - lg(t, tok[static_cast<std::size_t>(w * 32 + t + 1)]);
    }
  }
  EXPECT_NEAR(j["mean_nll"].get<double>(), nll / 93.0, 1e-5);
  EXPECT_EQ(j["scored_tokens"], 93);
  EXPECT_GT(j["mean_kl"].get<double>(), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Formats, PackRoundTrip, ::testing::Values("nvfp4", "fp8"));

class PackLmHead : public ::testing::TestWithParam<const char*> {};

// mpq-pack --lm-head LABEL: the head is stored in that format (mpq-native), the loaded head
// is exactly the quantizer's decode of the source head, the CPU runtime runs it with its own
// kernel and gives the expanded model's logits, and the records say what was done.
TEST_P(PackLmHead, HeadIsPackedLoadedAndRecorded) {
  const std::string label = GetParam();
  std::string tag = std::string("lmhead-") + label;
  for (char& ch : tag)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '-';
  const std::string m = tiny_model(tag + "-src");
  const std::string out = test::scratch_dir(tag + "-out") + "/p";
  const ToolRun r = run(tool("mpq-pack") + " --model " + m + " --format nvfp4 --lm-head " + label + " --out " + out);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("lm_head      " + label), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("export       mpq"), std::string::npos) << r.out;  // auto resolves to mpq-native
  const FormatSpec spec = parse_format_label(label);
  const std::unique_ptr<Quantizer> q = make_quantizer(spec);

  nlohmann::json cfg, man;
  std::ifstream(out + "/config.json") >> cfg;
  std::ifstream(out + "/mpq_manifest.json") >> man;
  const auto& qc = cfg["quantization_config"];
  EXPECT_EQ(qc["quant_method"], "mpq");
  EXPECT_EQ(qc["lm_head"]["format"], spec.format);
  EXPECT_EQ(qc["lm_head"]["label"], label);
  for (const auto& e : qc["exclude_modules"]) EXPECT_NE(e.get<std::string>(), "lm_head");
  EXPECT_EQ(man["tensors"]["lm_head"]["format"], spec.format);
  EXPECT_FALSE(man["tensors"].contains("lm_head.weight"));
  const std::size_t head_bytes = man["tensors"]["lm_head"]["bytes"].get<std::size_t>();
  if (spec.format != "squeezellm") {
    EXPECT_EQ(head_bytes, q->bytes(128, 64));
  }
  EXPECT_LT(head_bytes, 128u * 64u * 4u / 3u);  // well under the f32 source's bytes

  // The loaded head (exact fp32 path) = decode(encode(source head)), and not the source.
  const LlamaModel orig = LlamaModel::load(m);
  const LlamaModel packed = LlamaModel::load(out);
  const MatrixRM& src = orig.weights().lm_head;
  ASSERT_EQ(packed.weights().lm_head.rows(), 128);
  MatrixRM want(src.rows(), src.cols());
  q->decode(q->encode("lm_head", src.data(), src.rows(), src.cols()), want.data());
  EXPECT_EQ((packed.weights().lm_head - want).cwiseAbs().maxCoeff(), 0.0f);
  EXPECT_GT((packed.weights().lm_head - src).cwiseAbs().maxCoeff(), 0.0f);

  // The CPU runtime: the head behind its format's kernel, logits of the expanded model.
  LoadOptions lo;
  lo.cpu_kernels = true;
  LlamaModel rt = LlamaModel::load(out, lo);
  ASSERT_NE(rt.weights().lm_head_kernel, nullptr);
  EXPECT_EQ(rt.weights().lm_head_kernel->format(), spec.format);
  EXPECT_EQ(rt.weights().lm_head.size(), 0);
  rt.set_kernel_mode(KernelMode::kExact);
  const std::vector<int32_t> tok = test::random_tokens(9, 128, 4);
  for (int64_t T : {int64_t{1}, int64_t{9}}) {
    const MatrixRM a = rt.forward(tok.data(), T), b = packed.forward(tok.data(), T);
    EXPECT_LE((a - b).cwiseAbs().maxCoeff(), 1e-5f * b.cwiseAbs().maxCoeff()) << label << " T " << T;
  }
}

INSTANTIATE_TEST_SUITE_P(Labels, PackLmHead, ::testing::Values("fp8", "nvfp4", "squeezellm-4bit", "int8-g32"),
                         [](const ::testing::TestParamInfo<const char*>& i) {
                           std::string n = i.param;
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

// --lm-head where it cannot apply: one-line error, documented code, nothing written.
TEST(PackLmHead, RefusesWhatItCannotExpress) {
  const std::string m = tiny_model("lmhead-bad-src");
  const std::string tied = test::scratch_dir("lmhead-bad-tied");
  test::TinyLlamaSpec s;
  s.tie_embeddings = true;
  test::write_tiny_llama(tied, s);
  const std::string out = test::scratch_dir("lmhead-bad-out") + "/p";
  struct Case {
    std::string model, args;
    int rc;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {m, "--format nvfp4 --lm-head fp8 --export modelopt", 2, "engine exports keep lm_head in the source dtype"},
           {m, "--format fp8 --lm-head fp8 --export compressed-tensors", 2, "give --export mpq"},
           {m, "--format nvfp4 --lm-head nvfp4+gptq", 2, "drop +gptq"},
           {m, "--format nvfp4 --lm-head int5", 2, "unknown format 'int5'"},
           {tied, "--format nvfp4 --lm-head fp8", 3, "config.json: tie_word_embeddings: true"},
       }) {
    const ToolRun r = run(tool("mpq-pack") + " --model " + c.model + " " + c.args + " --out " + out + " -q");
    EXPECT_EQ(r.rc, c.rc) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.message), std::string::npos) << c.args << "\n" << r.out;
    EXPECT_EQ(test::error_lines(r.out).size(), 1u) << r.out;
    EXPECT_FALSE(fs::exists(out)) << c.args;
  }
}

// --- Gates and usage ---------------------------------------------------------

TEST(EvalGates, ExitCodeFiveWhenCrossed) {
  const std::string m = tiny_model("gate");
  const std::string ids = tiny_tokens(test::scratch_dir("gate-ids"));
  const std::string base = tool("mpq-eval") + " -q --model " + m + " --tokens " + ids + " --ctx 32";
  EXPECT_EQ(run(base).rc, 0);
  EXPECT_EQ(run(base + " --max-ppl 1e9").rc, 0);
  const ToolRun crossed = run(base + " --max-ppl 1.0001");
  EXPECT_EQ(crossed.rc, 5) << crossed.out;
  EXPECT_NE(crossed.out.find("gate failed"), std::string::npos);
  EXPECT_EQ(run(base + " --baseline-ppl 1.0 --max-increase-pct 1").rc, 5);
  EXPECT_EQ(run(base + " --baseline-ppl 1e9 --max-increase-pct 1").rc, 0);
  EXPECT_EQ(run(base + " --baseline-ppl 1.0").rc, 2);  // needs --max-increase-pct
  EXPECT_EQ(run(tool("mpq-eval") + " --model " + m).rc, 2);  // no --text/--tokens
  EXPECT_EQ(run(tool("mpq-pack") + " --model " + m + " --format int5 --out x").rc, 2);
}

// --- Bad input: one test each ------------------------------------------------

struct BadInput {
  std::string model;
  std::string out;
  ToolRun pack() const { return run(tool("mpq-pack") + " --model " + model + " --format nvfp4 --out " + out + " -q"); }
};

BadInput bad_copy(const std::string& tag) {
  BadInput b{tiny_model(tag), ""};
  b.out = test::scratch_dir(tag + "-out") + "/packed";
  return b;
}

// Asserts rc 3, exactly one error line that names every string in `names`, and no output.
void expect_input_error(const ToolRun& r, const BadInput& b, const std::vector<std::string>& names) {
  EXPECT_EQ(r.rc, 3) << r.out;
  const auto lines = error_lines(r.out);
  ASSERT_EQ(lines.size(), 1u) << r.out;
  for (const auto& n : names) EXPECT_NE(lines[0].find(n), std::string::npos) << "'" << n << "' not in: " << lines[0];
  EXPECT_FALSE(fs::exists(b.out));
  for (const auto& e : fs::directory_iterator(fs::path(b.out).parent_path()))
    ADD_FAILURE() << "left behind: " << e.path();
}

// Rewrites model.safetensors: header length, JSON text and payload.
struct RawSafetensors {
  uint64_t n;
  std::string header;
  std::vector<uint8_t> data;
  static RawSafetensors read(const std::string& path) {
    const auto b = test::read_bytes(path);
    RawSafetensors r;
    std::memcpy(&r.n, b.data(), 8);
    r.header.assign(reinterpret_cast<const char*>(b.data()) + 8, r.n);
    r.data.assign(b.begin() + 8 + static_cast<std::ptrdiff_t>(r.n), b.end());
    return r;
  }
  void write(const std::string& path) const {
    const uint64_t len = header.size();
    std::vector<uint8_t> b(8 + header.size() + data.size());
    std::memcpy(b.data(), &len, 8);
    std::memcpy(b.data() + 8, header.data(), header.size());
    std::memcpy(b.data() + 8 + header.size(), data.data(), data.size());
    test::write_bytes(path, b);
  }
  nlohmann::ordered_json json() const { return nlohmann::ordered_json::parse(header); }
  void set_json(const nlohmann::ordered_json& j) { header = j.dump(); }
};

TEST(BadInput, TruncatedSafetensors) {
  const BadInput b = bad_copy("trunc");
  const std::string p = b.model + "/model.safetensors";
  auto bytes = test::read_bytes(p);
  bytes.resize(bytes.size() / 2);
  test::write_bytes(p, bytes);
  expect_input_error(b.pack(), b, {"model.safetensors", "data_offsets"});
}

TEST(BadInput, HeaderLengthPastEndOfFile) {
  const BadInput b = bad_copy("hdrlen");
  const std::string p = b.model + "/model.safetensors";
  auto bytes = test::read_bytes(p);
  const uint64_t huge = bytes.size() * 2;
  std::memcpy(bytes.data(), &huge, 8);
  test::write_bytes(p, bytes);
  expect_input_error(b.pack(), b, {"model.safetensors", "header"});
}

TEST(BadInput, OffsetsPastEnd) {
  const BadInput b = bad_copy("offs");
  const std::string p = b.model + "/model.safetensors";
  auto raw = RawSafetensors::read(p);
  auto j = raw.json();
  auto& e = j["model.norm.weight"]["data_offsets"];
  e[0] = raw.data.size() - 4;
  e[1] = raw.data.size() - 4 + 256;
  raw.set_json(j);
  raw.write(p);
  expect_input_error(b.pack(), b, {"model.safetensors", "model.norm.weight", "data_offsets"});
}

TEST(BadInput, OverlappingTensors) {
  const BadInput b = bad_copy("overlap");
  const std::string p = b.model + "/model.safetensors";
  auto raw = RawSafetensors::read(p);
  auto j = raw.json();
  j["model.norm.weight"]["data_offsets"] = j["model.layers.0.input_layernorm.weight"]["data_offsets"];
  raw.set_json(j);
  raw.write(p);
  expect_input_error(b.pack(), b, {"model.safetensors", "overlap"});
}

TEST(BadInput, UnknownDtype) {
  const BadInput b = bad_copy("dtype");
  const std::string p = b.model + "/model.safetensors";
  auto raw = RawSafetensors::read(p);
  auto j = raw.json();
  j["model.norm.weight"]["dtype"] = "F4_WEIRD";
  raw.set_json(j);
  raw.write(p);
  expect_input_error(b.pack(), b, {"model.safetensors", "model.norm.weight", "F4_WEIRD"});
}

TEST(BadInput, MissingTensor) {
  const BadInput b = bad_copy("missing");
  const std::string p = b.model + "/model.safetensors";
  const auto st = TensorStore::open(p);
  SafetensorsWriter w;
  for (const auto& n : st.names())
    if (n != "model.layers.1.mlp.up_proj.weight") {
      const TensorView& t = st.get(n);
      w.add(n, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes));
    }
  w.write(p + ".new");
  fs::rename(p + ".new", p);
  expect_input_error(b.pack(), b, {"model.layers.1.mlp.up_proj.weight", "missing"});
  expect_input_error(run(tool("mpq-eval") + " --model " + b.model + " --tokens " + tiny_tokens(b.model) +
                         " --ctx 32"), b, {"model.layers.1.mlp.up_proj.weight", "missing"});
}

TEST(BadInput, ShapeDisagreesWithConfig) {
  const BadInput b = bad_copy("shape");
  const std::string cfg = b.model + "/config.json";
  std::ifstream in(cfg);
  auto j = nlohmann::json::parse(in);
  j["intermediate_size"] = 100;
  test::write_text(cfg, j.dump());
  expect_input_error(b.pack(), b, {"model.safetensors", "gate_proj.weight", "[96, 64]", "[100, 64]"});
}

TEST(BadInput, NanWeights) {
  const BadInput b = bad_copy("nan");
  const std::string p = b.model + "/model.safetensors";
  const auto st = TensorStore::open(p);
  SafetensorsWriter w;
  for (const auto& n : st.names()) {
    const TensorView& t = st.get(n);
    std::vector<uint8_t> bytes(t.data, t.data + t.nbytes);
    if (n == "model.layers.1.self_attn.k_proj.weight") {
      const float nan = std::nanf("");
      std::memcpy(bytes.data() + 4 * (3 * 64 + 5), &nan, 4);
    }
    w.add(n, t.dtype, t.shape, bytes);
  }
  w.write(p + ".new");
  fs::rename(p + ".new", p);
  expect_input_error(b.pack(), b, {"model.safetensors", "model.layers.1.self_attn.k_proj.weight", "NaN", "[3, 5]"});
}

TEST(BadInput, UnsupportedArchitecture) {
  const BadInput b = bad_copy("arch");
  const std::string cfg = b.model + "/config.json";
  std::ifstream in(cfg);
  auto j = nlohmann::json::parse(in);
  j["architectures"] = {"GPT2LMHeadModel"};
  test::write_text(cfg, j.dump());
  expect_input_error(b.pack(), b, {"config.json", "architectures", "GPT2LMHeadModel"});
}

TEST(BadInput, UnsupportedRopeScalingAndActivation) {
  const BadInput b = bad_copy("rope");
  const std::string cfg = b.model + "/config.json";
  std::ifstream in(cfg);
  auto j = nlohmann::json::parse(in);
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  test::write_text(cfg, j.dump());
  expect_input_error(b.pack(), b, {"config.json", "rope_scaling", "yarn"});
  j.erase("rope_scaling");
  j["hidden_act"] = "gelu";
  test::write_text(cfg, j.dump());
  expect_input_error(b.pack(), b, {"config.json", "hidden_act", "gelu"});
}

TEST(BadInput, EmptyText) {
  const BadInput b = bad_copy("empty");
  const std::string txt = b.model + "/empty.txt";
  test::write_text(txt, "");
  expect_input_error(run(tool("mpq-eval") + " --model " + b.model + " --text " + txt), b, {"empty.txt", "empty"});
  expect_input_error(run(tool("mpq-eval") + " --model " + b.model + " --tokens " + txt), b, {"empty.txt", "empty"});
}

TEST(BadInput, MissingModelFolder) {
  BadInput b{test::scratch_dir("nomodel") + "/does-not-exist", test::scratch_dir("nomodel-out") + "/p"};
  expect_input_error(b.pack(), b, {"does-not-exist", "model folder not found"});
}

TEST(BadInput, ExistingOutputIsNotOverwrittenWithoutForce) {
  const BadInput b = bad_copy("exists");
  fs::create_directories(b.out);
  test::write_text(b.out + "/keep.txt", "x");
  const ToolRun r = b.pack();
  EXPECT_EQ(r.rc, 4) << r.out;
  EXPECT_TRUE(fs::exists(b.out + "/keep.txt"));
  const ToolRun f = run(tool("mpq-pack") + " --model " + b.model + " --format fp8 --force -q --out " + b.out);
  EXPECT_EQ(f.rc, 0) << f.out;
  EXPECT_FALSE(fs::exists(b.out + "/keep.txt"));
  EXPECT_TRUE(fs::exists(b.out + "/model.safetensors"));
}

}  // namespace
}  // namespace mpq

namespace mpq {
namespace {

// mpq-inspect's per-module bytes and totals against the file's own byte count and the
// layout formula computed here.
TEST(Inspect, PackedFolderTotals) {
  const std::string m = tiny_model("inspect-src", 40);
  const std::string out = test::scratch_dir("inspect-out") + "/p";
  ASSERT_EQ(run(tool("mpq-pack") + " --model " + m + " --format nvfp4 --export mpq --out " + out + " -q").rc, 0);
  const std::string js = test::scratch_dir("inspect-json") + "/i.json";
  const ToolRun r = run(tool("mpq-inspect") + " " + out + " --json " + js);
  ASSERT_EQ(r.rc, 0) << r.out;
  std::ifstream f(js);
  const auto j = nlohmann::json::parse(f);
  // Payload = file size - 8 - header length.
  const auto bytes = test::read_bytes(out + "/model.safetensors");
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(j["total"]["bytes"].get<uint64_t>(), bytes.size() - 8 - n);
  // down_proj [64, 40]: 3 blocks per row -> 64*24 + 64*3 + 4 bytes.
  bool found = false;
  for (const auto& t : j["tensors"])
    if (t["name"] == "model.layers.1.mlp.down_proj") {
      found = true;
      EXPECT_EQ(t["format"], "nvfp4");
      EXPECT_EQ(t["bytes"], 64 * 24 + 64 * 3 + 4);
      EXPECT_NEAR(t["bpw"].get<double>(), 8.0 * (64 * 24 + 64 * 3 + 4) / (64.0 * 40.0), 1e-12);
    }
  EXPECT_TRUE(found);
  EXPECT_EQ(j["groups"]["nvfp4"]["params"], 2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 40 * 64));  // q,o + k,v + gate,up,down
  EXPECT_EQ(j["quantization_config"]["format"], "nvfp4");
}

}  // namespace
}  // namespace mpq
