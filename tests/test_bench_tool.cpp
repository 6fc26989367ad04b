// mpq-bench (lib/bench, tools/mpq-bench): the dense baselines against naive loops, the order
// statistics and rotation rule by hand, the format labels, and the tool end to end on tiny
// shapes: the JSON's fields, bytes from the layouts' formulas, GB/s x time = bytes, speedups
// from the medians, the latency table (one entry per shape and candidate), and the exit codes
// of bad flags and of --device cuda without CUDA. No timing is asserted.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

#include "lib/bench/bench.h"
#include "lib/bench/dense_cpu.h"
#include "lib/common/error.h"
#include "lib/numeric/codecs.h"
#include "tests/test_util.h"
#ifdef MPQ_HAVE_CUDA
#include "kernels/cuda/dequant.h"  // device_count
#endif

namespace mpq {
namespace {

std::string bench_tool() { return test::tools_dir() + "/mpq-bench"; }

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

std::vector<float> randoms(std::size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = u(g);
  return v;
}

// Naive double-precision Y = X W^T.
std::vector<double> naive(const std::vector<float>& w, const std::vector<float>& X, int64_t batch, int64_t rows,
                          int64_t cols) {
  std::vector<double> Y(static_cast<std::size_t>(batch * rows));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0;
      for (int64_t j = 0; j < cols; ++j)
        s += static_cast<double>(w[static_cast<std::size_t>(r * cols + j)]) * X[static_cast<std::size_t>(b * cols + j)];
      Y[static_cast<std::size_t>(b * rows + r)] = s;
    }
  return Y;
}

TEST(BenchDense, F16AndF32ProductsMatchNaiveLoops) {
  for (int64_t batch : {1, 3, 16})
    for (int64_t cols : {7, 64, 133}) {
      const int64_t rows = 37;
      std::vector<float> w = randoms(static_cast<std::size_t>(rows * cols), 1);
      std::vector<uint16_t> h(w.size());
      std::vector<float> wh(w.size());  // the fp16-rounded weights the f16 product must use
      for (std::size_t i = 0; i < w.size(); ++i) {
        h[i] = fp32_to_fp16(w[i]);
        wh[i] = fp16_to_fp32(h[i]);
      }
      const std::vector<float> X = randoms(static_cast<std::size_t>(batch * cols), 2);
      std::vector<float> y16(static_cast<std::size_t>(batch * rows)), y32(y16.size());
      bench::f16_gemm(h.data(), X.data(), batch, rows, cols, y16.data());
      bench::f32_gemm(w.data(), X.data(), batch, rows, cols, y32.data());
      const std::vector<double> ref16 = naive(wh, X, batch, rows, cols), ref32 = naive(w, X, batch, rows, cols);
      for (std::size_t i = 0; i < y16.size(); ++i) {
        EXPECT_NEAR(y16[i], ref16[i], 1e-4 * std::sqrt(static_cast<double>(cols))) << "f16 batch " << batch << " cols " << cols << " i " << i;
        EXPECT_NEAR(y32[i], ref32[i], 1e-4 * std::sqrt(static_cast<double>(cols))) << "f32 batch " << batch << " cols " << cols << " i " << i;
      }
    }
}

TEST(BenchDense, ParallelMemcpyCopiesEveryByte) {
  std::vector<uint8_t> src(1000003), dst(src.size(), 0);
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 7 + 3);
  bench::parallel_memcpy(dst.data(), src.data(), src.size());
  EXPECT_EQ(src, dst);
  EXPECT_GT(bench::cpu_copy_bandwidth_gbps(1 << 20, 2), 0.0);
  EXPECT_THROW(bench::cpu_copy_bandwidth_gbps(0, 2), Error);
}

