// The CPU runtime kernels (kernels/cpu: act_int8, nvfp4_gemv, lut_vnni, dense_gemv,
// panel_gemm): every path (scalar, AVX2, AVX-512, AVX512_BF16, AMX; a path the CPU lacks is
// skipped) against its scalar reference (identical bytes / floats where the header promises
// it) and against an fp64 product of the format's own decoder (lib/quant), within the bound
// of the documented roundings, on odd shapes.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/act_int8.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/dense_gemv.h"
#include "kernels/cpu/group_streams.h"
#include "kernels/cpu/lut_vnni.h"
#include "kernels/cpu/nvfp4_gemv.h"
#include "kernels/cpu/panel_gemm.h"
#include "lib/common/error.h"
#include "lib/numeric/codecs.h"
#include "lib/quant/fp8.h"
#include "lib/quant/nvfp4.h"
#include "lib/quant/squeezellm.h"
#include "tests/test_util.h"

namespace mpq {
namespace {

using test::random_normal;

bool has_avx2() { return cpu_features().avx2; }
bool has_avx512() { return cpu_features().avx512; }

std::string shape_label(int64_t rows, int64_t cols) { return "[" + std::to_string(rows) + ", " + std::to_string(cols) + "]"; }

// y = W x in fp64 and sum |w x| per row.
void exact_gemv(const std::vector<float>& w, int64_t rows, int64_t cols, const float* x, std::vector<double>* y,
                std::vector<double>* l1) {
  y->assign(static_cast<std::size_t>(rows), 0.0);
  l1->assign(static_cast<std::size_t>(rows), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const double p = static_cast<double>(w[r * cols + c]) * x[c];
      (*y)[r] += p;
      (*l1)[r] += std::fabs(p);
    }
}

// Weights with a few large values (outliers) so that sparse parts and scales are exercised.
std::vector<float> test_weights(int64_t rows, int64_t cols, uint64_t seed) {
  std::vector<float> w = random_normal(rows * cols, seed, 0.05f);
  for (std::size_t i = 0; i < w.size(); i += 97) w[i] *= 8.0f;
  return w;
}

// ---------------------------------------------------------------- int8 activations ----

// x quantized to int8 per `block` columns by the scalar path (kernels/cpu/act_int8.h):
// q [nb * block], xs [nb], xsum [nb], nb = ceil(cols / block).
struct QuantX {
  std::vector<int8_t> q;
  std::vector<float> xs;
  std::vector<int32_t> xsum;
};

QuantX quantize_x(const std::vector<float>& x, int64_t block) {
  const int64_t cols = static_cast<int64_t>(x.size()), nb = (cols + block - 1) / block;
  QuantX a{std::vector<int8_t>(static_cast<std::size_t>(nb * block)), std::vector<float>(static_cast<std::size_t>(nb)),
           std::vector<int32_t>(static_cast<std::size_t>(nb))};
  quantize_act_int8_scalar(x.data(), cols, static_cast<int>(block), a.q.data(), a.xs.data(), a.xsum.data());
  return a;
}

TEST(ActInt8, PathsIdenticalAndWithinHalfAScale) {
  for (int B : {16, 64}) {
    for (int64_t K : {int64_t{0}, int64_t{1}, int64_t{15}, int64_t{16}, int64_t{17}, int64_t{100}, int64_t{2048}}) {
      std::vector<float> x = random_normal(K, 11 + K, 3.0f);
      if (K > 20) x[7] = 0.0f;  // a few exact zeros and a zero block
      if (K >= 2048) std::fill(x.begin() + 1024, x.begin() + 1024 + B, 0.0f);
      const int64_t nb = (K + B - 1) / B;
      std::vector<int8_t> q0(static_cast<std::size_t>(nb * B)), q1 = q0, q2 = q0;
      std::vector<float> s0(static_cast<std::size_t>(nb)), s1 = s0, s2 = s0;
      std::vector<int32_t> u0(static_cast<std::size_t>(nb)), u1 = u0, u2 = u0;
      quantize_act_int8_scalar(x.data(), K, B, q0.data(), s0.data(), u0.data());
      for (int64_t b = 0; b < nb; ++b) {
        int32_t sum = 0;
        for (int64_t i = 0; i < B; ++i) {
          const int64_t k = b * B + i;
          sum += q0[k];
          if (k >= K) {
            EXPECT_EQ(q0[k], 0);
            continue;
          }
          EXPECT_LE(std::fabs(x[k] - s0[b] * q0[k]), s0[b] * 0.5f * 1.0001f) << "K " << K << " k " << k;
        }
        EXPECT_EQ(sum, u0[b]);
      }
      if (has_avx2()) {
        quantize_act_int8_avx2(x.data(), K, B, q1.data(), s1.data(), u1.data());
        EXPECT_EQ(q1, q0) << "avx2 K " << K;
        EXPECT_EQ(s1, s0);
        EXPECT_EQ(u1, u0);
      }
      if (has_avx512()) {
        quantize_act_int8_avx512(x.data(), K, B, q2.data(), s2.data(), u2.data());
        EXPECT_EQ(q2, q0) << "avx512 K " << K;
        EXPECT_EQ(s2, s0);
        EXPECT_EQ(u2, u0);
      }
    }
  }
}

TEST(ActInt8, NonFiniteBlockHasNanScale) {
  std::vector<float> x = random_normal(48, 3);
  x[20] = std::nanf("");
  x[40] = INFINITY;
  for (auto fn : {quantize_act_int8_scalar, quantize_act_int8_avx2, quantize_act_int8_avx512}) {
    if ((fn == quantize_act_int8_avx2 && !has_avx2()) || (fn == quantize_act_int8_avx512 && !has_avx512())) continue;
    std::vector<int8_t> q(48);
    std::vector<float> s(3);
    std::vector<int32_t> u(3);
    fn(x.data(), 48, 16, q.data(), s.data(), u.data());
    EXPECT_TRUE(std::isfinite(s[0]));
    EXPECT_TRUE(std::isnan(s[1]));
    EXPECT_TRUE(std::isnan(s[2]));
    for (int i = 16; i < 48; ++i) EXPECT_EQ(q[i], 0);
  }
}

// ---------------------------------------------------------------- NVFP4 ----------------

constexpr int64_t kRowsList[] = {1, 15, 17, 40};
constexpr int64_t kColsList[] = {5, 16, 40, 300};

struct Nvfp4Case {
  PackedTensor p;
  std::vector<float> dense;  // Nvfp4Quantizer::decode
  Nvfp4Packed packed;
};

Nvfp4Case nvfp4_case(int64_t rows, int64_t cols, uint64_t seed) {
  Nvfp4Case c;
  const std::vector<float> w = test_weights(rows, cols, seed);
  Nvfp4Quantizer q;
  c.p = q.encode("t", w.data(), rows, cols);
  c.dense.resize(static_cast<std::size_t>(rows * cols));
  q.decode(c.p, c.dense.data());
  Nvfp4WeightView v;
  v.rows = rows;
  v.cols = cols;
  v.weight = c.p.part("weight").bytes.data();
  v.weight_scale = c.p.part("weight_scale").bytes.data();
  std::memcpy(&v.scale_2, c.p.part("weight_scale_2").bytes.data(), 4);
  c.packed = nvfp4_repack(v);
  return c;
}

TEST(Nvfp4Kernels, RepackedDecodeIsTheQuantizersDecode) {
  uint64_t seed = 1;
  for (int64_t rows : kRowsList)
    for (int64_t cols : kColsList) {
      const Nvfp4Case c = nvfp4_case(rows, cols, ++seed);
      EXPECT_EQ(c.packed.bytes(), c.p.bytes() + (c.packed.groups * 16 - rows) * (c.packed.nb * 9));
      const int64_t ld = cols + 3;
      std::vector<float> out(static_cast<std::size_t>(rows * ld), -1.0f);
      nvfp4_decode_rows(c.packed, 0, rows, out.data(), ld);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t k = 0; k < cols; ++k)
          ASSERT_EQ(out[r * ld + k], c.dense[r * cols + k]) << shape_label(rows, cols) << " at " << r << "," << k;
        for (int64_t k = cols; k < ld; ++k) ASSERT_EQ(out[r * ld + k], 0.0f);
      }
    }
}

