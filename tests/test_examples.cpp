// The examples a user copies: examples/Makefile over layer shards (make -j 2) equal to
// single runs, the SLURM job-array pipeline on a private single-node SLURM
// (examples/slurm/test-local.sh; skipped with its reason where SLURM cannot start), and the
// exit codes of the CI perplexity gate examples/ci-gate.sh.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "tests/test_util.h"

namespace mpq {
namespace {
namespace fs = std::filesystem;

const auto run = &test::run_tool;

std::string examples_dir() { return (fs::path(__FILE__).parent_path().parent_path() / "examples").string(); }

// A small sharded bf16 model and token ids beside it.
std::string model_with_tokens(const std::string& tag, std::string* ids) {
  const std::string dir = test::scratch_dir(tag);
  const test::ToolRun r = run(test::tool_path("mpq-make-random-model") + " -q --out " + dir +
                              "/model --hidden 64 --intermediate 96 --layers 5 --heads 4 --kv-heads 2 --vocab 256"
                              " --dtype bf16 --max-shard-size 60KB --std 0.08");
  EXPECT_EQ(r.rc, 0) << r.out;
  const std::vector<int32_t> t = test::random_tokens(4000, 256, 11);
  std::vector<uint8_t> b(t.size() * 4);
  std::memcpy(b.data(), t.data(), b.size());
  *ids = dir + "/ids.i32";
  test::write_bytes(*ids, b);
  return dir + "/model";
}

TEST(Examples, MakefileOverLayerShardsEqualsSingleRuns) {
  std::string ids;
  const std::string m = model_with_tokens("ex-make", &ids);
  const std::string out = test::scratch_dir("ex-make-out");
  const std::string vars = " MPQ=" + test::tools_dir() + " MODEL=" + m + " CALIB=" + ids + " OUT=" + out +
                           " SHARDS=3 SAMPLES=6 SEQ_LEN=64 THREADS=1 FORMAT=squeezellm SHARD_SIZE=20KB";
  test::ToolRun r = run("make -s -j 2 -f " + examples_dir() + "/Makefile" + vars + " pack");
  ASSERT_EQ(r.rc, 0) << r.out;
  for (const char* range : {"0", "1", "2"}) EXPECT_TRUE(fs::exists(out + "/sens-parts/" + range + ".safetensors"));
  r = run("make -s -f " + examples_dir() + "/Makefile" + vars + " check");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("sens.safetensors: identical to the single run"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("packed/: identical to the single run (3 shards of 5 layers)"), std::string::npos) << r.out;
  r = run("make -s -f " + examples_dir() + "/Makefile" + vars + " TOKENS=" + ids + " CTX=64 eval");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(fs::exists(out + "/eval.json"));
}

TEST(Examples, SlurmJobArraysOverLayerShardsEqualSingleRuns) {
  const test::ToolRun r = run("bash " + examples_dir() + "/slurm/test-local.sh " + test::tools_dir());
  if (r.rc == 77) GTEST_SKIP() << r.out.substr(r.out.find("SKIP"));
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("PASS: SLURM job arrays over 4 layer shards give the bytes of single runs"), std::string::npos)
      << r.out;
}

TEST(Examples, CiGateExitCodes) {
  std::string ids;
  const std::string m = model_with_tokens("ex-gate", &ids);
  const std::string work = test::scratch_dir("ex-gate-out");
  test::ToolRun r = run(test::tool_path("mpq-eval") + " -q --model " + m + " --tokens " + ids +
                        " --ctx 64 --max-tokens 1280 --json " + work + "/base.json");
  ASSERT_EQ(r.rc, 0) << r.out;
  std::ifstream in(work + "/base.json");
  const double base = nlohmann::json::parse(in)["ppl"].get<double>();
  const std::string gate = "bash " + examples_dir() + "/ci-gate.sh --mpq " + test::tools_dir() + " --model " + m +
                           " --tokens " + ids + " --ctx 64 --max-tokens 1280 --format fp8 --work " + work + "/g";
  r = run(gate + " --baseline-ppl " + std::to_string(base) + " --max-increase-pct 5");
  EXPECT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("ci-gate: PASS"), std::string::npos) << r.out;
  // A baseline the packed model cannot meet: the gate trips with mpq-eval's exit code 5.
  r = run(gate + " --baseline-ppl " + std::to_string(base / 2) + " --max-increase-pct 5");
  EXPECT_EQ(r.rc, 5) << r.out;
  EXPECT_NE(r.out.find("ci-gate: FAIL"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(work + "/g/eval.json"));
  r = run(gate + " --max-increase-pct 5");  // no baseline
  EXPECT_EQ(r.rc, 2) << r.out;
  r = run("bash " + examples_dir() + "/ci-gate.sh --mpq " + test::tools_dir() + " --model " + m +
          "/nope --tokens " + ids + " --baseline-ppl 10 --max-increase-pct 1");
  EXPECT_EQ(r.rc, 3) << r.out;
}

}  // namespace
}  // namespace mpq
