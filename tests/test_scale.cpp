// Scale (issue 13): random models at real sizes, sharded bf16 checkpoints streamed through
// mpq-sensitivity (also with recomputed activations) and mpq-pack, the split-and-merge path (--layers A:B, mpq-merge) giving
// the bytes of one run, sensitivities that do not depend on the thread count or on how the
// weights are read, the same numbers as before the streaming rewrite on stories260K, FGMP's
// bounded global selection against a full sort, and the bad inputs of a split run (exit 2 or
// 3 naming the file and what is wrong, nothing written).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "calibration/sensitivity.h"
#include "calibration/windows.h"
#include "formats/hf_config.h"
#include "formats/safetensors.h"
#include "formats/sensitivity_file.h"
#include "lib/model/llama.h"
#include "lib/model/llama_grad.h"
#include "lib/model/random_model.h"
#include "lib/common/error.h"
#include "lib/model/tokenizer.h"
#include "lib/numeric/codecs.h"
#include "lib/quant/fgmp.h"
#include "tests/test_util.h"

namespace mpq {
namespace {
namespace fs = std::filesystem;

using test::ToolRun;
const auto tool = &test::tool_path;
const auto run = &test::run_tool;

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Every file of two folders, byte for byte (mpq_manifest.json compared without the fields
// that name the run: created_utc and command_line).
void expect_same_folder(const std::string& a, const std::string& b) {
  std::vector<std::string> fa, fb;
  for (const auto& e : fs::directory_iterator(a)) fa.push_back(e.path().filename().string());
  for (const auto& e : fs::directory_iterator(b)) fb.push_back(e.path().filename().string());
  std::sort(fa.begin(), fa.end());
  std::sort(fb.begin(), fb.end());
  ASSERT_EQ(fa, fb) << a << " vs " << b;
  for (const std::string& f : fa) {
    if (f == "mpq_manifest.json") {
      nlohmann::json ma = nlohmann::json::parse(slurp(a + "/" + f)), mb = nlohmann::json::parse(slurp(b + "/" + f));
      for (auto* m : {&ma, &mb}) {
        m->erase("created_utc");
        m->erase("command_line");
      }
      EXPECT_EQ(ma, mb) << f;
    } else {
      EXPECT_TRUE(slurp(a + "/" + f) == slurp(b + "/" + f)) << f << " differs between " << a << " and " << b;
    }
  }
}

// A small random model from mpq-make-random-model: bf16, sharded at 60 kB (several shards).
std::string random_model(const std::string& tag, const std::string& extra = "") {
  const std::string dir = test::scratch_dir(tag) + "/model";
  const ToolRun r = run(tool("mpq-make-random-model") + " -q --out " + dir +
                        " --hidden 64 --intermediate 96 --layers 4 --heads 4 --kv-heads 2 --vocab 256"
                        " --dtype bf16 --max-shard-size 60KB --std 0.08 " + extra);
  EXPECT_EQ(r.rc, 0) << r.out;
  return dir;
}

std::string token_file(const std::string& dir, int n, int vocab, uint64_t seed) {
  const std::vector<int32_t> ids = test::random_tokens(n, vocab, seed);
  std::vector<uint8_t> b(ids.size() * 4);
  std::memcpy(b.data(), ids.data(), b.size());
  const std::string p = dir + "/ids-" + std::to_string(seed) + ".i32";
  test::write_bytes(p, b);
  return p;
}

// --- mpq-make-random-model ----------------------------------------------------------------

TEST(RandomModel, PresetsHaveThePublishedShapes) {
  const LlamaConfig l2 = parse_llama_config(nlohmann::json::parse(random_model_config_json(
                                                random_model_preset("llama2-7b"), DType::BF16)),
                                            "llama2-7b");
  EXPECT_EQ(l2.hidden_size, 4096);
  EXPECT_EQ(l2.intermediate_size, 11008);
  EXPECT_EQ(l2.num_layers, 32);
  EXPECT_EQ(l2.num_heads, 32);
  EXPECT_EQ(l2.num_kv_heads, 32);
  EXPECT_EQ(l2.vocab_size, 32000);
  EXPECT_EQ(l2.max_position_embeddings, 4096);
  EXPECT_EQ(l2.torch_dtype, "bfloat16");
  const LlamaConfig l3 = parse_llama_config(nlohmann::json::parse(random_model_config_json(
                                                random_model_preset("llama3-8b"), DType::F16)),
                                            "llama3-8b");
  EXPECT_EQ(l3.intermediate_size, 14336);
  EXPECT_EQ(l3.num_kv_heads, 8);
  EXPECT_EQ(l3.vocab_size, 128256);
  EXPECT_DOUBLE_EQ(l3.rope_theta, 500000.0);
  EXPECT_EQ(l3.bos_token_id, 128000);
  EXPECT_EQ(l3.torch_dtype, "float16");
  // Parameter counts of the published models: 6,738,415,616 and 8,030,261,248.
  for (const auto& [name, want] : {std::pair{"llama2-7b", int64_t{6738415616}}, {"llama3-8b", int64_t{8030261248}}}) {
    int64_t n = 0;
    for (const auto& [t, shape] : llama_tensor_shapes(random_model_preset(name))) {
      int64_t k = 1;
      for (int64_t d : shape) k *= d;
      n += k;
    }
    EXPECT_EQ(n, want) << name;
  }
  EXPECT_THROW(random_model_preset("llama9"), Error);
}

TEST(RandomModel, ShardedBf16FolderLoadsAndDoesNotDependOnThreads) {
  const std::string a = random_model("rand-a", "--threads 1"), b = random_model("rand-b", "--threads 2");
  ASSERT_TRUE(fs::exists(a + "/model.safetensors.index.json"));
  expect_same_folder(a, b);
  const TensorStore st = TensorStore::open(a);
  EXPECT_GE(st.files().size(), 3u);
  const TensorView& w = st.get("model.layers.1.mlp.up_proj.weight");
  EXPECT_EQ(w.dtype, DType::BF16);
  const std::vector<float> v = to_f32(w);
  double sum = 0, sq = 0;
  for (float x : v) {
    sum += x;
    sq += double(x) * x;
  }
  const double mean = sum / v.size(), sd = std::sqrt(sq / v.size() - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.004);
  EXPECT_NEAR(sd, 0.08, 0.08 * 0.03);
  EXPECT_EQ(to_f32(st.get("model.norm.weight")), std::vector<float>(64, 1.0f));
  const LlamaModel m = LlamaModel::load(a);  // config.json and every shape agree
  EXPECT_EQ(m.config().num_kv_heads, 2);
  // An existing folder is not replaced without --force.
  const ToolRun r = run(tool("mpq-make-random-model") + " -q --out " + a + " --hidden 64 --intermediate 96 --layers 1"
                        " --heads 4 --vocab 256");
  EXPECT_EQ(r.rc, 4) << r.out;
  EXPECT_TRUE(fs::exists(a + "/model.safetensors.index.json"));
}

// --- Sensitivities: thread count, weight source, layer split ---------------------------------

TEST(ScaleSensitivity, StreamedEqualsInMemoryAndThreadCountChangesNothing) {
  const std::string m = random_model("sens-src");
  const LlamaConfig c = load_llama_config(m);
  const TensorStore store = TensorStore::open(m);
  const std::vector<int32_t> ids = test::random_tokens(600, 256, 3);
  const std::vector<int64_t> starts = {0, 100, 250, 400, 7};
  SensitivityOptions o;
  o.act_fisher = true;
  o.full_hessian = true;
  o.layer_begin = 1;
  o.layer_end = 3;
  const int saved = omp_get_max_threads();
  std::vector<SensitivityResult> rs;
  for (auto [weights, windows, threads, recompute] :
       {std::tuple{SensitivityOptions::Weights::kMemory, 0, 1, false}, {SensitivityOptions::Weights::kMemory, 0, 2, false},
        {SensitivityOptions::Weights::kMemory, 1, 2, false}, {SensitivityOptions::Weights::kStream, 0, 1, false},
        {SensitivityOptions::Weights::kStream, 0, 2, false}, {SensitivityOptions::Weights::kStream, 0, 2, true},
        {SensitivityOptions::Weights::kMemory, 0, 2, true}}) {
    o.weights = weights;
    o.max_window_threads = windows;
    o.recompute_activations = recompute;
    omp_set_num_threads(threads);
    rs.push_back(compute_sensitivities(c, store, ids, starts, 64, o));
  }
  omp_set_num_threads(saved);
  for (std::size_t v = 1; v < rs.size(); ++v) {
    ASSERT_EQ(rs[v].tensors.size(), 14u);
    for (std::size_t k = 0; k < rs[0].tensors.size(); ++k) {
      const TensorSensitivity &a = rs[0].tensors[k], &b = rs[v].tensors[k];
      EXPECT_EQ(a.fisher, b.fisher) << "variant " << v << " " << a.name;
      EXPECT_EQ(a.hessian_diag, b.hessian_diag) << v << " " << a.name;
      EXPECT_EQ(a.hessian, b.hessian) << v << " " << a.name;
      EXPECT_EQ(a.act_fisher, b.act_fisher) << v << " " << a.name;
      EXPECT_EQ(a.fisher_sum, b.fisher_sum) << v << " " << a.name;
    }
  }
  // The streamed Fisher is the mean squared per-window gradient of the full-gradient pass.
  const LlamaParams<float> p = load_llama_params(c, store);
  std::vector<float> ref(rs[0].tensors[0].fisher.size(), 0.0f);
  for (int64_t s : starts) {
    LlamaParams<float> g;
    llama_loss_and_grad<float>(c, p, ids.data() + s, 64, &g);
    const MatRM<float>& gw = g.layers[1].w[0];
    for (std::size_t j = 0; j < ref.size(); ++j) ref[j] += gw.data()[j] * gw.data()[j];
  }
  for (float& f : ref) f /= static_cast<float>(starts.size());
  EXPECT_EQ(ref, rs[0].tensors[0].fisher);
}

TEST(ScaleSensitivity, ToolBytesDoNotDependOnThreadsAndPartsMergeToTheSingleRun) {
  const std::string m = random_model("sens-tool");
  const std::string dir = test::scratch_dir("sens-tool-out");
  const std::string ids = token_file(dir, 3000, 256, 5);
  const std::string base = tool("mpq-sensitivity") + " -q --model " + m + " --calib " + ids +
                           " --samples 6 --seq-len 64 --kind fisher,hessian,act-fisher";
  for (const char* t : {"1", "2"}) {
    const ToolRun r = run(base + " --threads " + t + " --out " + dir + "/all" + t + ".safetensors");
    ASSERT_EQ(r.rc, 0) << r.out;
  }
  EXPECT_TRUE(slurp(dir + "/all1.safetensors") == slurp(dir + "/all2.safetensors")) << "--threads 1 vs 2 differ";
  for (const char* range : {"0:1", "1:3", "3:4"}) {
    const ToolRun r = run(base + " --layers " + range + " --out " + dir + "/part" + range + ".safetensors");
    ASSERT_EQ(r.rc, 0) << r.out;
  }
  const std::string p0 = dir + "/part0:1.safetensors", p1 = dir + "/part1:3.safetensors", p3 = dir + "/part3:4.safetensors";
  ToolRun r = run(tool("mpq-merge") + " --out " + dir + "/merged.safetensors " + p3 + " " + p0 + " " + p1);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(slurp(dir + "/merged.safetensors") == slurp(dir + "/all1.safetensors")) << "merge differs from one run";
  // The merged file is what downstream tools read.
  r = run(tool("mpq-pack") + " -q --model " + m + " --format squeezellm --bits 3 --sensitivity " + dir +
          "/merged.safetensors --out " + dir + "/sq");
  EXPECT_EQ(r.rc, 0) << r.out;

  // Bad merges: exit 3 naming the part and the problem, nothing written.
  const std::string bad = dir + "/bad.safetensors";
  const auto refused = [&](const std::string& parts, const std::string& what) {
    const ToolRun b = run(tool("mpq-merge") + " --out " + bad + " " + parts);
    EXPECT_EQ(b.rc, 3) << b.out;
    EXPECT_NE(b.out.find(what), std::string::npos) << b.out;
    EXPECT_FALSE(fs::exists(bad));
  };
  refused(p0 + " " + p3, "layers 1:3 are in no part");
  refused(p0 + " " + p1 + " " + p3 + " " + p0, "overlap");
  refused(p0 + " " + p1, "layers 3:4 are in no part");
  // A part from other calibration data.
  const std::string ids2 = token_file(dir, 3000, 256, 6);
  r = run(tool("mpq-sensitivity") + " -q --model " + m + " --calib " + ids2 +
          " --samples 6 --seq-len 64 --kind fisher,hessian,act-fisher --layers 1:3 --out " + dir + "/other.safetensors");
  ASSERT_EQ(r.rc, 0) << r.out;
  refused(p0 + " " + dir + "/other.safetensors " + p3, "calibration_sha256 differs");
  // A part of another model (same shapes, other weights).
  const std::string m2 = random_model("sens-tool-2", "--seed 9");
  r = run(base.substr(0, base.find(" --model ")) + " --model " + m2 + " --calib " + ids +
          " --samples 6 --seq-len 64 --kind fisher,hessian,act-fisher --layers 3:4 --out " + dir + "/m2.safetensors");
  ASSERT_EQ(r.rc, 0) << r.out;
  refused(p0 + " " + p1 + " " + dir + "/m2.safetensors", "model_sha256 differs");
  // Other settings.
  r = run(base + " --seed 1 --layers 3:4 --out " + dir + "/seed1.safetensors");
  ASSERT_EQ(r.rc, 0) << r.out;
  refused(p0 + " " + p1 + " " + dir + "/seed1.safetensors", "seed differs");
}

TEST(ScaleSensitivity, LayersOutsideTheModelAndBadShardsAreRefused) {
  const std::string m = random_model("sens-bad");
  const std::string dir = test::scratch_dir("sens-bad-out");
  const std::string ids = token_file(dir, 1000, 256, 1);
  const std::string cmd = tool("mpq-sensitivity") + " -q --model " + m + " --calib " + ids + " --samples 2 --seq-len 32";
  ToolRun r = run(cmd + " --layers 2:9 --out " + dir + "/x.safetensors");
  EXPECT_EQ(r.rc, 2) << r.out;
  EXPECT_NE(r.out.find("config.json has num_hidden_layers 4"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir + "/x.safetensors"));
  // A shard the index names is missing.
  const std::string gone = test::scratch_dir("sens-gone");
  fs::copy(m, gone, fs::copy_options::recursive);
  std::string shard;
  for (const auto& e : fs::directory_iterator(gone))
    if (e.path().filename().string().rfind("model-00002", 0) == 0) shard = e.path().string();
  ASSERT_FALSE(shard.empty());
  fs::remove(shard);
  r = run(tool("mpq-sensitivity") + " -q --model " + gone + " --calib " + ids + " --samples 2 --seq-len 32 --out " + dir +
          "/y.safetensors");
  EXPECT_EQ(r.rc, 3) << r.out;
  EXPECT_NE(r.out.find("model.safetensors.index.json"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("does not exist"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir + "/y.safetensors"));
}

// Rewrites one shard of a copy of `model` with tensor `name` changed by `edit` (dtype and
// shape of the header entry and the payload bytes). Returns the copy and the shard path.
std::pair<std::string, std::string> corrupt_copy(const std::string& model, const std::string& tag, const std::string& name,
                                                 DType dtype, std::vector<int64_t> shape) {
  const std::string dir = test::scratch_dir(tag);
  const std::string copy = dir + "/model";
  fs::copy(model, copy, fs::copy_options::recursive);
  const TensorStore st = TensorStore::open(copy);
  const std::string file = st.get(name).file;
  const auto f = SafetensorsFile::open(file);
  SafetensorsWriter w;
  for (const auto& [k, v] : f->metadata()) w.set_metadata(k, v);
  for (const std::string& n : f->names()) {
    const TensorView& t = f->get(n);
    if (n == name) {
      int64_t numel = 1;
      for (int64_t d : shape) numel *= d;
      w.add(n, dtype, shape, std::vector<uint8_t>(static_cast<std::size_t>(numel) * dtype_size(dtype), 0));
    } else {
      w.add(n, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes));
    }
  }
  w.write(file + ".new");
  fs::rename(file + ".new", file);
  return {copy, file};
}

TEST(ScalePack, ShardedOutputSplitAndMergeGiveTheBytesOfOneRun) {
  const std::string m = random_model("pack-src");
  const std::string dir = test::scratch_dir("pack-out");
  const std::string ids = token_file(dir, 3000, 256, 2);
  ToolRun r = run(tool("mpq-sensitivity") + " -q --model " + m + " --calib " + ids +
                  " --samples 4 --seq-len 64 --kind fisher --out " + dir + "/fisher.safetensors");
  ASSERT_EQ(r.rc, 0) << r.out;
  for (const std::string& fmt :
       std::vector<std::string>{"nvfp4", "fp8", "squeezellm --bits 3 --sensitivity " + dir + "/fisher.safetensors",
                                "int4-g128 --lm-head fp8"}) {  // the head only in the part with the last layer
    const std::string tag = fmt.substr(0, fmt.find(' '));
    const std::string cmd = tool("mpq-pack") + " -q --model " + m + " --format " + fmt + " --max-shard-size 20KB";
    r = run(cmd + " --out " + dir + "/" + tag + "-all");
    ASSERT_EQ(r.rc, 0) << r.out;
    ASSERT_TRUE(fs::exists(dir + "/" + tag + "-all/model.safetensors.index.json")) << tag;
    std::string parts;
    for (const char* range : {"2:4", "0:1", "1:2"}) {
      const std::string out = dir + "/" + tag + "-part" + range;
      r = run(cmd + " --layers " + range + " --out " + out);
      ASSERT_EQ(r.rc, 0) << r.out;
      parts += " " + out;
    }
    r = run(tool("mpq-merge") + " -q --out " + dir + "/" + tag + "-merged" + parts);
    ASSERT_EQ(r.rc, 0) << r.out;
    expect_same_folder(dir + "/" + tag + "-all", dir + "/" + tag + "-merged");
  }
  // The sharded output evaluates like a single-file one.
  r = run(tool("mpq-pack") + " -q --model " + m + " --format nvfp4 --out " + dir + "/nvfp4-one");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(fs::exists(dir + "/nvfp4-one/model.safetensors"));
  std::string ppl[2];
  for (int i = 0; i < 2; ++i) {
    const std::string folder = dir + (i ? "/nvfp4-one" : "/nvfp4-all");
    r = run(tool("mpq-eval") + " -q --model " + folder + " --tokens " + ids + " --ctx 64 --max-tokens 640 --json " +
            dir + "/e" + std::to_string(i) + ".json");
    ASSERT_EQ(r.rc, 0) << r.out;
    ppl[i] = nlohmann::json::parse(slurp(dir + "/e" + std::to_string(i) + ".json"))["ppl"].dump();
  }
  EXPECT_EQ(ppl[0], ppl[1]);
}

TEST(ScalePack, BadSplitsAndBadShardsAreRefusedAndWriteNothing) {
  const std::string m = random_model("packbad-src");
  const std::string dir = test::scratch_dir("packbad-out");
  const std::string pack = tool("mpq-pack") + " -q --format nvfp4 --model ";
  ToolRun r = run(pack + m + " --layers 3:7 --out " + dir + "/x");
  EXPECT_EQ(r.rc, 2) << r.out;
  EXPECT_NE(r.out.find("config.json has num_hidden_layers 4"), std::string::npos) << r.out;
  r = run(tool("mpq-pack") + " -q --format fgmp --model " + m + " --layers 0:2 --out " + dir + "/x");
  EXPECT_EQ(r.rc, 2) << r.out;
  EXPECT_NE(r.out.find("ranked over the whole model"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir + "/x"));
  // Parts of two different models, overlapping or missing layers.
  const std::string m2 = random_model("packbad-src2", "--seed 5");
  for (const auto& [model, range] : {std::pair{m, "0:2"}, {m, "2:4"}, {m2, "2:4"}, {m, "1:3"}}) {
    r = run(pack + model + " --layers " + range + " --out " + dir + "/" + (model == m ? "a" : "b") + range);
    ASSERT_EQ(r.rc, 0) << r.out;
  }
  const auto refused = [&](const std::string& parts, const std::string& what) {
    const ToolRun b = run(tool("mpq-merge") + " -q --out " + dir + "/merged " + parts);
    EXPECT_EQ(b.rc, 3) << b.out;
    EXPECT_NE(b.out.find(what), std::string::npos) << b.out;
    EXPECT_FALSE(fs::exists(dir + "/merged"));
  };
  refused(dir + "/a0:2 " + dir + "/b2:4", "inputs_sha256 differs");
  refused(dir + "/a0:2 " + dir + "/a1:3 " + dir + "/a2:4", "overlap");
  refused(dir + "/a0:2", "layers 2:4 are in no part");
  refused(dir + "/a2:4", "layers 0:2 are in no part");
  // A shard named in the index but missing, a tensor of the wrong dtype or shape.
  const std::string gone = test::scratch_dir("packbad-gone") + "/model";
  fs::copy(m, gone, fs::copy_options::recursive);
  for (const auto& e : fs::directory_iterator(gone))
    if (e.path().filename().string().rfind("model-00003", 0) == 0) fs::remove(e.path());
  r = run(pack + gone + " --out " + dir + "/y");
  EXPECT_EQ(r.rc, 3) << r.out;
  EXPECT_NE(r.out.find("does not exist"), std::string::npos) << r.out;
  const std::string lin = "model.layers.2.mlp.gate_proj.weight";
  const auto [dt, dt_file] = corrupt_copy(m, "packbad-dtype", lin, DType::I32, {96, 64});
  r = run(pack + dt + " --out " + dir + "/y");
  EXPECT_EQ(r.rc, 3) << r.out;
  EXPECT_NE(r.out.find(dt_file), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("I32"), std::string::npos) << r.out;
  r = run(tool("mpq-sensitivity") + " -q --model " + dt + " --calib " + token_file(dir, 500, 256, 1) +
          " --samples 2 --seq-len 32 --out " + dir + "/y.safetensors");
  EXPECT_EQ(r.rc, 3) << r.out;
  EXPECT_NE(r.out.find(dt_file), std::string::npos) << r.out;
  const auto [sh, sh_file] = corrupt_copy(m, "packbad-shape", lin, DType::BF16, {96, 65});
  r = run(pack + sh + " --out " + dir + "/y");
  EXPECT_EQ(r.rc, 3) << r.out;
  EXPECT_NE(r.out.find(sh_file), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[96, 65]"), std::string::npos) << r.out;
  r = run(tool("mpq-sensitivity") + " -q --model " + sh + " --calib " + token_file(dir, 500, 256, 1) +
          " --samples 2 --seq-len 32 --out " + dir + "/y.safetensors");
  EXPECT_EQ(r.rc, 3) << r.out;
  EXPECT_NE(r.out.find("[96, 65]"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir + "/y"));
  EXPECT_FALSE(fs::exists(dir + "/y.safetensors"));
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string().find("partial"), std::string::npos) << e.path();
}

// --- FGMP's global selection without holding the scores ------------------------------------

// Scores handed over in pieces of 3, as a file-backed source would.
class ChunkedScores final : public FgmpScoreSource {
 public:
  explicit ChunkedScores(const std::vector<FgmpTensorScores>& t) : t_(t) {}
  std::size_t count() const override { return t_.size(); }
  const FgmpTensorScores& tensor(std::size_t i) const override { return t_[i]; }
  void scan(const ScanFn& fn) const override {
    for (std::size_t i = 0; i < t_.size(); ++i)
      for (std::size_t j = 0; j < t_[i].scores.size(); j += 3)
        fn(i, t_[i].scores.data() + j, std::min<std::size_t>(3, t_[i].scores.size() - j));
  }

 private:
  const std::vector<FgmpTensorScores>& t_;
};

TEST(FgmpGlobal, RadixSelectionEqualsAFullSortWithTies) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 30; ++trial) {
    std::vector<FgmpTensorScores> t;
    const int n_t = 1 + trial % 4;
    for (int i = 0; i < n_t; ++i) {
      const int64_t rows = 1 + static_cast<int64_t>(rng() % 5), cols = 16 * (1 + static_cast<int64_t>(rng() % 4));
      FgmpTensorScores s{"t" + std::to_string(i), rows, cols, {}};
      for (int64_t b = 0; b < rows * cols / 16; ++b) {
        // Few distinct values (many ties), zeros, denormals, large values.
        const uint64_t r = rng() % 6;
        s.scores.push_back(r == 0 ? 0.0 : r == 1 ? 4.9e-324 : r == 2 ? 1e300 : static_cast<double>(rng() % 4) * 0.25);
      }
      t.push_back(s);
    }
    for (double fraction : {0.0, 0.1, 0.37, 0.5, 1.0}) {
      // Reference: rank every block by (score desc, tensor, index) and take the first K.
      std::vector<std::tuple<double, int, int64_t>> all;
      int64_t total = 0;
      for (int i = 0; i < n_t; ++i)
        for (std::size_t b = 0; b < t[i].scores.size(); ++b) all.emplace_back(-t[i].scores[b], i, static_cast<int64_t>(b));
      total = static_cast<int64_t>(all.size());
      std::sort(all.begin(), all.end());
      const int64_t k = std::llround(fraction * static_cast<double>(total));
      std::vector<int64_t> want(static_cast<std::size_t>(n_t), 0);
      for (int64_t j = 0; j < k; ++j) ++want[static_cast<std::size_t>(std::get<1>(all[static_cast<std::size_t>(j)]))];
      const FgmpSelection a = fgmp_select_global(t, fraction, 0.0);
      const FgmpSelection b = fgmp_select_global(ChunkedScores(t), fraction, 0.0);
      for (int i = 0; i < n_t; ++i) {
        EXPECT_EQ(a.fp8_blocks.at(t[i].name), want[static_cast<std::size_t>(i)]) << trial << " " << fraction;
        EXPECT_EQ(b.fp8_blocks.at(t[i].name), want[static_cast<std::size_t>(i)]) << trial << " " << fraction;
      }
      if (k > 0) {
        EXPECT_EQ(a.score_threshold, -std::get<0>(all[static_cast<std::size_t>(k - 1)]));
        EXPECT_EQ(b.score_threshold, a.score_threshold);
      }
    }
  }
}

// --- The same numbers as before the streaming rewrite (real model) --------------------------

TEST(Stories260K, SensitivityTracesMatchThePassBeforeStreaming) {
  MPQ_REQUIRE_DATA();
  const std::string d = test::data_dir();
  const nlohmann::json golden =
      nlohmann::json::parse(slurp((fs::path(__FILE__).parent_path() / "golden" / "stories260k_sensitivity_traces.json").string()));
  const std::string out = test::scratch_dir("sens-golden") + "/s.safetensors";
  for (const char* threads : {"1", "2"}) {
    const ToolRun r = run(tool("mpq-sensitivity") + " -q --model " + d + "/models/stories260K-hf --calib " + d +
                          "/text/tinystories_valid_calib.txt --samples 16 --seq-len 256 --kind fisher,hessian,act-fisher"
                          " --threads " + threads + " --out " + out);
    ASSERT_EQ(r.rc, 0) << r.out;
    const auto f = SafetensorsFile::open(out);
    EXPECT_EQ(f->metadata().at("calibration_sha256"), golden["calibration_sha256"].get<std::string>());
    const nlohmann::json traces = nlohmann::json::parse(f->metadata().at("traces"));
    ASSERT_EQ(traces.size(), golden["traces"].size());
    for (const auto& [module, want] : golden["traces"].items())
      for (const char* field : {"fisher_sum", "hessian_trace", "act_fisher_sum"}) {
        const double g = traces[module][field].get<double>(), w = want[field].get<double>();
        // The same operations in the same order: equal on this build; 1e-5 for other GEMM
        // kernels (the sanitizer build runs Eigen's own, without OpenBLAS: up to 2e-6 there).
        EXPECT_NEAR(g, w, 1e-5 * std::abs(w)) << module << " " << field << " threads " << threads;
      }
  }
}

}  // namespace
}  // namespace mpq
