// The whole Llama forward pass on CUDA (kernels/cuda/forward.h, mpq-eval --device cuda)
// against the CPU runtime (LlamaModel::forward, an independent implementation: Eigen GEMMs,
// the CPU LUT / FGMP kernels, fp8 / nvfp4 decoded to fp32 at load):
//   - tiny random models (GQA 8/4 heads, intermediate 40 so down_proj has a partial 16-block;
//     untied, tied embeddings, Qwen2-style q/k/v biases) stored as fp32 (dense SGEMM path),
//     fp8, nvfp4, squeezellm 3-bit + CSR, fgmp 30 % FP8, and nvfp4 with down_proj excluded
//     (packed and dense linears mixed): GPU logits within 1e-4 of max |CPU logit|, for
//     windows of 37 tokens (three GEMV chunks, the last partial) and of 1 token;
//   - stories260K-hf (real data): mpq-eval --device cuda perplexity within 1e-3 relative of
//     --device cpu for the fp32 and the nvfp4 checkpoints (the acceptance test), and
//     the KL to the fp32 base within 1e-2 relative;
//   - errors: token id outside the vocabulary (exit-3 class), empty window (usage).
// Those skip without a GPU (or without CUDA in the build). Running everywhere: mpq-eval
// --device cuda without a usable device is exit 3 with one error line; --device cuda with
// --act fp8 is exit 2; the JSON records "device".
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lib/common/error.h"
#include "lib/model/llama.h"
#include "tests/test_util.h"

#ifdef MPQ_HAVE_CUDA
#include "kernels/cuda/dequant.h"  // device_count()
#include "kernels/cuda/forward.h"
#endif

