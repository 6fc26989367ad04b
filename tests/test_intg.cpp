// Group-wise integer format (lib/quant/intg.h): the bitstream, the grid, the layout and the
// round trip through a packed folder.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "formats/packed_checkpoint.h"
#include "kernels/cpu/act_int8.h"
#include "kernels/cpu/int_gemv.h"
#include "lib/common/error.h"
#include "lib/model/cpu_linear.h"
#include "lib/model/llama.h"
#include "lib/numeric/codecs.h"
#include "lib/quant/intg.h"
#include "lib/quant/quant_common.h"
#include "tests/test_util.h"

namespace mpq {
namespace {

using quant_detail::pack_code;
using quant_detail::unpack_code;

TEST(IntFormat, BitstreamRoundTripsEveryCodeAtEveryPosition) {
  for (int bits : {2, 3, 4, 8})
    for (int64_t n : {1, 7, 8, 9, 31, 64, 77}) {
      std::vector<uint8_t> row(static_cast<std::size_t>((n + 7) / 8 * bits), 0);
      std::vector<uint32_t> codes(static_cast<std::size_t>(n));
      for (int64_t j = 0; j < n; ++j) codes[static_cast<std::size_t>(j)] = static_cast<uint32_t>((j * 37 + 11) % (1 << bits));
      for (int64_t j = 0; j < n; ++j) pack_code(row.data(), j, bits, codes[static_cast<std::size_t>(j)]);
      for (int64_t j = 0; j < n; ++j) ASSERT_EQ(unpack_code(row.data(), j, bits), codes[static_cast<std::size_t>(j)]) << bits << " " << j;
      // LSB first: code 0 sits in the low bits of byte 0.
      EXPECT_EQ(row[0] & ((1u << std::min(bits, 8)) - 1u), codes[0] & 0xFF);
    }
}

TEST(IntFormat, GridIsAsymmetricMinMaxIncludingZero) {
  std::mt19937 g(5);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  for (int bits : {2, 3, 4, 8}) {
    const int maxq = (1 << bits) - 1;
    for (int trial = 0; trial < 200; ++trial) {
      std::vector<float> w(32);
      for (float& x : w) x = nd(g) + (trial % 3 == 0 ? 0.1f : 0.0f);  // some groups all positive
      const IntGroupParams p = int_group_params(w.data(), 32, bits);
      float lo = 0, hi = 0;
      for (float x : w) lo = std::min(lo, x), hi = std::max(hi, x);
      EXPECT_EQ(p.scale, fp16_to_fp32(fp32_to_fp16((hi - lo) / maxq)));  // fp16 scale
      EXPECT_GE(p.zero, 0);
      EXPECT_LE(p.zero, maxq);
      // 0 is on the grid; every value maps to its nearest grid point (within the range).
      EXPECT_EQ(p.scale * static_cast<float>(int_group_code(0.0f, p, bits) - p.zero), 0.0f);
      for (float x : w) {
        const int q = int_group_code(x, p, bits);
        const float y = p.scale * static_cast<float>(q - p.zero);
        float best = INFINITY;
        for (int c = 0; c <= maxq; ++c) best = std::min(best, std::fabs(x - p.scale * static_cast<float>(c - p.zero)));
        EXPECT_LE(std::fabs(x - y), best * (1 + 1e-6f) + 1e-12f) << bits << " " << x;
      }
    }
  }
  // All-zero group: scale 1, zero 0, decodes to 0.
  const float z[4] = {0, 0, 0, 0};
  EXPECT_EQ(int_group_params(z, 4, 4).scale, 1.0f);
  EXPECT_EQ(int_group_params(z, 4, 4).zero, 0);
}

TEST(IntFormat, EncodeDecodeLayoutAndBytes) {
  for (int bits : {2, 3, 4, 8})
    for (int64_t gs : {int64_t{0}, int64_t{16}, int64_t{32}, int64_t{128}})
      for (const auto& [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{3, 40}, {5, 172}, {2, 128}, {1, 7}}) {
        const IntGroupQuantizer q(bits, gs);
        const std::vector<float> w = test::random_normal(rows * cols, 17 + bits, 0.05f);
        const PackedTensor p = q.encode("w", w.data(), rows, cols);
        const int64_t g = gs ? gs : cols, ng = (cols + g - 1) / g;
        EXPECT_EQ(p.bytes(), static_cast<std::size_t>(rows * ((cols + 7) / 8 * bits + 3 * ng)));
        EXPECT_EQ(p.bytes(), q.bytes(rows, cols));
        std::vector<float> d(w.size());
        q.decode(p, d.data());
        // Each value is decoded from its group's stored parameters: recompute them independently.
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t k = 0; k < ng; ++k) {
            const int64_t c0 = k * g, c1 = std::min(cols, c0 + g);
            const IntGroupParams gp = int_group_params(w.data() + r * cols + c0, c1 - c0, bits);
            for (int64_t c = c0; c < c1; ++c) {
              const float want = gp.scale * static_cast<float>(int_group_code(w[r * cols + c], gp, bits) - gp.zero);
              ASSERT_EQ(d[r * cols + c], want) << bits << " g" << gs << " [" << r << ", " << c << "]";
            }
          }
        // The decoder of the format table reads it back (bits and group size from the parts).
        std::vector<float> d2(w.size());
        quantizer_for("int").decode(p, d2.data());
        EXPECT_EQ(d, d2);
      }
  EXPECT_THROW(IntGroupQuantizer(5, 0), Error);
  EXPECT_THROW(IntGroupQuantizer(4, 24), Error);
  EXPECT_NEAR(8.0 * static_cast<double>(IntGroupQuantizer(4, 128).bytes(4096, 4096)) / (4096.0 * 4096.0), 4.0 + 24.0 / 128, 1e-12);
}

TEST(IntFormat, DecoderRejectsBadParts) {
  const IntGroupQuantizer q(3, 16);
  const std::vector<float> w = test::random_normal(4 * 48, 3, 0.05f);
  PackedTensor p = q.encode("w", w.data(), 4, 48);
  std::vector<float> d(w.size());
  PackedTensor bad = p;
  bad.parts[2].bytes[0] = 8;  // zero above 2^3 - 1
  EXPECT_THROW(q.decode(bad, d.data()), Error);
  bad = p;
  quant_detail::store_u16_le(0x7C00, bad.parts[1].bytes.data());  // +inf scale
  EXPECT_THROW(q.decode(bad, d.data()), Error);
  bad = p;
  bad.parts[1].shape = {4, 5};  // 5 groups fits no group size of 48 columns
  EXPECT_THROW(q.decode(bad, d.data()), Error);
}

TEST(IntFormat, PackedFolderLoadsToTheDecodedWeights) {
  const std::string m = test::scratch_dir("int-src");
  test::TinyLlamaSpec s;
  s.intermediate = 40;
  test::write_tiny_llama(m, s);
  const std::string out = test::scratch_dir("int-out") + "/p";
  const test::ToolRun r = test::run_tool(test::tool_path("mpq-pack") + " --model " + m + " --format int3-g16 --out " + out + " -q");
  ASSERT_EQ(r.rc, 0) << r.out;
  const LlamaModel orig = LlamaModel::load(m), packed = LlamaModel::load(out);
  const IntGroupQuantizer q(3, 16);
  for (std::size_t l = 0; l < 2; ++l)
    for (int i = 0; i < 7; ++i) {
      const Linear& a = orig.weights().layers[l].linear[static_cast<std::size_t>(i)];
      const Linear& b = packed.weights().layers[l].linear[static_cast<std::size_t>(i)];
      EXPECT_EQ(b.format, "int");
      std::vector<float> d(static_cast<std::size_t>(a.w.size()));
      q.decode(q.encode("w", a.w.data(), a.w.rows(), a.w.cols()), d.data());
      ASSERT_EQ(b.w.size(), a.w.size());
      for (Eigen::Index k = 0; k < a.w.size(); ++k) ASSERT_EQ(b.w.data()[k], d[static_cast<std::size_t>(k)]);
    }
  const test::ToolRun insp = test::run_tool(test::tool_path("mpq-inspect") + " " + out);
  EXPECT_NE(insp.out.find("quant_method 'mpq'"), std::string::npos) << insp.out;  // mpq-native
}

}  // namespace
}  // namespace mpq