TEST(BenchStats, OrderStatisticsByHand) {
  const bench::Stats s = bench::summarize_us({5, 1, 3, 2, 4});
  EXPECT_DOUBLE_EQ(s.median_us, 3);
  EXPECT_DOUBLE_EQ(s.p25_us, 2);
  EXPECT_DOUBLE_EQ(s.p75_us, 4);
  EXPECT_DOUBLE_EQ(s.min_us, 1);
  EXPECT_DOUBLE_EQ(s.max_us, 5);
  EXPECT_EQ(s.reps, 5);
  // Even count: median halfway between the middle two; quartiles interpolated (positions
  // 0.75 and 2.25 of 0..3).
  const bench::Stats e = bench::summarize_us({10, 40, 20, 30});
  EXPECT_DOUBLE_EQ(e.median_us, 25);
  EXPECT_DOUBLE_EQ(e.p25_us, 17.5);
  EXPECT_DOUBLE_EQ(e.p75_us, 32.5);
  EXPECT_THROW(bench::summarize_us({}), Error);
}

TEST(BenchStats, RotationCopies) {
  const std::size_t MiB = std::size_t{1} << 20;
  EXPECT_EQ(bench::rotation_copies(100 * MiB, 512 * MiB, 4096 * MiB), 6);   // ceil(5.12)
  EXPECT_EQ(bench::rotation_copies(400 * MiB, 512 * MiB, 4096 * MiB), 2);   // at least 2
  EXPECT_EQ(bench::rotation_copies(3000 * MiB, 512 * MiB, 4096 * MiB), 1);  // the cap wins
  EXPECT_EQ(bench::rotation_copies(16, 512 * MiB, 4096 * MiB), 4096);       // at most 4096
}

TEST(BenchFormats, LabelsAndCandidates) {
  const bench::FormatSpec a = bench::parse_format("squeezellm-3bit");
  EXPECT_EQ(a.format, "squeezellm");
  EXPECT_EQ(a.params.bits, 3);
  EXPECT_EQ(a.params.outlier_pct, 0.0);
  EXPECT_EQ(a.params.sensitive_pct, 0.0);
  const bench::FormatSpec b = bench::parse_format("squeezellm-2bit-sparse");
  EXPECT_EQ(b.params.bits, 2);
  EXPECT_DOUBLE_EQ(b.params.outlier_pct, 0.45);
  EXPECT_DOUBLE_EQ(b.params.sensitive_pct, 0.05);
  EXPECT_DOUBLE_EQ(bench::parse_format("fgmp-30").fp8_fraction, 0.30);
  EXPECT_EQ(bench::parse_format("uniform-4bit").format, "uniform");
  EXPECT_DOUBLE_EQ(bench::parse_format("fgmp").fp8_fraction, 0.30);  // the grammar's default
  for (const char* bad : {"uniform-3bit-sparse", "squeezellm-5bit", "fgmp-101", "fgmp-", "source", "int5", ""}) {
    try {
      bench::parse_format(bad);
      ADD_FAILURE() << bad;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kUsage) << bad;
    }
  }
  EXPECT_EQ(bench::candidate_label("f16", "f16"), "source");
  EXPECT_EQ(bench::candidate_label("f32", "f16"), "");
  EXPECT_EQ(bench::candidate_label("f32", "f32"), "source");
  EXPECT_EQ(bench::candidate_label("fgmp-10", "f16"), "fgmp-10");
  EXPECT_TRUE(bench::unsupported_reason(bench::parse_format("fp8"), bench::Device::kCpu).empty());  // runtime kernels
  EXPECT_TRUE(bench::unsupported_reason(bench::parse_format("nvfp4"), bench::Device::kCpu).empty());
  EXPECT_TRUE(bench::unsupported_reason(bench::parse_format("fp8"), bench::Device::kCuda).empty());
  EXPECT_FALSE(bench::unsupported_reason(bench::parse_format("f32"), bench::Device::kCuda).empty());
  EXPECT_EQ(bench::parse_shape("4096x11008").cols, 11008);
  EXPECT_THROW(bench::parse_shape("4096*11008"), Error);
  EXPECT_THROW(bench::parse_shape("0x5"), Error);
}