TEST(Nvfp4Kernels, GemvPathsIdenticalAndWithinActivationBound) {
  uint64_t seed = 100;
  for (int64_t rows : kRowsList)
    for (int64_t cols : kColsList) {
      const Nvfp4Case c = nvfp4_case(rows, cols, ++seed);
      const std::vector<float> x = random_normal(cols, seed * 7);
      const QuantX a = quantize_x(x, 16);
      const int8_t* q = a.q.data();
      const float* xs = a.xs.data();
      const int32_t* xsum = a.xsum.data();
      std::vector<float> y0(static_cast<std::size_t>(rows)), y1(y0.size(), -1), y2(y0.size(), -1), yd(y0.size());
      nvfp4_gemv_q8_scalar(c.packed, q, xs, xsum, y0.data());
      if (has_avx2()) {
        nvfp4_gemv_q8_avx2(c.packed, q, xs, xsum, y1.data());
        EXPECT_EQ(y1, y0) << "avx2 " << shape_label(rows, cols);
      }
      if (has_avx512()) {
        nvfp4_gemv_q8_avx512(c.packed, q, xs, xsum, y2.data());
        EXPECT_EQ(y2, y0) << "avx512 " << shape_label(rows, cols);
      }
      nvfp4_gemv(c.packed, x.data(), yd.data());
      EXPECT_EQ(yd, y0) << "dispatch " << shape_label(rows, cols);
      // Against W x in fp64: |error| <= sum |w| * xscale / 2 (activation rounding) + fp32.
      std::vector<double> want, l1;
      exact_gemv(c.dense, rows, cols, x.data(), &want, &l1);
      for (int64_t r = 0; r < rows; ++r) {
        double bound = 1e-5 * l1[r] + 1e-6;
        for (int64_t k = 0; k < cols; ++k) bound += std::fabs(c.dense[r * cols + k]) * xs[k / 16] * 0.5;
        EXPECT_NEAR(y0[r], want[r], bound) << shape_label(rows, cols) << " row " << r;
      }
    }
}

