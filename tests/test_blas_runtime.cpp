// OpenBLAS kernel selection (lib/common/blas_runtime.h).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/cpu/cpu_features.h"
#include "lib/common/blas_runtime.h"
#include "tests/test_util.h"

namespace mpq {
namespace {

TEST(BlasRuntime, OverrideTable) {
  // The fallback of a CPU newer than the library gets the best kernels the CPU executes.
  EXPECT_EQ(blas_core_override("Prescott", true, true), "SkylakeX");
  EXPECT_EQ(blas_core_override("Prescott", false, true), "Haswell");
  EXPECT_EQ(blas_core_override("Nehalem", false, true), "Haswell");
  EXPECT_EQ(blas_core_override("Haswell", true, true), "SkylakeX");
  EXPECT_EQ(blas_core_override("Zen", true, true), "SkylakeX");  // Zen 4 in a library that predates it
  // A choice at least as good is left alone.
  EXPECT_EQ(blas_core_override("SkylakeX", true, true), "");
  EXPECT_EQ(blas_core_override("Cooperlake", true, true), "");
  EXPECT_EQ(blas_core_override("SapphireRapids", true, true), "");
  EXPECT_EQ(blas_core_override("Haswell", false, true), "");
  EXPECT_EQ(blas_core_override("Zen", false, true), "");
  EXPECT_EQ(blas_core_override("Prescott", false, false), "");
  EXPECT_EQ(blas_core_override("", true, true), "");  // no OpenBLAS
}

// tests/main.cpp calls ensure_blas_core() like every tool: the process runs kernels that
// match the CPU.
TEST(BlasRuntime, ThisProcessRunsTheCpusKernels) {
  if (std::getenv("MPQ_NO_BLAS_CORETYPE")) GTEST_SKIP() << "MPQ_NO_BLAS_CORETYPE is set";
  const std::string core = blas_core_name();
  if (core.empty()) GTEST_SKIP() << "built without OpenBLAS";
  const CpuFeatures& f = cpu_features();
  EXPECT_EQ(blas_core_override(core, f.avx512, f.avx2), "")
      << "OpenBLAS runs " << core << " kernels (OPENBLAS_CORETYPE="
      << (std::getenv("OPENBLAS_CORETYPE") ? std::getenv("OPENBLAS_CORETYPE") : "unset") << ")";
}

// A tool started without OPENBLAS_CORETYPE reports the kernels it ran in --json.
TEST(BlasRuntime, ToolsReportTheirKernels) {
  if (blas_core_name().empty()) GTEST_SKIP() << "built without OpenBLAS";
  const std::string dir = test::scratch_dir("blas_runtime");
  test::write_tiny_llama(dir + "/m", test::TinyLlamaSpec{});
  const std::vector<int32_t> ids = test::random_tokens(32, 128, 3);
  std::vector<uint8_t> bytes(ids.size() * sizeof(int32_t));
  std::memcpy(bytes.data(), ids.data(), bytes.size());
  test::write_bytes(dir + "/ids.i32", bytes);
  const test::ToolRun r = test::run_tool("env -u OPENBLAS_CORETYPE -u MPQ_NO_BLAS_CORETYPE " + test::tool_path("mpq-eval") +
                                         " --model " + dir + "/m --tokens " + dir + "/ids.i32 --ctx 16 -q --json " + dir +
                                         "/e.json");
  ASSERT_EQ(r.rc, 0) << r.out;
  const std::vector<uint8_t> js = test::read_bytes(dir + "/e.json");
  const nlohmann::json j = nlohmann::json::parse(js.begin(), js.end());
  const std::string core = j.at("blas_core").get<std::string>();
  const CpuFeatures& f = cpu_features();
  EXPECT_EQ(blas_core_override(core, f.avx512, f.avx2), "") << "mpq-eval ran OpenBLAS's " << core << " kernels";
}

}  // namespace
}  // namespace mpq