namespace mpq {
namespace {

std::string ids_file(const std::string& dir, const std::vector<int32_t>& ids) {
  const std::string p = dir + "/ids.i32";
  std::vector<uint8_t> bytes(ids.size() * 4);
  for (std::size_t i = 0; i < ids.size(); ++i)
    for (int b = 0; b < 4; ++b) bytes[4 * i + b] = static_cast<uint8_t>(static_cast<uint32_t>(ids[i]) >> (8 * b));
  test::write_bytes(p, bytes);
  return p;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

// A tiny random model in `dir`, packed with mpq-pack `pack_args` unless they are empty.
std::string tiny_model(const std::string& tag, const test::TinyLlamaSpec& spec, const std::string& pack_args) {
  const std::string src = test::scratch_dir(tag + "-src");
  test::write_tiny_llama(src, spec);
  if (pack_args.empty()) return src;
  const std::string dir = test::scratch_dir(tag + "-out") + "/p";
  std::string out;
  EXPECT_EQ(test::run_command(test::tool_path("mpq-pack") + " --model " + src + " " + pack_args + " --out " + dir + " -q",
                              &out),
            0)
      << out;
  return dir;
}

#ifdef MPQ_HAVE_CUDA
// GPU vs CPU logits on `dir` for windows of 37 and 1 tokens: max |gpu - cpu| <= 1e-4 max |cpu|.
void expect_gpu_matches_cpu(const std::string& dir, const std::string& expected_format) {
  const LlamaModel cpu = LlamaModel::load(dir);
  ASSERT_EQ(cpu.weights().layers[0].linear[0].format, expected_format);
  const cuda::CudaLlamaModel gpu = cuda::CudaLlamaModel::load(dir);
  for (int64_t T : {37, 1}) {
    const std::vector<int32_t> tok = test::random_tokens(T, cpu.config().vocab_size, 100 + static_cast<uint64_t>(T));
    const MatrixRM want = cpu.forward(tok.data(), T);
    const MatrixRM got = gpu.forward(tok.data(), T);
    ASSERT_EQ(got.rows(), T);
    ASSERT_EQ(got.cols(), cpu.config().vocab_size);
    const double scale = want.cwiseAbs().maxCoeff();
    ASSERT_GT(scale, 1e-3) << "degenerate reference logits";
    double worst = 0;
    Eigen::Index wr = 0, wc = 0;
    for (Eigen::Index r = 0; r < want.rows(); ++r)
      for (Eigen::Index c = 0; c < want.cols(); ++c) {
        const double e = std::fabs(static_cast<double>(got(r, c)) - want(r, c));
        if (!(e <= worst)) {  // NaN lands here too
          worst = std::isnan(e) ? INFINITY : e;
          wr = r;
          wc = c;
        }
      }
    EXPECT_LE(worst, 1e-4 * scale) << dir << " T=" << T << ": worst logit [" << wr << ", " << wc << "] gpu "
                                   << got(wr, wc) << " cpu " << want(wr, wc) << " (max |logit| " << scale << ")";
  }
}
#else
void expect_gpu_matches_cpu(const std::string&, const std::string&) {}
#endif

test::TinyLlamaSpec tiny_spec(bool tied, bool qkv_bias, uint64_t seed) {
  test::TinyLlamaSpec s;
  s.intermediate = 40;
  s.tie_embeddings = tied;
  s.qkv_bias = qkv_bias;
  s.seed = seed;
  return s;
}

TEST(CudaForward, Fp32UntiedMatchesCpu) {
  MPQ_REQUIRE_GPU();
  expect_gpu_matches_cpu(tiny_model("cf-f32", tiny_spec(false, false, 21), ""), "f32");
}

TEST(CudaForward, Fp32TiedWithQkvBiasMatchesCpu) {
  MPQ_REQUIRE_GPU();
  expect_gpu_matches_cpu(tiny_model("cf-f32tb", tiny_spec(true, true, 22), ""), "f32");
}

TEST(CudaForward, Fp8TiedWithQkvBiasMatchesCpu) {
  MPQ_REQUIRE_GPU();
  expect_gpu_matches_cpu(tiny_model("cf-fp8", tiny_spec(true, true, 23), "--format fp8"), "fp8");
}

TEST(CudaForward, Nvfp4MatchesCpu) {
  MPQ_REQUIRE_GPU();
  expect_gpu_matches_cpu(tiny_model("cf-nvfp4", tiny_spec(false, false, 24), "--format nvfp4"), "nvfp4");
}

TEST(CudaForward, Nvfp4TiedWithQkvBiasMatchesCpu) {
  MPQ_REQUIRE_GPU();
  expect_gpu_matches_cpu(tiny_model("cf-nvfp4tb", tiny_spec(true, true, 25), "--format nvfp4"), "nvfp4");
}

TEST(CudaForward, SqueezeLlm3BitSparseMatchesCpu) {
  MPQ_REQUIRE_GPU();
  expect_gpu_matches_cpu(tiny_model("cf-sq3", tiny_spec(false, true, 26), "--format squeezellm --bits 3"),
                         "squeezellm");
}

TEST(CudaForward, FgmpMatchesCpu) {
  MPQ_REQUIRE_GPU();
  expect_gpu_matches_cpu(tiny_model("cf-fgmp", tiny_spec(true, false, 27), "--format fgmp --fp8-fraction 0.3"), "fgmp");
}

TEST(CudaForward, PackedAndDenseLinearsMixedMatchCpu) {
  MPQ_REQUIRE_GPU();
  const std::string dir = tiny_model("cf-mix", tiny_spec(false, false, 28), "--format nvfp4 --exclude down_proj");
  EXPECT_EQ(LlamaModel::load(dir).weights().layers[0].linear[6].format, "f32");  // down_proj stays dense
  expect_gpu_matches_cpu(dir, "nvfp4");
}

TEST(CudaForward, BadTokenAndEmptyWindowThrow) {
  MPQ_REQUIRE_GPU();
#ifdef MPQ_HAVE_CUDA
  const cuda::CudaLlamaModel gpu = cuda::CudaLlamaModel::load(tiny_model("cf-err", tiny_spec(false, false, 29), ""));
  const std::vector<int32_t> bad = {1, 2, 128};  // vocab 128
  try {
    gpu.forward(bad.data(), 3);
    ADD_FAILURE() << "token 128 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kInput);
    EXPECT_NE(std::string(e.what()).find("token id 128 at position 2"), std::string::npos) << e.what();
  }
  try {
    gpu.forward(bad.data(), 0);
    ADD_FAILURE() << "empty window accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kUsage);
  }
#endif
}

// --- stories260K-hf: mpq-eval --device cuda vs --device cpu ----------------------------

double eval_json(const std::string& args, const std::string& json, nlohmann::json* out) {
  const test::ToolRun r = test::run_tool(test::tool_path("mpq-eval") + " -q " + args + " --json " + json);
  EXPECT_EQ(r.rc, 0) << r.out;
  if (r.rc != 0) return NAN;
  *out = read_json(json);
  return (*out)["ppl"].get<double>();
}

TEST(CudaForwardStories, PerplexityMatchesCpuForFp32AndNvfp4) {
  MPQ_REQUIRE_DATA();
  MPQ_REQUIRE_GPU();
  const std::string src = test::data_dir() + "/models/stories260K-hf";
  const std::string text = test::data_dir() + "/text/tinystories_valid_eval.txt";
  const std::string work = test::scratch_dir("cf-stories");
  const std::string nvfp4 = work + "/nvfp4";
  std::string out;
  ASSERT_EQ(test::run_command(test::tool_path("mpq-pack") + " --model " + src + " --format nvfp4 --out " + nvfp4 + " -q",
                              &out),
            0)
      << out;
  const std::string common = " --text " + text + " --ctx 512 --max-tokens 20480";
  for (const std::string& dir : {src, nvfp4}) {
    const bool quant = dir == nvfp4;
    const std::string base = quant ? " --base " + src : "";
    nlohmann::json jc, jg;
    // The CPU reference in exact fp32 (the GPU runs fp32 activations).
    const double cpu = eval_json("--model " + dir + common + base + " --device cpu --kernels exact", work + "/cpu.json", &jc);
    const double gpu = eval_json("--model " + dir + common + base + " --device cuda", work + "/gpu.json", &jg);
    ASSERT_TRUE(std::isfinite(cpu) && std::isfinite(gpu)) << dir;
    EXPECT_EQ(jg["device"], "cuda");
    EXPECT_EQ(jc["device"], "cpu");
    EXPECT_EQ(jg["windows"], jc["windows"]);
    EXPECT_NEAR(gpu / cpu, 1.0, 1e-3) << dir << ": gpu ppl " << gpu << ", cpu ppl " << cpu;
    if (quant) {
      const double kc = jc["mean_kl"].get<double>(), kg = jg["mean_kl"].get<double>();
      EXPECT_GT(kc, 0.0);
      EXPECT_NEAR(kg, kc, 1e-2 * kc) << "mean KL vs fp32 base";
    }
  }
}

// --- Runs everywhere: the tool's device errors and the JSON field ----------------------

TEST(CudaForwardTool, DeviceCudaWithoutGpuIsExit3WithOneErrorLine) {
  if (test::gpu_visible()) GTEST_SKIP() << "a CUDA device is visible: the no-device error cannot be produced";
  const std::string m = tiny_model("cf-nodev", tiny_spec(false, false, 30), "");
  const std::string ids = ids_file(m, test::random_tokens(64, 128, 5));
  const test::ToolRun r =
      test::run_tool(test::tool_path("mpq-eval") + " --model " + m + " --tokens " + ids + " --ctx 32 --device cuda");
  EXPECT_EQ(r.rc, 3) << r.out;
  const std::vector<std::string> errs = test::error_lines(r.out);
  ASSERT_EQ(errs.size(), 1u) << r.out;
  EXPECT_NE(errs[0].find("mpq-eval: error: --device cuda:"), std::string::npos) << errs[0];
}

TEST(CudaForwardTool, DeviceCudaWithActivationQuantizationIsUsageError) {
  const std::string m = tiny_model("cf-act", tiny_spec(false, false, 31), "");
  const std::string ids = ids_file(m, test::random_tokens(64, 128, 6));
  const test::ToolRun r = test::run_tool(test::tool_path("mpq-eval") + " --model " + m + " --tokens " + ids +
                                         " --ctx 32 --device cuda --act fp8");
  EXPECT_EQ(r.rc, 2) << r.out;
  const std::vector<std::string> errs = test::error_lines(r.out);
  ASSERT_EQ(errs.size(), 1u) << r.out;
  EXPECT_NE(errs[0].find("--act fp8 needs --device cpu"), std::string::npos) << errs[0];
  // A device name outside cpu|cuda is a CLI usage error.
  EXPECT_EQ(test::run_tool(test::tool_path("mpq-eval") + " --model " + m + " --tokens " + ids + " --device tpu").rc, 2);
}

TEST(CudaForwardTool, JsonRecordsTheDevice) {
  const std::string m = tiny_model("cf-json", tiny_spec(false, false, 32), "");
  const std::string ids = ids_file(m, test::random_tokens(64, 128, 7));
  const std::string js = m + "/e.json";
  const test::ToolRun r =
      test::run_tool(test::tool_path("mpq-eval") + " -q --model " + m + " --tokens " + ids + " --ctx 32 --json " + js);
  ASSERT_EQ(r.rc, 0) << r.out;
  const nlohmann::json j = read_json(js);
  EXPECT_EQ(j["device"], "cpu");  // the default
  EXPECT_EQ(j["device_name"], "cpu");
}

}  // namespace
}  // namespace mpq