TEST(Nvfp4Kernels, PanelDecodeExactAndPathsIdentical) {
  uint64_t seed = 300;
  for (int64_t rows : kRowsList)
    for (int64_t cols : kColsList) {
      const Nvfp4Case c = nvfp4_case(rows, cols, ++seed);
      const int64_t kp = panel_cols(cols), n = (rows + 31) / 32 * 32 + 16;  // one block past the end
      std::vector<uint16_t> p0(static_cast<std::size_t>(kp * n), 0xFFFF), p1 = p0;
      nvfp4_decode_panel_scalar(c.packed, 0, n, kp, p0.data());
      for (int64_t j = 0; j < n; ++j)
        for (int64_t k = 0; k < kp; ++k) {
          const float got = bf16_to_fp32(p0[panel_index(k, j, n)]);
          const float want = j < rows && k < cols ? c.dense[j * cols + k] / c.packed.scale_2 : 0.0f;
          // dense = (e2m1 * e4m3) * s2 rounded once; the panel holds e2m1 * e4m3 exactly.
          ASSERT_NEAR(got * c.packed.scale_2, want * c.packed.scale_2, std::fabs(want * c.packed.scale_2) * 1.2e-7)
              << shape_label(rows, cols) << " " << j << "," << k;
        }
      if (has_avx512()) {
        nvfp4_decode_panel_avx512(c.packed, 0, n, kp, p1.data());
        EXPECT_EQ(p1, p0) << shape_label(rows, cols);
      }
    }
}

TEST(Nvfp4Kernels, RejectsNanScaleAndNonFiniteScale2) {
  Nvfp4Case c = nvfp4_case(3, 20, 5);
  Nvfp4WeightView v;
  v.rows = 3;
  v.cols = 20;
  v.weight = c.p.part("weight").bytes.data();
  std::vector<uint8_t> sc = c.p.part("weight_scale").bytes;
  sc[3] = 0xFF;
  v.weight_scale = sc.data();
  v.scale_2 = 1.0f;
  try {
    nvfp4_repack(v);
    ADD_FAILURE() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kInput);
    EXPECT_NE(std::string(e.what()).find("weight_scale[1, 1]"), std::string::npos) << e.what();
  }
  sc[3] = 0x30;
  v.scale_2 = INFINITY;
  EXPECT_THROW(nvfp4_repack(v), Error);
}

