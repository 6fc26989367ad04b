// CUDA GEMV / small-batch kernels (kernels/cuda/gemv.h) against the CPU scalar references:
// every format (dense fp16 through cuBLAS, FP8, NVFP4, SqueezeLLM 2/3/4-bit with and without
// its CSR part, FGMP at 0 / 30 / 100 % FP8 blocks) on random shapes (rows 1, cols not a
// multiple of 4, 16, 32 or 128) and batches 1, 3, 9, 16, each output compared under a
// per-format tolerance relative to sum_c |w[r, c] x[b, c]|. Plus the argument and input
// errors, the timing helpers, and the kernels' bit-level decoders (gemv_decode.h), which are
// plain integer code and checked exhaustively here on the host.
//
// GPU tests skip when mpq was built without CUDA or no GPU is visible; the decoder tests and
// the upload checks (which reject a bad tensor before touching the device) run everywhere
// they are compiled. On a GPU machine: scripts/run-gpu.sh.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/fgmp_gemv.h"
#include "kernels/cpu/lut_gemv.h"
#include "kernels/cuda/gemv_decode.h"
#include "lib/common/error.h"
#include "lib/numeric/codecs.h"
#include "lib/quant/fgmp.h"
#include "lib/quant/quantizer.h"
#include "lib/quant/squeezellm.h"

#include "tests/test_util.h"

#ifdef MPQ_HAVE_CUDA
#include "kernels/cuda/dequant.h"  // device_count()
#include "kernels/cuda/gemv.h"
#endif