namespace mpq {
namespace {

// x rounded as the int8-activation kernels see it (act_int8.h, blocks of 64).
std::vector<float> int8_rounded(const std::vector<float>& x) {
  const int64_t C = static_cast<int64_t>(x.size()), nb = (C + kIntActBlock - 1) / kIntActBlock;
  std::vector<int8_t> q(static_cast<std::size_t>(nb * kIntActBlock));
  std::vector<float> xs(static_cast<std::size_t>(nb));
  std::vector<int32_t> sum(static_cast<std::size_t>(nb));
  quantize_act_int8_scalar(x.data(), C, kIntActBlock, q.data(), xs.data(), sum.data());
  std::vector<float> out(x.size());
  for (int64_t c = 0; c < C; ++c) out[static_cast<std::size_t>(c)] = xs[static_cast<std::size_t>(c / kIntActBlock)] * q[static_cast<std::size_t>(c)];
  return out;
}

// The int8-activation GEMV paths (scalar, AVX-512 VNNI) against the float64 product of the
// decoded W and the int8-rounded x, on odd shapes (partial 64-column blocks, group counts
// that are no multiple of 16 or of 64 / G), every bit width and group size.
TEST(IntFormat, Int8ActivationGemvMatchesDecodedProduct) {
  uint64_t seed = 90;
  for (const char* label : {"int2-g16", "int3", "int3-g32", "int4", "int4-g128", "int8-g64", "int3-g16", "int8-g16", "int4-g32"})
    for (const auto& [R, C] : {std::pair<int64_t, int64_t>{5, 37}, {17, 100}, {3, 171}, {33, 256}, {1, 1}, {7, 300}, {4, 4176}}) {
      SCOPED_TRACE(std::string(label) + " " + std::to_string(R) + "x" + std::to_string(C));
      const std::vector<float> w = test::random_normal(R * C, ++seed, 0.05f);
      const std::unique_ptr<Quantizer> qz = make_quantizer(parse_format_label(label));
      const PackedTensor p = qz->encode("w", w.data(), R, C);
      std::vector<float> ref(w.size());
      qz->decode(p, ref.data());
      const IntWeightView v = int_weight_view(p);
      const std::vector<float> x = test::random_normal(C, ++seed, 1.0f);
      const int64_t nb = (C + kIntActBlock - 1) / kIntActBlock;
      std::vector<int8_t> q(static_cast<std::size_t>(nb * kIntActBlock));
      std::vector<float> xs(static_cast<std::size_t>(nb)), gsum(static_cast<std::size_t>(v.groups));
      std::vector<int32_t> sum(static_cast<std::size_t>(nb));
      quantize_act_int8_scalar(x.data(), C, kIntActBlock, q.data(), xs.data(), sum.data());
      int_prepare_act(v, q.data(), xs.data(), gsum.data());
      const IntQ8Act act{q.data(), xs.data(), gsum.data()};
      const std::vector<float> xhat = int8_rounded(x);
      std::vector<double> want(static_cast<std::size_t>(R)), mag(static_cast<std::size_t>(R));
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < C; ++c) {
          const double t = static_cast<double>(ref[static_cast<std::size_t>(r * C + c)]) * xhat[static_cast<std::size_t>(c)];
          want[static_cast<std::size_t>(r)] += t;
          mag[static_cast<std::size_t>(r)] += std::fabs(t);
        }
      struct Path {
        const char* name;
        bool ok;
        void (*fn)(const IntWeightView&, const IntQ8Act&, float*);
      };
      for (const Path& path : {Path{"scalar", true, int_q8_gemv_scalar}, Path{"avx512", int_q8_gemv_available(), int_q8_gemv_avx512}}) {
        if (!path.ok) continue;
        std::vector<float> y(static_cast<std::size_t>(R), -7.0f);
        path.fn(v, act, y.data());
        for (int64_t r = 0; r < R; ++r)
          EXPECT_NEAR(y[static_cast<std::size_t>(r)], want[static_cast<std::size_t>(r)], 2e-6 * mag[static_cast<std::size_t>(r)] + 1e-7)
              << path.name << " row " << r;
      }
      std::vector<float> y(static_cast<std::size_t>(R));
      int_q8_gemv(v, x.data(), y.data());  // the dispatcher quantizes x itself
      for (int64_t r = 0; r < R; ++r)
        EXPECT_NEAR(y[static_cast<std::size_t>(r)], want[static_cast<std::size_t>(r)], 2e-6 * mag[static_cast<std::size_t>(r)] + 1e-7) << "row " << r;
    }
  if (!int_q8_gemv_available()) GTEST_SKIP() << "no AVX-512 VNNI/VBMI here: the scalar path was checked, not the vector one";
}

// The CPU runtime's int kernels (kernels/cpu/int_gemv.h) against the format's decoder and a
// float64 product, on odd shapes, every bit width and group size.
TEST(IntFormat, CpuKernelsMatchTheDecoderOnOddShapes) {
  uint64_t seed = 40;
  for (const char* label : {"int2-g16", "int3", "int3-g32", "int4", "int4-g128", "int8-g64", "int3-g16"})
    for (const auto& [R, C] : {std::pair<int64_t, int64_t>{5, 37}, {17, 100}, {3, 171}, {33, 256}, {1, 1}}) {
      SCOPED_TRACE(std::string(label) + " " + std::to_string(R) + "x" + std::to_string(C));
      const std::vector<float> w = test::random_normal(R * C, ++seed, 0.05f);
      const std::unique_ptr<Quantizer> q = make_quantizer(parse_format_label(label));
      const PackedTensor p = q->encode("w", w.data(), R, C);
      std::vector<float> ref(w.size());
      q->decode(p, ref.data());
      const std::shared_ptr<const CpuLinear> lin = make_cpu_linear(p);
      EXPECT_EQ(lin->format(), "int");
      EXPECT_EQ(lin->weight_bytes(), p.bytes());
      std::vector<float> rows(static_cast<std::size_t>(R * (C + 3)), -1.0f);
      lin->decode_rows(0, R, rows.data(), C + 3);
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < C + 3; ++c)
          ASSERT_EQ(rows[static_cast<std::size_t>(r * (C + 3) + c)], c < C ? ref[static_cast<std::size_t>(r * C + c)] : 0.0f);
      const std::vector<float> x = test::random_normal(C, ++seed, 1.0f);
      // The fast single-token path multiplies by the int8-rounded x where VNNI is there.
      const std::vector<float> xhat = int_q8_gemv_available() ? int8_rounded(x) : x;
      for (KernelMode mode : {KernelMode::kFast, KernelMode::kExact}) {
        const std::vector<float>& xm = mode == KernelMode::kFast ? xhat : x;
        std::vector<float> y(static_cast<std::size_t>(R));
        lin->matmul(x.data(), 1, y.data(), mode);
        for (int64_t r = 0; r < R; ++r) {
          double want = 0, mag = 0;
          for (int64_t c = 0; c < C; ++c) {
            want += static_cast<double>(ref[static_cast<std::size_t>(r * C + c)]) * xm[static_cast<std::size_t>(c)];
            mag += std::fabs(static_cast<double>(ref[static_cast<std::size_t>(r * C + c)]) * xm[static_cast<std::size_t>(c)]);
          }
          EXPECT_NEAR(y[static_cast<std::size_t>(r)], want, 1e-5 * mag + 1e-7) << kernel_mode_name(mode) << " row " << r;
        }
      }
    }
  // A zero above 2^b - 1 is refused at load, naming the part.
  PackedTensor bad = make_quantizer(parse_format_label("int4"))->encode("w", test::random_normal(8 * 16, 3).data(), 8, 16);
  bad.part_mut("zeros").bytes[3] = 16;
  try {
    make_cpu_linear(bad);
    FAIL() << "accepted a zero of 16 in an int4 tensor";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kInput);
    EXPECT_NE(std::string(e.what()).find("part 'zeros' holds 16"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mpq
