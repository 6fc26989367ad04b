// CUDA dequantization kernels against the CPU scalar reference (the quantizers' decode).
// Skips when mpq was built without CUDA or no GPU is visible.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "lib/quant/fp8.h"
#include "lib/quant/nvfp4.h"

#include "tests/test_util.h"

#ifdef MPQ_HAVE_CUDA
#include "kernels/cuda/dequant.h"
#endif

namespace mpq {
namespace {

[[maybe_unused]] std::vector<float> random_weights(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::student_t_distribution<float> heavy(4.0f);  // heavy tails, like real weights
  std::vector<float> w(static_cast<std::size_t>(n));
  for (auto& x : w) x = 0.02f * heavy(rng);
  return w;
}


TEST(CudaDequant, Nvfp4MatchesCpuReference) {
  MPQ_REQUIRE_GPU();
#ifdef MPQ_HAVE_CUDA
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{64, 172}, {33, 4096}, {7, 17}}) {
    const auto w = random_weights(rows * cols, static_cast<uint64_t>(rows * cols));
    const Nvfp4Quantizer q;
    const PackedTensor p = q.encode("t", w.data(), rows, cols);
    std::vector<float> cpu(w.size()), gpu(w.size());
    q.decode(p, cpu.data());
    float s2;
    std::memcpy(&s2, p.part("weight_scale_2").bytes.data(), 4);
    cuda::nvfp4_dequantize(p.part("weight").bytes.data(), p.part("weight_scale").bytes.data(), s2, rows, cols,
                           gpu.data());
    for (std::size_t i = 0; i < w.size(); ++i) ASSERT_EQ(cpu[i], gpu[i]) << "element " << i;
  }
#endif
}

TEST(CudaDequant, Fp8MatchesCpuReference) {
  MPQ_REQUIRE_GPU();
#ifdef MPQ_HAVE_CUDA
  const int64_t rows = 96, cols = 300;
  const auto w = random_weights(rows * cols, 5);
  const Fp8Quantizer q;
  const PackedTensor p = q.encode("t", w.data(), rows, cols);
  std::vector<float> cpu(w.size()), gpu(w.size());
  q.decode(p, cpu.data());
  float s;
  std::memcpy(&s, p.part("weight_scale").bytes.data(), 4);
  cuda::fp8_dequantize(p.part("weight").bytes.data(), s, rows * cols, gpu.data());
  for (std::size_t i = 0; i < w.size(); ++i) ASSERT_EQ(cpu[i], gpu[i]) << "element " << i;
#endif
}

}  // namespace
}  // namespace mpq