// The work split of the streamed GEMVs (kernels/cpu/group_streams.h): every group exactly
// once, 1..S groups per call, ascending, each call's groups within one thread's static share.
TEST(GroupStreams, EveryGroupOnceWithinOneThreadsShare) {
  const int saved = omp_get_max_threads();
  for (int threads : {1, 2, 3})
    for (int64_t groups : {0, 1, 2, 3, 5, 7, 100, 1001})
      for (bool par : {false, true}) {
        omp_set_num_threads(threads);
        std::vector<int> seen(static_cast<std::size_t>(groups), 0);
        std::mutex m;
        bool ok = true;
        for_group_streams<3>(groups, par, [&](const int64_t* g, int n) {
          const int nt = omp_get_num_threads(), t = omp_get_thread_num();
          const int64_t t0 = groups * t / nt, t1 = groups * (t + 1) / nt;
          std::lock_guard<std::mutex> lock(m);
          ok = ok && n >= 1 && n <= 3;
          for (int k = 0; k < n; ++k) {
            ok = ok && g[k] >= t0 && g[k] < t1 && (k == 0 || g[k] > g[k - 1]);
            if (g[k] >= 0 && g[k] < groups) ++seen[static_cast<std::size_t>(g[k])];
          }
        });
        EXPECT_TRUE(ok) << threads << " threads, " << groups << " groups, par " << par;
        EXPECT_EQ(seen, std::vector<int>(static_cast<std::size_t>(groups), 1))
            << threads << " threads, " << groups << " groups, par " << par;
      }
  omp_set_num_threads(saved);
}

// Shapes above the kernels' parallel threshold (2^16 weights), so the AVX2 and AVX-512 GEMVs
// run their multi-stream split over 1-3 threads, with partial streams: identical to the
// scalar path.
TEST(Nvfp4Kernels, StreamedGemvOverThreadsIdenticalToScalar) {
  if (!has_avx2()) GTEST_SKIP() << "no AVX2 on this CPU: the streamed paths are AVX2 and AVX-512";
  const int saved = omp_get_max_threads();
  uint64_t seed = 900;
  for (int64_t rows : {int64_t{597}, int64_t{16 * 41}})
    for (int64_t cols : {int64_t{129}, int64_t{112}}) {
      const Nvfp4Case c = nvfp4_case(rows, cols, ++seed);
      const std::vector<float> x = random_normal(cols, seed * 5);
      const QuantX a = quantize_x(x, 16);
      const int8_t* q = a.q.data();
      const float* xs = a.xs.data();
      const int32_t* xsum = a.xsum.data();
      std::vector<float> y0(static_cast<std::size_t>(rows));
      nvfp4_gemv_q8_scalar(c.packed, q, xs, xsum, y0.data());
      for (int threads : {1, 2, 3}) {
        omp_set_num_threads(threads);
        std::vector<float> y(y0.size(), -1.0f);
        nvfp4_gemv_q8_avx2(c.packed, q, xs, xsum, y.data());
        EXPECT_EQ(y, y0) << "avx2 " << shape_label(rows, cols) << " " << threads << " threads";
        if (!has_avx512()) continue;
        std::fill(y.begin(), y.end(), -1.0f);
        nvfp4_gemv_q8_avx512(c.packed, q, xs, xsum, y.data());
        EXPECT_EQ(y, y0) << "avx512 " << shape_label(rows, cols) << " " << threads << " threads";
      }
    }
  omp_set_num_threads(saved);
}

// ---------------------------------------------------------------- SqueezeLLM -----------

struct LutCase {
  PackedTensor p;
  std::vector<float> dense;  // SqueezeLLMQuantizer::decode
  LutPacked packed;
};

LutCase lut_case(int bits, int64_t rows, int64_t cols, uint64_t seed, double outlier_pct = 0.45) {
  LutCase c;
  const std::vector<float> w = test_weights(rows, cols, seed);
  SqueezeLLMQuantizer q(bits, outlier_pct, 0.0);
  c.p = q.encode("t", w.data(), rows, cols);
  c.dense.resize(static_cast<std::size_t>(rows * cols));
  q.decode(c.p, c.dense.data());
  c.packed = lut_repack(squeezellm_weight_view(c.p));
  return c;
}

// x quantized for the LUT GEMV (block kLutActBlock) with its q4 and corr (lut_prepare_act).
struct LutX {
  QuantX a;
  std::vector<int8_t> q4;
  std::vector<int32_t> corr;
  LutQ8Act act(const float* x) const { return {a.q.data(), q4.data(), a.xs.data(), corr.data(), x}; }
};

