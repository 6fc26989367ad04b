// GPTQ (lib/quant/gptq.h) and the grids of every format (lib/quant/gptq_grids.h): against an
// independent numpy implementation of the paper's algorithm, against RTN on correlated inputs,
// and the encoded tensors decode to exactly what the pass computed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "lib/common/error.h"
#include "lib/quant/gptq.h"
#include "lib/quant/gptq_grids.h"
#include "lib/quant/intg.h"
#include "lib/quant/quantizer.h"
#include "tests/test_util.h"

namespace mpq {
namespace {

// H = 2 X^T X of N tokens whose C inputs are correlated (X = Z M, Z ~ N(0, 1), M random with
// a strong common component), some inputs dead (always 0) when `dead` is set.
std::vector<double> correlated_hessian(int64_t C, int64_t N, uint64_t seed, bool dead = false) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> nd;
  std::vector<double> M(static_cast<std::size_t>(C * C)), X(static_cast<std::size_t>(N * C), 0.0);
  for (int64_t i = 0; i < C; ++i)
    for (int64_t j = 0; j < C; ++j) M[static_cast<std::size_t>(i * C + j)] = nd(g) * (i == j ? 1.0 : 0.3) + 0.2;
  for (int64_t t = 0; t < N; ++t)
    for (int64_t i = 0; i < C; ++i) {
      const double z = nd(g);
      for (int64_t j = 0; j < C; ++j) X[static_cast<std::size_t>(t * C + j)] += z * M[static_cast<std::size_t>(i * C + j)];
    }
  if (dead)
    for (int64_t t = 0; t < N; ++t) X[static_cast<std::size_t>(t * C + 3)] = 0.0;
  std::vector<double> H(static_cast<std::size_t>(C * C), 0.0);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t i = 0; i < C; ++i)
      for (int64_t j = 0; j < C; ++j)
        H[static_cast<std::size_t>(i * C + j)] += 2.0 * X[static_cast<std::size_t>(t * C + i)] * X[static_cast<std::size_t>(t * C + j)];
  return H;
}

void write_f64(const std::string& p, const std::vector<double>& v) {
  std::vector<uint8_t> b(v.size() * 8);
  std::memcpy(b.data(), v.data(), b.size());
  test::write_bytes(p, b);
}

std::string python_with_numpy() {
  for (const std::string p : {"/usr/bin/python3", "python3"})
    if (test::run_command(p + " -c 'import numpy' 2>/dev/null") == 0) return p;
  return "";
}

TEST(Gptq, IntGridMatchesIndependentNumpyReference) {
  const std::string py = python_with_numpy();
  if (py.empty()) GTEST_SKIP() << "no python3 with numpy (Debian: python3-numpy)";
  const char* src = std::getenv("MPQ_SOURCE_DIR");
  const std::string ref = std::string(src ? src : MPQ_SOURCE_DIR) + "/tests/golden/gptq_reference.py";
  const int64_t R = 12, C = 96;
  const std::vector<float> w = test::random_normal(R * C, 9, 0.05f);
  const std::vector<double> H = correlated_hessian(C, 200, 4, /*dead=*/true);
  const std::string dir = test::scratch_dir("gptq-ref");
  write_f64(dir + "/w.f64", std::vector<double>(w.begin(), w.end()));
  write_f64(dir + "/h.f64", H);
  for (const auto& [bits, group] : std::vector<std::pair<int, int64_t>>{{4, 0}, {3, 16}, {2, 32}, {8, 0}}) {
    SCOPED_TRACE("int" + std::to_string(bits) + " g" + std::to_string(group));
    std::string out;
    ASSERT_EQ(test::run_command(py + " " + ref + " " + dir + "/w.f64 " + dir + "/h.f64 " + std::to_string(R) + " " +
                                    std::to_string(C) + " " + std::to_string(bits) + " " + std::to_string(group) +
                                    " 0.01 " + dir + "/q.f64", &out), 0) << out;
    const std::vector<uint8_t> qb = test::read_bytes(dir + "/q.f64");
    std::vector<double> qref(static_cast<std::size_t>(R * C));
    std::memcpy(qref.data(), qb.data(), qb.size());
    const IntGroupQuantizer q(bits, group);
    GptqGridInput in{"w", w.data(), nullptr, R, C};
    auto grid = make_gptq_grid(q, in);
    GptqOptions o;
    o.block = 32;  // several lazy blocks
    const std::vector<float> got = gptq_quantize("w", w.data(), R, C, H.data(), *grid, o);
    int64_t same = 0;
    for (std::size_t i = 0; i < got.size(); ++i) same += static_cast<double>(got[i]) == qref[i];
    EXPECT_GE(static_cast<double>(same) / static_cast<double>(got.size()), 0.995) << same << " of " << got.size();
    std::vector<float> qf(qref.begin(), qref.end());
    const double e_got = gptq_output_error(w.data(), got.data(), R, C, H.data());
    const double e_ref = gptq_output_error(w.data(), qf.data(), R, C, H.data());
    EXPECT_NEAR(e_got / e_ref, 1.0, 1e-2);
    for (int64_t r = 0; r < R; ++r) EXPECT_EQ(got[static_cast<std::size_t>(r * C + 3)], 0.0f);  // dead input zeroed
  }
}