// Bytes of one format on [R, C], from the layouts of lib/quant (squeezellm.h, fgmp.h),
// computed here independently of the quantizers. Sparse squeezellm: the lower bound (only
// the 0.45% outliers; the Fisher-sensitive 0.05% add up to as many again).
std::size_t expected_bytes(const std::string& f, int64_t R, int64_t C) {
  const auto rc = static_cast<std::size_t>(R * C);
  if (f == "f16") return 2 * rc;
  if (f == "f32") return 4 * rc;
  if (f == "fp8") return rc + 4;  // E4M3 codes + the fp32 tensor scale
  if (f.rfind("squeezellm-", 0) == 0 || f.rfind("uniform-", 0) == 0) {
    const int b = f[f.find('-') + 1] - '0';
    std::size_t n = static_cast<std::size_t>(R * b * ((C + 7) / 8) + R * (2 << b) + 4 * (R + 1));
    if (f.find("sparse") != std::string::npos) n += 4 * static_cast<std::size_t>(std::llround(0.0045 * static_cast<double>(rc)));
    return n;
  }
  if (f == "fgmp-30") {
    const int64_t nb = (C + 15) / 16, n8 = std::llround(0.30 * static_cast<double>(R * nb)), n4 = R * nb - n8;
    return static_cast<std::size_t>(R * ((nb + 7) / 8) + 4 * (R + 1) + 9 * n4 + 16 * n8 + 8);
  }
  ADD_FAILURE() << f;
  return 0;
}