LutX lut_x(const std::vector<float>& x) {
  LutX l{quantize_x(x, kLutActBlock), {}, {}};
  const int64_t nblocks = static_cast<int64_t>(l.a.xs.size());
  l.q4.resize(l.a.q.size() * 4);
  l.corr.resize(static_cast<std::size_t>(nblocks * 16));
  lut_prepare_act(l.a.q.data(), nblocks, l.q4.data(), l.corr.data());
  return l;
}

TEST(LutVnniKernels, RepackKeepsIndicesAndDecode) {
  uint64_t seed = 1;
  for (int bits : {2, 3, 4})
    for (int64_t rows : kRowsList)
      for (int64_t cols : kColsList) {
        const LutCase c = lut_case(bits, rows, cols, ++seed);
        const LutWeightView v = squeezellm_weight_view(c.p);
        const int64_t rb = (cols + 7) / 8 * bits;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t k = 0; k < cols; ++k) {
            int idx = 0;
            for (int t = 0; t < bits; ++t) {
              const int64_t bit = k * bits + t;
              idx |= ((v.qweight[r * rb + bit / 8] >> (bit % 8)) & 1) << t;
            }
            ASSERT_EQ(lut_packed_code(c.packed, r, k), idx) << bits << " " << shape_label(rows, cols);
          }
        std::vector<float> out(static_cast<std::size_t>(rows * (cols + 1)), -1.0f);
        lut_decode_rows(c.packed, 0, rows, out.data(), cols + 1);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t k = 0; k <= cols; ++k)
            ASSERT_EQ(out[r * (cols + 1) + k], k < cols ? c.dense[r * cols + k] : 0.0f) << r << "," << k;
        // Same bits per 64 codes as the source qweight (plus the int8 tables and scales).
        const int64_t blocks = (c.packed.units + 3) / 4;
        EXPECT_EQ(static_cast<int64_t>(c.packed.codes.size()),
                  c.packed.groups * (bits == 4 ? (c.packed.units + 1) / 2 * 64 : blocks * 32 * bits));
      }
}

TEST(LutVnniKernels, GemvPathsAgreeAndWithinRoundingBound) {
  uint64_t seed = 500;
  for (int bits : {2, 3, 4})
    for (int64_t rows : kRowsList)
      for (int64_t cols : kColsList)
        for (double outliers : {0.0, 2.0}) {
          const LutCase c = lut_case(bits, rows, cols, ++seed, outliers);
          const std::vector<float> x = random_normal(cols, seed * 3);
          const LutX lx = lut_x(x);
          const std::vector<float>& xs = lx.a.xs;
          const LutQ8Act act = lx.act(x.data());
          std::vector<float> y0(static_cast<std::size_t>(rows)), y1(y0.size()), y2(y0.size()), yd(y0.size());
          lut_q8_gemv_scalar(c.packed, act, y0.data());
          std::vector<double> want, l1;
          exact_gemv(c.dense, rows, cols, x.data(), &want, &l1);
          const bool sparse = outliers > 0;
          // Paths: identical dense parts; the CSR part summed in another order.
          auto agree = [&](const std::vector<float>& y, const char* what) {
            for (int64_t r = 0; r < rows; ++r) {
              if (!sparse)
                ASSERT_EQ(y[r], y0[r]) << what << " " << bits << " " << shape_label(rows, cols) << " row " << r;
              else
                ASSERT_NEAR(y[r], y0[r], 1e-5 * l1[r] + 1e-6) << what << " row " << r;
            }
          };
          if (has_avx2()) {
            lut_q8_gemv_avx2(c.packed, act, y1.data());
            agree(y1, "avx2");
          }
          if (has_avx512()) {
            lut_q8_gemv_avx512(c.packed, act, y2.data());
            agree(y2, "avx512");
          }
          lut_q8_gemv(c.packed, x.data(), yd.data());
          agree(yd, "dispatch");
          // Bound: table rounding (lut_scale / 2 per weight) and activation rounding (xs / 2).
          for (int64_t r = 0; r < rows; ++r) {
            const double ws = c.packed.lut_scale[r];
            double bound = 1e-5 * l1[r] + 1e-6;
            for (int64_t k = 0; k < cols; ++k) {
              const double xe = xs[k / kLutActBlock] * 0.5;
              bound += std::fabs(x[k]) * ws * 0.5 + (std::fabs(c.dense[r * cols + k]) + ws * 0.5) * xe;
            }
            EXPECT_NEAR(y0[r], want[r], bound) << bits << " " << shape_label(rows, cols) << " row " << r;
          }
        }
}

