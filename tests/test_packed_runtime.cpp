// Packed checkpoints run through the CPU kernels without expanding the weights to fp32 --
// squeezellm through the LUT kernels (kernels/cpu/lut_gemv.h), fgmp through the FGMP kernels
// (kernels/cpu/fgmp_gemv.h) -- and match the expanded reference within 1e-5 relative in
// logits.
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lib/model/llama.h"
#include "tests/test_util.h"

namespace mpq {
namespace {

std::string tool(const std::string& name) { return test::tools_dir() + "/" + name; }

struct PackCase {
  std::string format;  ///< mpq-pack --format
  std::string args;    ///< further mpq-pack flags
  int bits;            ///< squeezellm index bits (0 for fgmp)
};

class PackedRuntime : public ::testing::TestWithParam<PackCase> {};

TEST_P(PackedRuntime, KernelPathMatchesExpandedLogits) {
  const PackCase pc = GetParam();
  const int bits = pc.bits;
  std::string tag = "prt-" + pc.format + pc.args;
  for (char& ch : tag)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '-';
  const std::string m = test::scratch_dir(tag + "-src");
  test::TinyLlamaSpec spec;
  spec.intermediate = 40;  // cols 40 for down_proj: a partial group of 8 indices / block of 16
  spec.seed = 7 + static_cast<uint64_t>(bits) + pc.args.size();
  test::write_tiny_llama(m, spec);
  const std::string dir = test::scratch_dir(tag + "-out") + "/p";
  std::string out;
  ASSERT_EQ(test::run_command(tool("mpq-pack") + " --model " + m + " --format " + pc.format + " " + pc.args +
                                  " --out " + dir + " -q", &out), 0) << out;

  const LlamaModel kernel = LlamaModel::load(dir);
  const LlamaModel expanded = LlamaModel::load(dir, LoadOptions{/*expand_packed=*/true});
  int64_t dense_params = 0;
  for (std::size_t l = 0; l < kernel.weights().layers.size(); ++l)
    for (std::size_t i = 0; i < 7; ++i) {
      const Linear& k = kernel.weights().layers[l].linear[i];
      const Linear& e = expanded.weights().layers[l].linear[i];
      const auto shape = linear_shape(kernel.config(), static_cast<int>(i));
      ASSERT_EQ(k.format, pc.format) << l << " " << i;
      EXPECT_EQ(k.w.size(), 0) << l << " " << i;  // no fp32 copy of the weights
      ASSERT_NE(k.packed, nullptr) << l << " " << i;
      EXPECT_EQ(k.packed->is_fgmp(), pc.format == "fgmp");
      if (!k.packed->is_fgmp()) {
        EXPECT_EQ(k.packed->view.bits, bits);
      }
      EXPECT_EQ(k.rows, shape[0]);
      EXPECT_EQ(k.cols, shape[1]);
      EXPECT_EQ(k.numel(), shape[0] * shape[1]);
      EXPECT_EQ(e.packed, nullptr);
      EXPECT_EQ(e.w.rows(), shape[0]);
      EXPECT_EQ(e.w.cols(), shape[1]);
      EXPECT_EQ(e.numel(), e.w.size());
      EXPECT_EQ(k.stored_bytes, e.stored_bytes);
      dense_params += shape[0] * shape[1];
    }

  const std::vector<int32_t> tok = test::random_tokens(48, spec.vocab, 11 + spec.seed);
  for (int64_t T : {int64_t{1}, int64_t{48}}) {
    const MatrixRM a = kernel.forward(tok.data(), T);
    const MatrixRM b = expanded.forward(tok.data(), T);
    ASSERT_EQ(a.rows(), b.rows());
    ASSERT_EQ(a.cols(), b.cols());
    const float scale = b.cwiseAbs().maxCoeff();
    ASSERT_GT(scale, 0.0f);
    EXPECT_LE((a - b).cwiseAbs().maxCoeff(), 1e-5f * scale) << pc.format << " " << pc.args << " T " << T;
  }

  // mpq-eval on the packed folder: runs, and counts the logical (dense) weights.
  std::vector<uint8_t> ib(tok.size() * 4);
  for (std::size_t i = 0; i < tok.size(); ++i)
    for (int s = 0; s < 4; ++s) ib[i * 4 + static_cast<std::size_t>(s)] = static_cast<uint8_t>(static_cast<uint32_t>(tok[i]) >> (8 * s));
  const std::string ids = m + "/ids.i32";
  test::write_bytes(ids, ib);
  const std::string js = test::scratch_dir(tag + "-json") + "/e.json";
  ASSERT_EQ(test::run_command(tool("mpq-eval") + " --model " + dir + " --tokens " + ids +
                                  " --ctx 16 -q --json " + js, &out), 0) << out;
  std::ifstream jf(js);
  const auto j = nlohmann::json::parse(jf);
  EXPECT_EQ(j["linear_params"].get<int64_t>(), dense_params);
  EXPECT_TRUE(std::isfinite(j["mean_nll"].get<double>()));
}

INSTANTIATE_TEST_SUITE_P(Formats, PackedRuntime,
                         ::testing::Values(PackCase{"squeezellm", "--bits 3", 3}, PackCase{"squeezellm", "--bits 4", 4},
                                           PackCase{"fgmp", "--fp8-fraction 0", 0},
                                           PackCase{"fgmp", "--fp8-fraction 0.3", 0},
                                           PackCase{"fgmp", "--fp8-fraction 1", 0}));

}  // namespace
}  // namespace mpq