namespace mpq {
namespace {

#ifdef MPQ_HAVE_CUDA
#define MPQ_REQUIRE_CUDA_BUILD() (void)0
#else
#define MPQ_REQUIRE_CUDA_BUILD() GTEST_SKIP() << "mpq built without CUDA (MPQ_CUDA=OFF or no nvcc)"
#endif

// ---------------------------------------------------------------------------------------
// Bit-level decoders, on the host (no GPU needed).
// ---------------------------------------------------------------------------------------

TEST(CudaGemvDecode, E2m1PairsEqualTheCodecTableTimes2ToMinus14) {
  std::mt19937 rng(7);
  for (uint32_t lo = 0; lo < 16; ++lo)
    for (uint32_t hi = 0; hi < 16; ++hi)
      for (int trial = 0; trial < 4; ++trial) {
        // Bits outside [0, 4) and [16, 20) are junk the decoder must ignore.
        const uint32_t junk = trial == 0 ? 0u : (rng() & ~0x000F000Fu);
        const uint32_t h = cuda::e2m1x2_to_half2_bits(lo | hi << 16 | junk);
        const float a = fp16_to_fp32(static_cast<uint16_t>(h & 0xFFFF)) * 16384.0f;
        const float b = fp16_to_fp32(static_cast<uint16_t>(h >> 16)) * 16384.0f;
        ASSERT_EQ(a, e2m1_to_fp32(static_cast<uint8_t>(lo))) << "code " << lo;
        ASSERT_EQ(b, e2m1_to_fp32(static_cast<uint8_t>(hi))) << "code " << hi;
        ASSERT_EQ(std::signbit(a), lo >= 8) << "code " << lo;  // -0 keeps its sign
        ASSERT_EQ(std::signbit(b), hi >= 8) << "code " << hi;
      }
}

TEST(CudaGemvDecode, LutGroupIndexReadsTheLsbFirstStream) {
  std::mt19937 rng(11);
  for (int bits : {2, 3, 4}) {
    for (int trial = 0; trial < 200; ++trial) {
      std::vector<uint8_t> bytes(static_cast<std::size_t>(4 * bits));
      for (auto& v : bytes) v = static_cast<uint8_t>(rng());
      uint32_t words[4] = {0, 0, 0, 0};
      for (int i = 0; i < 4 * bits; ++i) words[i / 4] |= static_cast<uint32_t>(bytes[i]) << (8 * (i % 4));
      for (int j = 0; j < 32; ++j) {
        uint32_t want = 0;  // bit t of the stream is bit t % 8 of byte t / 8
        for (int t = 0; t < bits; ++t) {
          const int s = j * bits + t;
          want |= static_cast<uint32_t>((bytes[s / 8] >> (s % 8)) & 1) << t;
        }
        ASSERT_EQ(cuda::lut_group_index(words, j, bits), want) << "bits " << bits << " index " << j;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Helpers for the GPU comparisons.
// ---------------------------------------------------------------------------------------

[[maybe_unused]] std::vector<float> random_weights(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::student_t_distribution<float> heavy(4.0f);  // heavy tails, like real weights
  std::vector<float> w(static_cast<std::size_t>(n));
  for (auto& v : w) v = 0.02f * heavy(rng);
  return w;
}

[[maybe_unused]] std::vector<float> random_x(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(n));
  for (auto& v : x) v = g(rng);
  return x;
}

// Shapes: rows 1; cols a multiple of 16 only, not of 4 (odd), of 4 but not 16, of 16 but not
// 32, of 8 but not 32 or 128; several rounds of 32 units per row; rows not a multiple of 8.
struct Shape {
  int64_t rows, cols;
};
[[maybe_unused]] const std::vector<Shape> kShapes = {{1, 16}, {1, 4100}, {7, 37}, {33, 300}, {20, 48}, {64, 1000}, {130, 4096}};
[[maybe_unused]] const std::vector<int64_t> kBatches = {1, 3, 9, 16};

// Per-format tolerances on |gpu - cpu| / sum_c |w x|. Every packed format accumulates in fp32
// (as do the CPU references): a few ulps times sqrt(cols) leaves a wide margin below the
// 1 / cols that one wrong weight of average size would cost at cols = 4096. The cuBLAS
// baseline rounds x to fp16 (relative error <= 2^-11 per element).
[[maybe_unused]] constexpr double kTolFp32Accum = 3e-5;
[[maybe_unused]] constexpr double kTolF16 = 1.5e-3;

[[maybe_unused]] void expect_error_code(const std::function<void()>& fn, ExitCode code, const std::string& what) {
  try {
    fn();
    ADD_FAILURE() << what << ": no error thrown";
  } catch (const Error& e) {
    EXPECT_EQ(static_cast<int>(e.code()), static_cast<int>(code)) << what << ": " << e.what();
  }
}

// fp64 reference y = W x for one batch row from decoded weights W [rows, cols].
[[maybe_unused]] void dense_reference(const std::vector<float>& w, int64_t rows, int64_t cols, const float* x, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0.0;
    for (int64_t c = 0; c < cols; ++c) s += static_cast<double>(w[r * cols + c]) * x[c];
    y[r] = static_cast<float>(s);
  }
}

#ifdef MPQ_HAVE_CUDA
// Runs L.gemv on x [batch, cols] (copied to the device at `x_offset` floats into its buffer,
// so a nonzero offset misaligns X) and returns Y [batch, rows].
std::vector<float> run_gemv(const cuda::DeviceLinear& L, const std::vector<float>& x, int64_t batch,
                            std::size_t x_offset = 0) {
  cuda::DeviceBuffer dx((x.size() + x_offset) * sizeof(float));
  dx.upload(x.data(), x.size() * sizeof(float), x_offset * sizeof(float));
  std::vector<float> y(static_cast<std::size_t>(batch * L.rows()), std::nanf(""));
  cuda::DeviceBuffer dy(y.size() * sizeof(float));
  dy.upload(y.data(), y.size() * sizeof(float));  // NaN: an output the kernel skips shows up
  L.gemv(static_cast<const float*>(dx.data()) + x_offset, batch, static_cast<float*>(dy.data()));
  cuda::synchronize();
  dy.download(y.data(), y.size() * sizeof(float));
  return y;
}

// Compares L.gemv with `reference` (one batch row: x [cols] -> y [rows]) for every batch in
// kBatches; `w` are the decoded weights [rows, cols] for the error scale sum_c |w x|.
void expect_matches(const cuda::DeviceLinear& L, const std::vector<float>& w,
                    const std::function<void(const float*, float*)>& reference, double tol,
                    const std::string& what, std::size_t x_offset = 0) {
  const int64_t rows = L.rows(), cols = L.cols();
  for (int64_t batch : kBatches) {
    const std::vector<float> x = random_x(batch * cols, static_cast<uint64_t>(rows * 7919 + cols * 31 + batch));
    const std::vector<float> y = run_gemv(L, x, batch, x_offset);
    std::vector<float> ref(static_cast<std::size_t>(rows));
    for (int64_t b = 0; b < batch; ++b) {
      reference(x.data() + b * cols, ref.data());
      for (int64_t r = 0; r < rows; ++r) {
        double scale = 0.0;
        for (int64_t c = 0; c < cols; ++c) scale += std::fabs(static_cast<double>(w[r * cols + c]) * x[b * cols + c]);
        const double err = std::fabs(static_cast<double>(y[b * rows + r]) - ref[r]);
        ASSERT_LE(err, tol * scale + 1e-30) << what << ": batch " << batch << ", b " << b << ", row " << r
                                            << ": gpu " << y[b * rows + r] << ", cpu " << ref[r];
      }
    }
  }
}

std::string shape_name(const Shape& s) { return "[" + std::to_string(s.rows) + " x " + std::to_string(s.cols) + "]"; }

// Encodes random weights of `s` with q, uploads them, and compares with decode() + fp64 matmul
// (or with `reference` when given).
void check_format(const Quantizer& q, const Shape& s, double tol, const std::string& what,
                  std::function<void(const PackedTensor&, const float*, float*)> reference = nullptr,
                  std::size_t x_offset = 0) {
  const std::vector<float> w0 = random_weights(s.rows * s.cols, static_cast<uint64_t>(s.rows * 131 + s.cols));
  const PackedTensor p = q.encode("t", w0.data(), s.rows, s.cols);
  std::vector<float> w(w0.size());
  q.decode(p, w.data());
  const cuda::DeviceLinear L = cuda::DeviceLinear::upload(p);
  ASSERT_EQ(L.rows(), s.rows);
  ASSERT_EQ(L.cols(), s.cols);
  ASSERT_EQ(L.format(), p.format);
  auto ref = [&](const float* x, float* y) {
    if (reference) reference(p, x, y);
    else dense_reference(w, s.rows, s.cols, x, y);
  };
  expect_matches(L, w, ref, tol, what + " " + shape_name(s), x_offset);
}
#endif

// ---------------------------------------------------------------------------------------
// GPU results against the CPU references.
// ---------------------------------------------------------------------------------------

TEST(CudaGemv, F16CublasMatchesFp64Matmul) {
  MPQ_REQUIRE_GPU();
#ifdef MPQ_HAVE_CUDA
  for (const Shape& s : kShapes) {
    const std::vector<float> w0 = random_weights(s.rows * s.cols, static_cast<uint64_t>(s.cols));
    std::vector<uint16_t> h(w0.size());
    std::vector<float> w(w0.size());
    for (std::size_t i = 0; i < w0.size(); ++i) {
      h[i] = fp32_to_fp16(w0[i]);
      w[i] = fp16_to_fp32(h[i]);
    }
    const cuda::DeviceLinear L = cuda::DeviceLinear::upload_f16(h.data(), s.rows, s.cols);
    EXPECT_EQ(L.format(), "f16");
    EXPECT_EQ(L.weight_bytes(), static_cast<std::size_t>(s.rows * s.cols * 2));
    expect_matches(L, w, [&](const float* x, float* y) { dense_reference(w, s.rows, s.cols, x, y); }, kTolF16,
                   "f16 " + shape_name(s));
  }
#endif
}

TEST(CudaGemv, Fp8MatchesDecodeMatmul) {
  MPQ_REQUIRE_GPU();
#ifdef MPQ_HAVE_CUDA
  const auto q = make_quantizer("fp8", {});
  for (const Shape& s : kShapes) check_format(*q, s, kTolFp32Accum, "fp8");
#endif
}

TEST(CudaGemv, Nvfp4MatchesDecodeMatmul) {
  MPQ_REQUIRE_GPU();
#ifdef MPQ_HAVE_CUDA
  const auto q = make_quantizer("nvfp4", {});
  for (const Shape& s : kShapes) check_format(*q, s, kTolFp32Accum, "nvfp4");
  // X one float past a 16-byte boundary: the kernels must take the scalar x path.
  check_format(*q, {33, 300}, kTolFp32Accum, "nvfp4 (misaligned x)", nullptr, 1);
#endif
}

TEST(CudaGemv, SqueezeLlmMatchesLutGemvReference) {
  MPQ_REQUIRE_GPU();
#ifdef MPQ_HAVE_CUDA
  auto lut_ref = [](const PackedTensor& p, const float* x, float* y) { lut_gemv_reference(squeezellm_weight_view(p), x, y); };
  for (int bits : {2, 3, 4})
    for (double outlier_pct : {0.45, 0.0}) {  // with and without the CSR part
      QuantizerParams params;
      params.bits = bits;
      params.outlier_pct = outlier_pct;
      const auto q = make_quantizer("squeezellm", params);
      for (const Shape& s : kShapes)
        check_format(*q, s, kTolFp32Accum,
                     "squeezellm " + std::to_string(bits) + "-bit, outliers " + std::to_string(outlier_pct) + "%",
                     lut_ref);
    }
  // A tensor whose CSR part is forced non-empty on a 1-row layer with odd cols.
  QuantizerParams params;
  params.bits = 3;
  params.outlier_pct = 20.0;
  check_format(*make_quantizer("squeezellm", params), {1, 37}, kTolFp32Accum, "squeezellm 3-bit, 20% sparse", lut_ref);
#endif
}

TEST(CudaGemv, FgmpMatchesFgmpGemvReference) {
  MPQ_REQUIRE_GPU();
#ifdef MPQ_HAVE_CUDA
  auto fgmp_ref = [](const PackedTensor& p, const float* x, float* y) { fgmp_gemv_reference(fgmp_weight_view(p), x, y); };
  for (double fraction : {0.0, 0.3, 1.0}) {
    FgmpParams params;
    params.fp8_fraction = fraction;
    const FgmpQuantizer q(params);
    for (const Shape& s : kShapes)
      check_format(q, s, kTolFp32Accum, "fgmp " + std::to_string(fraction) + " FP8", fgmp_ref);
  }
#endif
}

// ---------------------------------------------------------------------------------------
// Sizes, arguments, errors, timing.
// ---------------------------------------------------------------------------------------

TEST(CudaGemv, WeightBytesAreThePackedBytesWhenNoPaddingIsNeeded) {
  MPQ_REQUIRE_GPU();
#ifdef MPQ_HAVE_CUDA
  const int64_t rows = 16, cols = 256;  // whole units in every format: no row padding
  const std::vector<float> w = random_weights(rows * cols, 3);
  QuantizerParams sq;
  sq.bits = 3;
  const FgmpQuantizer fgmp;
  struct Case {
    const Quantizer* q;
    std::size_t scalar_bytes;  // scalar scales travel as kernel arguments, not device memory
  };
  const auto fp8 = make_quantizer("fp8", {});
  const auto nvfp4 = make_quantizer("nvfp4", {});
  const auto lut = make_quantizer("squeezellm", sq);
  for (const Case& c : {Case{fp8.get(), 4}, Case{nvfp4.get(), 4}, Case{lut.get(), 0}, Case{&fgmp, 8}}) {
    const PackedTensor p = c.q->encode("t", w.data(), rows, cols);
    EXPECT_EQ(cuda::DeviceLinear::upload(p).weight_bytes(), p.bytes() - c.scalar_bytes) << p.format;
  }
#endif
}

TEST(CudaGemv, BatchOutsideOneTo16IsAUsageError) {
  MPQ_REQUIRE_GPU();
#ifdef MPQ_HAVE_CUDA
  const std::vector<float> w = random_weights(8 * 32, 1);
  const cuda::DeviceLinear L = cuda::DeviceLinear::upload(make_quantizer("fp8", {})->encode("t", w.data(), 8, 32));
  std::vector<uint16_t> h(8 * 32, 0);
  const cuda::DeviceLinear F = cuda::DeviceLinear::upload_f16(h.data(), 8, 32);
  cuda::DeviceBuffer x(17 * 32 * sizeof(float)), y(17 * 8 * sizeof(float));
  for (const cuda::DeviceLinear* l : {&L, &F})
    for (int64_t batch : {int64_t{0}, int64_t{17}, int64_t{-1}})
      expect_error_code([&] { l->gemv(static_cast<const float*>(x.data()), batch, static_cast<float*>(y.data())); },
                        ExitCode::kUsage, l->format() + " batch " + std::to_string(batch));
#endif
}

// The upload checks run on the host before any device call, so these run without a GPU.
TEST(CudaGemv, UploadRejectsUnsupportedAndMalformedTensors) {
  MPQ_REQUIRE_CUDA_BUILD();
#ifdef MPQ_HAVE_CUDA
  const int64_t rows = 4, cols = 40;
  const std::vector<float> w = random_weights(rows * cols, 9);
  auto upload = [](const PackedTensor& p) { return [p] { (void)cuda::DeviceLinear::upload(p); }; };

  PackedTensor bad = make_quantizer("fp8", {})->encode("t", w.data(), rows, cols);
  bad.format = "int4";
  expect_error_code(upload(bad), ExitCode::kUsage, "unknown format");

  PackedTensor nv = make_quantizer("nvfp4", {})->encode("t", w.data(), rows, cols);
  PackedTensor missing = nv;
  missing.parts.pop_back();  // weight_scale_2
  expect_error_code(upload(missing), ExitCode::kInput, "nvfp4 without weight_scale_2");
  PackedTensor short_part = nv;
  short_part.parts[0].bytes.pop_back();
  expect_error_code(upload(short_part), ExitCode::kInput, "nvfp4 weight one byte short");
  PackedTensor inf_scale = nv;
  const float inf = INFINITY;
  std::memcpy(inf_scale.parts[2].bytes.data(), &inf, 4);
  expect_error_code(upload(inf_scale), ExitCode::kInput, "nvfp4 infinite weight_scale_2");

  PackedTensor f8 = make_quantizer("fp8", {})->encode("t", w.data(), rows, cols);
  const float nan = std::nanf("");
  std::memcpy(f8.parts[1].bytes.data(), &nan, 4);
  expect_error_code(upload(f8), ExitCode::kInput, "fp8 NaN weight_scale");

  QuantizerParams sq;
  sq.bits = 4;
  sq.outlier_pct = 5.0;
  const PackedTensor lut = make_quantizer("squeezellm", sq)->encode("t", w.data(), rows, cols);
  PackedTensor bad_rowptr = lut;
  for (PackedPart& part : bad_rowptr.parts)
    if (part.suffix == "sparse_rowptr") part.bytes[4] = 0x7F;  // rowptr[1] far past nnz
  expect_error_code(upload(bad_rowptr), ExitCode::kInput, "squeezellm broken rowptr");
  PackedTensor inf_lut = lut;
  for (PackedPart& part : inf_lut.parts)
    if (part.suffix == "lookup_table") {
      part.bytes[0] = 0x00;  // entry 0 = 0x7C00, fp16 +inf
      part.bytes[1] = 0x7C;
    }
  expect_error_code(upload(inf_lut), ExitCode::kInput, "squeezellm infinite LUT entry");

  const PackedTensor fg = FgmpQuantizer().encode("t", w.data(), rows, cols);
  PackedTensor bad_map = fg;
  for (PackedPart& part : bad_map.parts)
    if (part.suffix == "weight_block_map") part.bytes[0] ^= 1;  // popcount no longer matches the offsets
  expect_error_code(upload(bad_map), ExitCode::kInput, "fgmp map/offset mismatch");
#endif
}

TEST(CudaGemv, TimingHelpersAndDeviceBuffer) {
  MPQ_REQUIRE_GPU();
#ifdef MPQ_HAVE_CUDA
  std::vector<uint8_t> a(1000), b(1000, 0);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<uint8_t>(i * 7);
  cuda::DeviceBuffer buf(1000);
  buf.upload(a.data(), 600);
  buf.upload(a.data() + 600, 400, 600);
  buf.download(b.data(), 1000);
  EXPECT_EQ(a, b);
  expect_error_code([&] { buf.upload(a.data(), 10, 995); }, ExitCode::kUsage, "upload past the end");
  cuda::DeviceBuffer moved = std::move(buf);
  EXPECT_EQ(moved.bytes(), 1000u);
  EXPECT_EQ(buf.data(), nullptr);  // NOLINT(bugprone-use-after-move): documented moved-from state

  const std::vector<float> w = random_weights(64 * 512, 2);
  const cuda::DeviceLinear L = cuda::DeviceLinear::upload(make_quantizer("nvfp4", {})->encode("t", w.data(), 64, 512));
  cuda::DeviceBuffer x(512 * sizeof(float)), y(64 * sizeof(float));
  const std::vector<float> zeros(512, 0.0f);
  x.upload(zeros.data(), zeros.size() * sizeof(float));
  const std::vector<double> us = cuda::time_device_us(
      [&] { L.gemv(static_cast<const float*>(x.data()), 1, static_cast<float*>(y.data())); }, 2, 5);
  ASSERT_EQ(us.size(), 5u);
  for (double t : us) EXPECT_GT(t, 0.0);
  EXPECT_GT(cuda::device_copy_bandwidth_gbps(std::size_t{1} << 24, 3), 0.0);
  expect_error_code([] { (void)cuda::time_device_us([] {}, 0, 0); }, ExitCode::kUsage, "zero reps");
#endif
}

}  // namespace
}  // namespace mpq