// As for NVFP4: above the parallel threshold, 1-3 threads, 2/3/4-bit, without a CSR part
// (the dense part is identical on every path) and with one (same sums, another order).
TEST(LutVnniKernels, StreamedGemvOverThreadsAgreesWithScalar) {
  if (!has_avx2()) GTEST_SKIP() << "no AVX2 on this CPU: the streamed paths are AVX2 and AVX-512";
  const int saved = omp_get_max_threads();
  uint64_t seed = 950;
  for (int bits : {2, 3, 4})
    for (double outliers : {0.0, 1.0}) {
      const int64_t rows = 203, cols = 333;
      const LutCase c = lut_case(bits, rows, cols, ++seed, outliers);
      const std::vector<float> x = random_normal(cols, seed * 3);
      const LutX lx = lut_x(x);
      const LutQ8Act act = lx.act(x.data());
      std::vector<float> y0(static_cast<std::size_t>(rows));
      lut_q8_gemv_scalar(c.packed, act, y0.data());
      std::vector<double> want, l1;
      exact_gemv(c.dense, rows, cols, x.data(), &want, &l1);
      for (int threads : {1, 2, 3}) {
        omp_set_num_threads(threads);
        for (bool avx512 : {false, true}) {
          if (avx512 && !has_avx512()) continue;
          std::vector<float> y(y0.size(), -1.0f);
          (avx512 ? lut_q8_gemv_avx512 : lut_q8_gemv_avx2)(c.packed, act, y.data());
          const char* path = avx512 ? "avx512 " : "avx2 ";
          for (int64_t r = 0; r < rows; ++r) {
            if (outliers == 0.0)
              ASSERT_EQ(y[r], y0[r]) << path << bits << "-bit, " << threads << " threads, row " << r;
            else
              ASSERT_NEAR(y[r], y0[r], 1e-5 * l1[r] + 1e-6) << path << bits << "-bit, " << threads << " threads, row " << r;
          }
        }
      }
    }
  omp_set_num_threads(saved);
}

// ---------------------------------------------------------------- dense fp8 / bf16 / f16

TEST(DenseKernels, GemvPathsMatchExactProduct) {
  uint64_t seed = 900;
  for (DenseKind kind : {DenseKind::kFp8, DenseKind::kBf16, DenseKind::kF16})
    for (int64_t rows : kRowsList)
      for (int64_t cols : kColsList) {
        const std::vector<float> w0 = test_weights(rows, cols, ++seed);
        std::vector<uint8_t> bytes;
        std::vector<float> dense(w0.size());
        DenseWeightView v;
        v.kind = kind;
        v.rows = rows;
        v.cols = cols;
        PackedTensor fp8;
        if (kind == DenseKind::kFp8) {
          fp8 = Fp8Quantizer().encode("t", w0.data(), rows, cols);
          Fp8Quantizer().decode(fp8, dense.data());
          bytes = fp8.part("weight").bytes;
          std::memcpy(&v.scale, fp8.part("weight_scale").bytes.data(), 4);
        } else {
          bytes.resize(w0.size() * 2);
          for (std::size_t i = 0; i < w0.size(); ++i) {
            const uint16_t h = kind == DenseKind::kBf16 ? fp32_to_bf16(w0[i]) : fp32_to_fp16(w0[i]);
            std::memcpy(&bytes[2 * i], &h, 2);
            dense[i] = kind == DenseKind::kBf16 ? bf16_to_fp32(h) : fp16_to_fp32(h);
          }
        }
        // At an aligned address and one byte off (safetensors does not align tensor data;
        // the runtime reads bf16 / f16 in place at any address).
        for (int off : {0, 1}) {
          std::vector<uint8_t> store(bytes.size() + 1);
          std::memcpy(store.data() + off, bytes.data(), bytes.size());
          v.data = store.data() + off;
          dense_check(v, "t");
          std::vector<float> out(static_cast<std::size_t>(rows * cols));
          dense_decode_rows(v, 0, rows, out.data(), cols, true);
          EXPECT_EQ(out, dense);
          const std::vector<float> x = random_normal(cols, seed);
          std::vector<double> want, l1;
          exact_gemv(dense, rows, cols, x.data(), &want, &l1);
          std::vector<float> y(static_cast<std::size_t>(rows));
          const std::string what = std::to_string(static_cast<int>(kind)) + " " + shape_label(rows, cols) +
                                   " offset " + std::to_string(off);
          dense_gemv_scalar(v, x.data(), y.data());
          test::expect_close_l1(y, want, l1, "scalar " + what, 1e-7);
          if (has_avx2()) {
            dense_gemv_avx2(v, x.data(), y.data());
            test::expect_close_l1(y, want, l1, "avx2 " + what, 1e-7);
          }
          if (has_avx512()) {
            dense_gemv_avx512(v, x.data(), y.data());
            test::expect_close_l1(y, want, l1, "avx512 " + what, 1e-7);
          }
        }
      }
}