TEST(BenchTool, CpuRunWritesJsonAndLatencyTable) {
  const std::string dir = test::scratch_dir("bench_tool");
  const std::string json = dir + "/bench.json", lat = dir + "/latency.json";
  std::string out;
  const int rc = test::run_command(
      bench_tool() + " --device cpu --shapes 64x48,40x200 --formats f32,squeezellm-3bit,squeezellm-3bit-sparse,"
                     "uniform-4bit,fgmp-30,fp8 --batches 1,4 --reps 3 --warmup 1 --rotate-mb 1 --threads 2 --json " +
          json + " --latency-table " + lat,
      &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("median_us"), std::string::npos) << out;  // the human table

  const nlohmann::json j = read_json(json);
  for (const char* k : {"tool", "version", "device", "device_kind", "threads", "copy_bandwidth_gbps",
                        "load_average_start", "load_average_end", "reps", "warmup", "rotate_bytes", "results", "skipped"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["device_kind"], "cpu");
  EXPECT_EQ(j["threads"], 2);
  EXPECT_GT(j["copy_bandwidth_gbps"].get<double>(), 0.0);
  EXPECT_EQ(j["skipped"].size(), 0u);  // every format has a CPU kernel

  // f16 is measured though not asked for: 2 shapes x 7 formats x 2 batches.
  const std::vector<std::string> formats{"f16", "f32", "squeezellm-3bit", "squeezellm-3bit-sparse", "uniform-4bit", "fgmp-30", "fp8"};
  ASSERT_EQ(j["results"].size(), 2u * formats.size() * 2u);
  std::map<std::tuple<int64_t, int64_t, std::string, int>, double> median;
  for (const auto& m : j["results"]) {
    for (const char* k : {"rows", "cols", "format", "batch", "weight_bytes", "bpw", "copies", "kernel", "median_us",
                          "p25_us", "p75_us", "min_us", "max_us", "reps", "gbps", "copy_fraction", "speedup_vs_f16"})
      ASSERT_TRUE(m.contains(k)) << k << " in " << m.dump();
    const int64_t R = m["rows"], C = m["cols"];
    const std::string f = m["format"];
    const double bytes = m["weight_bytes"].get<double>(), med = m["median_us"];
    median[{R, C, f, m["batch"].get<int>()}] = med;
    EXPECT_EQ(m["reps"], 3);
    EXPECT_LE(m["min_us"].get<double>(), m["p25_us"].get<double>());
    EXPECT_LE(m["p25_us"].get<double>(), med);
    EXPECT_LE(med, m["p75_us"].get<double>());
    EXPECT_LE(m["p75_us"].get<double>(), m["max_us"].get<double>());
    // GB/s x time = bytes (1e9 bytes/s x 1e-6 s).
    EXPECT_NEAR(m["gbps"].get<double>() * med * 1e3, bytes, 1e-6 * bytes) << m.dump();
    EXPECT_NEAR(m["copy_fraction"].get<double>(), m["gbps"].get<double>() / j["copy_bandwidth_gbps"].get<double>(), 1e-9);
    EXPECT_NEAR(m["bpw"].get<double>(), 8 * bytes / static_cast<double>(R * C), 1e-9);
    const std::size_t want = expected_bytes(f, R, C);
    if (f.find("sparse") != std::string::npos) {
      EXPECT_GE(bytes, want) << f;
      EXPECT_LE(bytes, want + 4 * std::llround(0.0005 * static_cast<double>(R * C))) << f;
    } else {
      EXPECT_EQ(bytes, want) << f << " " << R << "x" << C;
    }
    EXPECT_GE(m["copies"].get<int>(), 2);
  }
  for (const auto& m : j["results"]) {
    const double base = median.at({m["rows"], m["cols"], "f16", m["batch"].get<int>()});
    EXPECT_NEAR(m["speedup_vs_f16"].get<double>(), base / m["median_us"].get<double>(), 1e-9);
  }

  // The latency table: batch 1, one entry per (shape, candidate); f16 stands for "source"
  // (--source f16 is the default), f32 is no candidate.
  const nlohmann::json t = read_json(lat);
  EXPECT_FALSE(t["device"].get<std::string>().empty());
  EXPECT_EQ(t["batch"], 1);
  std::set<std::tuple<int64_t, int64_t, std::string>> seen;
  for (const auto& e : t["entries"]) {
    const std::string cand = e["candidate"];
    const int64_t R = e["rows"], C = e["cols"];
    EXPECT_TRUE(seen.insert({R, C, cand}).second) << "duplicate " << e.dump();
    const std::string f = cand == "source" ? "f16" : cand;
    EXPECT_DOUBLE_EQ(e["us"].get<double>(), median.at({R, C, f, 1}));
  }
  for (auto [R, C] : {std::pair<int64_t, int64_t>{64, 48}, {40, 200}})
    for (const char* cand : {"source", "squeezellm-3bit", "squeezellm-3bit-sparse", "uniform-4bit", "fgmp-30", "fp8"})
      EXPECT_TRUE(seen.count({R, C, cand})) << R << "x" << C << " " << cand;
  EXPECT_EQ(seen.size(), 12u);
}

TEST(BenchTool, BadFlagsAreUsageErrors) {
  const std::string dir = test::scratch_dir("bench_flags");
  const std::string base = bench_tool() + " --device cpu --shapes 16x16 --reps 1 --rotate-mb 1";
  for (const std::string& flags : {std::string(" --formats f16,int5"), std::string(" --formats fgmp-150"),
                                   std::string(" --shapes 16y16"), std::string(" --batches 17"),
                                   std::string(" --e2e"), std::string(" --batches 1 --latency-table " + dir + "/l.json --latency-batch 4"),
                                   std::string(" --reps 0")}) {
    std::string out;
    EXPECT_EQ(test::run_command(base + flags, &out), 2) << flags << "\n" << out;
    EXPECT_NE(out.find("mpq-bench: error:"), std::string::npos) << out;
  }
  std::string out;
  EXPECT_EQ(test::run_command(bench_tool() + " --device tpu", &out), 2) << out;
  EXPECT_EQ(test::run_command(base + " --json /nonexistent-dir/b.json", &out), 4) << out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/l.json"));
}

TEST(BenchTool, CudaWithoutDeviceIsAnInputError) {
#ifdef MPQ_HAVE_CUDA
  if (cuda::device_count() > 0) {
    // A GPU is here: the CUDA path must run on a tiny shape instead.
    std::string out;
    EXPECT_EQ(test::run_command(bench_tool() + " --device cuda --shapes 64x48 --formats fgmp-30,nvfp4,fp8 "
                                               "--batches 1,4 --reps 3 --rotate-mb 1",
                                &out),
              0)
        << out;
    return;
  }
#endif
  std::string out;
  EXPECT_EQ(test::run_command(bench_tool() + " --device cuda --shapes 16x16 --reps 1", &out), 3) << out;
  EXPECT_NE(out.find("mpq-bench: error: --device cuda: "), std::string::npos) << out;
}

}  // namespace
}  // namespace mpq