// Every format's grid: GPTQ lowers the output error against RTN on correlated inputs, and the
// encoded tensor decodes to exactly the weights the pass returned.
TEST(Gptq, EveryFormatBeatsRtnAndEncodesWhatItComputed) {
  const int64_t R = 16, C = 128;
  const std::vector<float> w = test::random_normal(R * C, 21, 0.05f);
  std::vector<float> fisher = test::random_normal(R * C, 22, 1.0f);
  for (float& f : fisher) f = f * f;
  const std::vector<double> H = correlated_hessian(C, 300, 7);
  struct Case {
    std::string label;
    bool four_over_six;
    bool static_groups;
  };
  for (const Case& k : std::vector<Case>{{"fp8", false, false}, {"nvfp4", false, false}, {"nvfp4", false, true},
                                         {"nvfp4", true, false}, {"int4-g32", false, false}, {"int3", false, false},
                                         {"int4-g16", false, true}, {"squeezellm-3bit", false, false},
                                         {"squeezellm-3bit-sparse", false, false}, {"uniform-3bit", false, false},
                                         {"fgmp-30", false, false}}) {
    SCOPED_TRACE(k.label + (k.four_over_six ? " 4/6" : "") + (k.static_groups ? " static" : ""));
    const std::unique_ptr<Quantizer> q = make_quantizer(parse_format_label(k.label));
    std::vector<float> rtn(w.size());
    q->decode(q->encode_weighted("w", w.data(), fisher.data(), R, C), rtn.data());
    GptqGridInput in{"w", w.data(), fisher.data(), R, C};
    in.four_over_six = k.four_over_six;
    auto grid = make_gptq_grid(*q, in);
    GptqOptions o;
    o.static_groups = k.static_groups;
    const std::vector<float> g = gptq_quantize("w", w.data(), R, C, H.data(), *grid, o);
    const double e_rtn = gptq_output_error(w.data(), rtn.data(), R, C, H.data());
    const double e_gptq = gptq_output_error(w.data(), g.data(), R, C, H.data());
    EXPECT_LT(e_gptq, 0.8 * e_rtn) << e_gptq << " vs " << e_rtn;
    const PackedTensor p = grid->encode();
    std::vector<float> d(w.size());
    find_format(p.format)->decoder().decode(p, d.data());
    for (std::size_t i = 0; i < d.size(); ++i) ASSERT_EQ(d[i], g[i]) << i;
    EXPECT_EQ(p.bytes(), q->encode_weighted("w", w.data(), fisher.data(), R, C).bytes());
  }
}

TEST(Gptq, ActOrderUsesStaticGroupsAndSparseKeepsOriginals) {
  const int64_t R = 8, C = 64;
  const std::vector<float> w = test::random_normal(R * C, 31, 0.05f);
  const std::vector<double> H = correlated_hessian(C, 200, 8);
  const std::unique_ptr<Quantizer> q = make_quantizer(parse_format_label("int4-g16"));
  GptqGridInput in{"w", w.data(), nullptr, R, C};
  auto grid = make_gptq_grid(*q, in);
  GptqOptions o;
  o.act_order = true;
  const std::vector<float> g = gptq_quantize("w", w.data(), R, C, H.data(), *grid, o);
  std::vector<float> d(w.size());
  q->decode(grid->encode(), d.data());
  EXPECT_EQ(d, g);
  std::vector<float> rtn(w.size());
  q->decode(q->encode("w", w.data(), R, C), rtn.data());
  EXPECT_LT(gptq_output_error(w.data(), g.data(), R, C, H.data()), gptq_output_error(w.data(), rtn.data(), R, C, H.data()));
  // squeezellm with a large sparse part: the sparse positions keep their stored values (the
  // RTN fit's, within fp16 of the originals) and the encoded tensor decodes to the pass's output.
  QuantizerParams sp;
  sp.bits = 2;
  sp.outlier_pct = 5.0;
  sp.sensitive_pct = 0.0;
  const std::unique_ptr<Quantizer> s = make_quantizer("squeezellm", sp);
  auto sg = make_gptq_grid(*s, in);
  const std::vector<float> gs = gptq_quantize("w", w.data(), R, C, H.data(), *sg, {});
  std::vector<float> fit(w.size());
  s->decode(s->encode("w", w.data(), R, C), fit.data());
  int64_t exact = 0;
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c)
      if (sg->exact(r, c)) {
        ++exact;
        EXPECT_EQ(gs[static_cast<std::size_t>(r * C + c)], fit[static_cast<std::size_t>(r * C + c)]);
        EXPECT_NEAR(gs[static_cast<std::size_t>(r * C + c)], w[static_cast<std::size_t>(r * C + c)],
                    1e-3f * std::fabs(w[static_cast<std::size_t>(r * C + c)]));
      }
  EXPECT_EQ(exact, std::llround(0.05 * R * C));
  std::vector<float> ds(w.size());
  s->decode(sg->encode(), ds.data());
  EXPECT_EQ(ds, gs);
}

TEST(Gptq, BadInputs) {
  const std::vector<float> w = test::random_normal(4 * 16, 1, 0.05f);
  std::vector<double> H = correlated_hessian(16, 40, 2);
  const std::unique_ptr<Quantizer> q = make_quantizer(parse_format_label("int4"));
  GptqGridInput in{"m", w.data(), nullptr, 4, 16};
  auto grid = make_gptq_grid(*q, in);
  GptqOptions o;
  o.damp = 0;
  EXPECT_THROW(gptq_quantize("m", w.data(), 4, 16, H.data(), *grid, o), Error);
  H[5] = NAN;
  try {
    gptq_quantize("m", w.data(), 4, 16, H.data(), *grid, {});
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kInput);
    EXPECT_NE(std::string(e.what()).find("m: Hessian"), std::string::npos);
  }
}

}  // namespace
}  // namespace mpq