// FP8 on bf16 activations: W exact, x rounded to bf16 (RNE), fp32 sums: against the fp64
// product of the decoded weights and the rounded x, on odd shapes (the 64-column chunk's
// masked tail, 1-3 row blocks).
TEST(DenseKernels, Fp8Bf16ActMatchesProductOfRoundedX) {
  if (!dense_gemv_fp8_bf16_available()) GTEST_SKIP() << "no AVX512_BF16 + VBMI on this CPU";
  uint64_t seed = 950;
  for (int64_t rows : kRowsList)
    for (int64_t cols : {int64_t{1}, int64_t{17}, int64_t{63}, int64_t{64}, int64_t{65}, int64_t{200}, int64_t{4099}}) {
      const std::vector<float> w0 = test_weights(rows, cols, ++seed);
      const PackedTensor fp8 = Fp8Quantizer().encode("t", w0.data(), rows, cols);
      std::vector<float> dense(w0.size());
      Fp8Quantizer().decode(fp8, dense.data());
      DenseWeightView v{DenseKind::kFp8, rows, cols, fp8.part("weight").bytes.data(), 0.0f};
      std::memcpy(&v.scale, fp8.part("weight_scale").bytes.data(), 4);
      std::vector<float> x = random_normal(cols, seed), xr(x.size());
      for (std::size_t k = 0; k < x.size(); ++k) xr[k] = bf16_to_fp32(fp32_to_bf16(x[k]));
      std::vector<double> want, l1;
      exact_gemv(dense, rows, cols, xr.data(), &want, &l1);
      std::vector<float> y(static_cast<std::size_t>(rows));
      dense_gemv_fp8_bf16(v, x.data(), y.data());
      test::expect_close_l1(y, want, l1, "fp8 bf16act " + shape_label(rows, cols), 1e-6);
    }
}

// Every non-NaN E4M3 code through the bf16-activation GEMV: with x one-hot at column j,
// y[r] is W[r, j] * scale exactly (one non-zero product), so each code's table entry (the
// subnormals, both signs, the largest 448) is checked bit for bit against the decoder.
TEST(DenseKernels, Fp8Bf16ActEveryCodeExact) {
  if (!dense_gemv_fp8_bf16_available()) GTEST_SKIP() << "no AVX512_BF16 + VBMI on this CPU";
  std::vector<uint8_t> codes;
  for (int c = 0; c < 256; ++c)
    if ((c & 0x7F) != 0x7F) codes.push_back(static_cast<uint8_t>(c));
  const int64_t rows = 5, cols = 130;  // 2 full chunks and a tail; every code in some (r, j)
  std::vector<uint8_t> w(static_cast<std::size_t>(rows * cols));
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = codes[i % codes.size()];
  const float scale = 0.75f;
  DenseWeightView v{DenseKind::kFp8, rows, cols, w.data(), scale};
  std::vector<float> x(static_cast<std::size_t>(cols), 0.0f), y(static_cast<std::size_t>(rows));
  for (int64_t j = 0; j < cols; ++j) {
    x[static_cast<std::size_t>(j)] = 1.0f;
    dense_gemv_fp8_bf16(v, x.data(), y.data());
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t c = w[static_cast<std::size_t>(r * cols + j)];
      EXPECT_EQ(y[static_cast<std::size_t>(r)], e4m3_to_fp32(c) * scale) << "code 0x" << std::hex << int(c);
    }
    x[static_cast<std::size_t>(j)] = 0.0f;
  }
}

TEST(DenseKernels, CheckRejectsFp8NanCode) {
  std::vector<uint8_t> b = {0x10, 0x7F, 0x20, 0x30};
  DenseWeightView v{DenseKind::kFp8, 2, 2, b.data(), 1.0f};
  try {
    dense_check(v, "x.safetensors");
    ADD_FAILURE() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kInput);
    EXPECT_NE(std::string(e.what()).find("weight[0, 1]"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------- panel GEMM -----------

TEST(PanelGemm, FromRowsPathsIdentical) {
  if (!has_avx512()) GTEST_SKIP() << "CPU lacks AVX-512";
  for (int64_t nv : {int64_t{1}, int64_t{16}, int64_t{20}})
    for (int64_t cols : {int64_t{5}, int64_t{32}, int64_t{70}}) {
      const int64_t kp = panel_cols(cols), n = 32;
      std::vector<float> src = random_normal(nv * kp, nv + cols);
      for (int64_t j = 0; j < nv; ++j) std::fill(src.begin() + j * kp + cols, src.begin() + (j + 1) * kp, 0.0f);
      std::vector<uint16_t> a(static_cast<std::size_t>(kp * n)), b(a.size());
      panel_from_rows_scalar(src.data(), nv, kp, n, kp, a.data());
      panel_from_rows(src.data(), nv, kp, n, kp, b.data());
      EXPECT_EQ(a, b) << nv << " " << cols;
    }
}

// Y = s * X W^T with X and W rounded to bf16, in fp64: the panel GEMM's exact answer.
void check_panel_gemm(PanelKernel kernel) {
  uint64_t seed = 40;
  struct Shape {
    int64_t rows, cols, T;
  };
  std::vector<Shape> shapes;
  for (int64_t rows : {int64_t{1}, int64_t{33}, int64_t{70}})
    for (int64_t cols : {int64_t{5}, int64_t{64}, int64_t{100}})
      for (int64_t T : {int64_t{1}, int64_t{17}, int64_t{40}}) shapes.push_back({rows, cols, T});
  shapes.push_back({300, 200, 70});  // several row blocks on all threads (the parallel path)
  for (const Shape& sh : shapes) {
    {
        const int64_t rows = sh.rows, cols = sh.cols, T = sh.T;
        const std::vector<float> w = random_normal(rows * cols, ++seed), X = random_normal(T * cols, seed + 1);
        const float s = 0.75f;
        const PanelDecoder dec = [&](int64_t r0, int64_t n, int64_t kp, uint16_t* panel) {
          std::vector<float> buf(static_cast<std::size_t>(n * kp), 0.0f);
          const int64_t nv = std::max<int64_t>(0, std::min(n, rows - r0));
          for (int64_t j = 0; j < nv; ++j)
            for (int64_t c = 0; c < cols; ++c) buf[j * kp + c] = w[(r0 + j) * cols + c];
          panel_from_rows(buf.data(), nv, kp, n, kp, panel);
        };
        std::vector<float> Y(static_cast<std::size_t>(T * rows), -7.0f);
        panel_gemm(rows, cols, dec, s, X.data(), T, Y.data(), kernel);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t r = 0; r < rows; ++r) {
            double want = 0, l1 = 0;
            for (int64_t c = 0; c < cols; ++c) {
              const double p = static_cast<double>(bf16_to_fp32(fp32_to_bf16(X[t * cols + c]))) *
                               bf16_to_fp32(fp32_to_bf16(w[r * cols + c]));
              want += p;
              l1 += std::fabs(p);
            }
            ASSERT_NEAR(Y[t * rows + r], s * want, s * (1e-5 * l1 + 1e-6))
                << panel_kernel_name(kernel) << " rows " << rows << " cols " << cols << " T " << T << " at " << t << "," << r;
          }
      }
  }
}

TEST(PanelGemm, Avx512Bf16MatchesBf16Product) {
  if (!cpu_features().avx512_bf16) GTEST_SKIP() << "CPU lacks AVX512_BF16";
  check_panel_gemm(PanelKernel::kAvx512Bf16);
}

TEST(PanelGemm, AmxMatchesBf16Product) {
  if (!cpu_features().amx) GTEST_SKIP() << "CPU lacks AMX-BF16 (or the OS did not grant the tile state)";
  check_panel_gemm(PanelKernel::kAmx);
}

}  // namespace
}  // namespace mpq
