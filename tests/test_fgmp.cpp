// Tests of lib/quant/fgmp: the FGMP quantizer against references written here (a brute-force
// clip search over the grid with nearest-grid-point E2M1 rounding, FP8 from its formula, the
// block scores from those), the limits where it must equal nvfp4 / fp8 bit for bit, the
// selection counts, the global selection and --target-bpw arithmetic (bytes from the
// documented formula), and hostile tensors.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "lib/common/error.h"
#include "lib/numeric/codecs.h"
#include "lib/quant/fgmp.h"
#include "lib/quant/fp8.h"
#include "lib/quant/nvfp4.h"
#include "lib/quant/quantizer.h"

namespace mpq {
namespace {

// ---- Independent references (no call into lib/quant) ----

struct Mat {
  int64_t rows, cols;
  std::vector<float> w, f;  // weights, Fisher
};

Mat random_mat(int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> n(0.0f, 0.05f);
  std::exponential_distribution<float> e(1.0f);
  Mat m{rows, cols, std::vector<float>(static_cast<std::size_t>(rows * cols)), {}};
  for (float& x : m.w) x = n(g);
  m.w[3] = 0.9f;  // an outlier, so blocks differ widely in amax
  m.f.resize(m.w.size());
  for (float& x : m.f) x = e(g) * e(g);  // heavy-tailed, like a real Fisher
  return m;
}

int64_t nblocks(int64_t cols) { return (cols + 15) / 16; }

float tensor_amax(const Mat& m) {
  float a = 0;
  for (float x : m.w) a = std::max(a, std::fabs(x));
  return a;
}

// The E2M1 grid point nearest to x by brute force over the 8 magnitudes (saturates at 6);
// a tie goes to the even code (0, 1, 2, 4), as round-to-nearest-even does.
float nearest_e2m1(float x) {
  static const float kMag[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  const float a = std::fabs(x);
  int best = 0;
  for (int i = 1; i < 8; ++i) {
    const float d = std::fabs(a - kMag[i]), bd = std::fabs(a - kMag[best]);
    if (d < bd || (d == bd && i % 2 == 0)) best = i;
  }
  return std::copysign(kMag[best], x);
}

// NVFP4 decode of block elements w[0..n) at E4M3 block scale byte sb.
std::vector<float> fp4_block(const float* w, int64_t n, uint8_t sb, float s2) {
  std::vector<float> q(static_cast<std::size_t>(n), 0.0f);
  const float scale = e4m3_to_fp32(sb) * s2;
  if (!(scale > 0)) return q;
  for (int64_t c = 0; c < n; ++c) q[c] = nearest_e2m1(w[c] / scale) * e4m3_to_fp32(sb) * s2;
  return q;
}

double werr(const float* w, const float* f, const std::vector<float>& q) {
  double e = 0;
  for (std::size_t c = 0; c < q.size(); ++c) {
    const double d = static_cast<double>(w[c]) - q[c];
    e += (f ? f[c] : 1.0) * d * d;
  }
  return e;
}

// Brute force over alpha = 0.70..1.00: the least weighted error, and the NVFP4 values at it.
double brute_clip(const float* w, const float* f, int64_t n, float s2, std::vector<float>* best_q) {
  float bamax = 0;
  for (int64_t c = 0; c < n; ++c) bamax = std::max(bamax, std::fabs(w[c]));
  double best = INFINITY;
  for (int k = 70; k <= 100; ++k) {
    const float alpha = static_cast<float>(k / 100.0);
    const uint8_t sb = s2 > 0 ? fp32_to_e4m3(alpha * bamax / (6.0f * s2)) : 0;
    const std::vector<float> q = fp4_block(w, n, sb, s2);
    const double e = werr(w, f, q);
    if (e < best) best = e, *best_q = q;
  }
  return best;
}

// Reference block scores sum F (Q4 - Q8)^2 with Q4 the brute-force clipped block.
std::vector<double> ref_scores(const Mat& m, bool weighted_clip, bool use_fisher) {
  const float amax = tensor_amax(m);
  const float s2 = amax / (6.0f * 448.0f), s8 = amax / 448.0f;
  const int64_t nb = nblocks(m.cols);
  std::vector<double> s;
  for (int64_t r = 0; r < m.rows; ++r)
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t c0 = b * 16, n = std::min<int64_t>(16, m.cols - c0);
      const float* w = m.w.data() + r * m.cols + c0;
      const float* f = use_fisher ? m.f.data() + r * m.cols + c0 : nullptr;
      std::vector<float> q4;
      brute_clip(w, weighted_clip ? f : nullptr, n, s2, &q4);
      double e = 0;
      for (int64_t c = 0; c < n; ++c) {
        const double d = static_cast<double>(q4[c]) - static_cast<double>(e4m3_to_fp32(fp32_to_e4m3(w[c] / s8)) * s8);
        e += (f ? f[c] : 1.0) * d * d;
      }
      s.push_back(e);
    }
  return s;
}

// The FP8 flag of every block, read from the block map as the layout documents it.
std::vector<int> fp8_flags(const PackedTensor& p) {
  const PackedPart& map = p.part("weight_block_map");
  const int64_t nb = nblocks(p.cols), mb = (nb + 7) / 8;
  std::vector<int> out;
  for (int64_t r = 0; r < p.rows; ++r)
    for (int64_t b = 0; b < nb; ++b) out.push_back((map.bytes[r * mb + b / 8] >> (b % 8)) & 1);
  return out;
}

int count(const std::vector<int>& v) { return static_cast<int>(std::count(v.begin(), v.end(), 1)); }

std::vector<float> decode(const PackedTensor& p) {
  std::vector<float> out(static_cast<std::size_t>(p.rows * p.cols));
  quantizer_for("fgmp").decode(p, out.data());
  return out;
}

FgmpParams params(double frac, FgmpParams::Clipping clip = FgmpParams::Clipping::kWeighted,
                  FgmpParams::Selection sel = FgmpParams::Selection::kFisher) {
  FgmpParams p;
  p.fp8_fraction = frac;
  p.clipping = clip;
  p.selection = sel;
  return p;
}

// ---- Tests ----

TEST(Fgmp, InFormatTableAndLayout) {
  const FormatInfo& fi = quantizer_for("fgmp").info();
  EXPECT_STREQ(fi.quant_algo, "FGMP");
  EXPECT_EQ(fi.block_size, 16);
  // [5, 40]: NB = 3, MB = 1, 15 blocks, 30% -> llround(4.5) = 5 FP8 (round half away from 0).
  const auto lay = FgmpQuantizer(params(0.3)).layout(5, 40);
  ASSERT_EQ(lay.size(), 7u);
  EXPECT_EQ(lay[0].shape, (std::vector<int64_t>{5, 1}));
  EXPECT_EQ(lay[1].shape, (std::vector<int64_t>{6}));
  EXPECT_EQ(lay[2].shape, (std::vector<int64_t>{10, 8}));
  EXPECT_EQ(lay[3].shape, (std::vector<int64_t>{10}));
  EXPECT_EQ(lay[5].shape, (std::vector<int64_t>{5, 16}));
  // Documented formula: R*MB + 4(R+1) + 9*N4 + 16*N8 + 8.
  EXPECT_EQ(fgmp_bytes(5, 40, 5), 5u * 1 + 4 * 6 + 9 * 10 + 16 * 5 + 8);
  EXPECT_EQ(fgmp_bytes(4096, 4096, 0), 4096u * 32 + 4 * 4097 + 9 * 4096 * 256 + 8);
  EXPECT_THROW(FgmpQuantizer(params(1.5)), Error);
  EXPECT_THROW(fgmp_layout(2, 16, 3), Error);
}

// Every decoded value is the FP8 formula's (FP8 blocks) or the nearest E2M1 grid point at the
// stored block scale (NVFP4 blocks); offsets match the map; the FP8 count is exact.
TEST(Fgmp, RoundTripDecode) {
  const Mat m = random_mat(13, 40, 1);
  const PackedTensor p = FgmpQuantizer(params(0.3)).encode_weighted("t", m.w.data(), m.f.data(), 13, 40);
  const std::vector<int> fl = fp8_flags(p);
  EXPECT_EQ(count(fl), std::llround(0.3 * 13 * 3));
  const std::vector<float> d = decode(p);
  const float amax = tensor_amax(m), s2 = amax / (6.0f * 448.0f), s8 = amax / 448.0f;
  const PackedPart& sc = p.part("weight_fp4_scale");
  const PackedPart& off = p.part("weight_fp8_row_offset");
  int64_t i4 = 0, i8 = 0;
  for (int64_t r = 0; r < 13; ++r) {
    int32_t o;
    std::memcpy(&o, off.bytes.data() + 4 * r, 4);
    EXPECT_EQ(o, i8);
    for (int64_t b = 0; b < 3; ++b) {
      const int64_t c0 = b * 16, n = std::min<int64_t>(16, 40 - c0);
      const float* w = m.w.data() + r * 40 + c0;
      const bool is8 = fl[static_cast<std::size_t>(r * 3 + b)] == 1;
      const std::vector<float> q4 = is8 ? std::vector<float>() : fp4_block(w, n, sc.bytes[static_cast<std::size_t>(i4)], s2);
      for (int64_t c = 0; c < n; ++c) {
        const float got = d[static_cast<std::size_t>(r * 40 + c0 + c)];
        if (is8) EXPECT_EQ(got, e4m3_to_fp32(fp32_to_e4m3(w[c] / s8)) * s8) << r << "," << c0 + c;
        else EXPECT_EQ(got, q4[static_cast<std::size_t>(c)]) << r << "," << c0 + c;
      }
      is8 ? ++i8 : ++i4;
    }
  }
  EXPECT_EQ(i4 + i8, 39);
}

TEST(Fgmp, ZeroFp8ClipNoneEqualsNvfp4) {
  for (int64_t cols : {40, 64}) {
    const Mat m = random_mat(9, cols, 2);
    const PackedTensor p = FgmpQuantizer(params(0.0, FgmpParams::Clipping::kNone)).encode("t", m.w.data(), 9, cols);
    const Nvfp4Quantizer nv;
    const PackedTensor q = nv.encode("t", m.w.data(), 9, cols);
    std::vector<float> want(m.w.size());
    nv.decode(q, want.data());
    const std::vector<float> got = decode(p);
    for (std::size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << i;
    // The streams are the same bytes: [N4, 8] flat = [R, 8 NB]; scales and s2 likewise.
    EXPECT_EQ(p.part("weight_fp4").bytes, q.part("weight").bytes);
    EXPECT_EQ(p.part("weight_fp4_scale").bytes, q.part("weight_scale").bytes);
    EXPECT_EQ(p.part("weight_fp4_scale_2").bytes, q.part("weight_scale_2").bytes);
  }
}

TEST(Fgmp, AllFp8EqualsFp8) {
  const Mat m = random_mat(9, 40, 3);
  const PackedTensor p = FgmpQuantizer(params(1.0)).encode_weighted("t", m.w.data(), m.f.data(), 9, 40);
  const Fp8Quantizer f8;
  std::vector<float> want(m.w.size());
  f8.decode(f8.encode("t", m.w.data(), 9, 40), want.data());
  const std::vector<float> got = decode(p);
  for (std::size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << i;
  EXPECT_EQ(p.part("weight_fp4").shape[0], 0);
}

// Weighted (and unweighted) clipping reaches the brute-force minimum of every block, and is
// never worse than no clipping in weighted error.
TEST(Fgmp, ClippingEqualsBruteForceAndNeverWorse) {
  const Mat m = random_mat(24, 48, 4);
  const float s2 = tensor_amax(m) / (6.0f * 448.0f);
  for (bool weighted : {true, false}) {
    const auto clip = weighted ? FgmpParams::Clipping::kWeighted : FgmpParams::Clipping::kUnweighted;
    const std::vector<float> d = decode(FgmpQuantizer(params(0.0, clip)).encode_weighted("t", m.w.data(), m.f.data(), 24, 48));
    const std::vector<float> d0 = decode(FgmpQuantizer(params(0.0, FgmpParams::Clipping::kNone)).encode_weighted("t", m.w.data(), m.f.data(), 24, 48));
    double tot = 0, tot0 = 0;
    int clipped = 0;
    for (int64_t r = 0; r < 24; ++r)
      for (int64_t c0 = 0; c0 < 48; c0 += 16) {
        const float* w = m.w.data() + r * 48 + c0;
        const float* f = weighted ? m.f.data() + r * 48 + c0 : nullptr;
        std::vector<float> q(d.begin() + r * 48 + c0, d.begin() + r * 48 + c0 + 16);
        std::vector<float> q0(d0.begin() + r * 48 + c0, d0.begin() + r * 48 + c0 + 16);
        std::vector<float> qb;
        const double best = brute_clip(w, f, 16, s2, &qb);
        const double e = werr(w, f, q), e0 = werr(w, f, q0);
        EXPECT_NEAR(e, best, 1e-12 * std::max(1.0, best)) << r << "," << c0;
        EXPECT_LE(e, e0) << r << "," << c0;
        clipped += q != q0;
        tot += e, tot0 += e0;
      }
    EXPECT_GT(clipped, 0);  // the search changes something on this data
    EXPECT_LT(tot, tot0);
  }
}

// The FP8 set is exactly the top llround(F * blocks) of the reference scores.
TEST(Fgmp, SelectedFractionIsExactAndTopScores) {
  const Mat m = random_mat(7, 50, 5);  // NB = 4, 28 blocks
  const std::vector<double> ref = ref_scores(m, true, true);
  for (double frac : {0.1, 0.3, 0.5, 0.75}) {
    const PackedTensor p = FgmpQuantizer(params(frac)).encode_weighted("t", m.w.data(), m.f.data(), 7, 50);
    const std::vector<int> fl = fp8_flags(p);
    const int k = static_cast<int>(std::llround(frac * 28));
    ASSERT_EQ(count(fl), k) << frac;
    std::vector<double> sorted = ref;
    std::sort(sorted.rbegin(), sorted.rend());
    for (std::size_t i = 0; i < ref.size(); ++i)
      EXPECT_EQ(fl[i] == 1, ref[i] >= sorted[static_cast<std::size_t>(k - 1)]) << frac << " block " << i;
  }
  // block_scores agrees with the reference scores.
  const std::vector<double> got = FgmpQuantizer(params(0.3)).block_scores("t", m.w.data(), m.f.data(), 7, 50);
  ASSERT_EQ(got.size(), ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(got[i], ref[i], 1e-9 * std::max(1e-12, ref[i])) << i;
  // Without Fisher, unit weights.
  const std::vector<double> ref1 = ref_scores(m, true, false);
  const std::vector<double> got1 = FgmpQuantizer(params(0.3)).block_scores("t", m.w.data(), nullptr, 7, 50);
  for (std::size_t i = 0; i < ref1.size(); ++i) EXPECT_NEAR(got1[i], ref1[i], 1e-9 * std::max(1e-12, ref1[i])) << i;
}

TEST(Fgmp, ScoreThresholdSelectsAtOrAbove) {
  const Mat m = random_mat(7, 50, 6);
  const std::vector<double> ref = ref_scores(m, true, true);
  std::vector<double> sorted = ref;
  std::sort(sorted.begin(), sorted.end());
  FgmpParams prm = params(0.0);
  const double th = 0.5 * (sorted[19] + sorted[20]);  // 8 of the 28 blocks are above
  prm.score_threshold = th;
  const std::vector<int> fl = fp8_flags(FgmpQuantizer(prm).encode_weighted("t", m.w.data(), m.f.data(), 7, 50));
  EXPECT_EQ(count(fl), 8);
  for (std::size_t i = 0; i < ref.size(); ++i) EXPECT_EQ(fl[i] == 1, ref[i] >= th) << i;
}

TEST(Fgmp, RandomAndAmaxAblationsSelectTheRightCount) {
  const Mat m = random_mat(16, 64, 7);  // 64 blocks
  // amax: the blocks of largest amax (computed here).
  const std::vector<int> fa = fp8_flags(FgmpQuantizer(params(0.25, FgmpParams::Clipping::kNone, FgmpParams::Selection::kAmax)).encode("t", m.w.data(), 16, 64));
  ASSERT_EQ(count(fa), 16);
  std::vector<float> bam;
  for (int64_t b = 0; b < 64; ++b) {
    float a = 0;
    for (int c = 0; c < 16; ++c) a = std::max(a, std::fabs(m.w[b * 16 + c]));
    bam.push_back(a);
  }
  std::vector<float> s = bam;
  std::sort(s.rbegin(), s.rend());
  for (std::size_t i = 0; i < bam.size(); ++i) EXPECT_EQ(fa[i] == 1, bam[i] >= s[15]) << i;
  // random: the exact count; the seed decides the set, reproducibly.
  auto rnd = [&](uint64_t seed) {
    FgmpParams p = params(0.25, FgmpParams::Clipping::kWeighted, FgmpParams::Selection::kRandom);
    p.seed = seed;
    return fp8_flags(FgmpQuantizer(p).encode_weighted("t", m.w.data(), m.f.data(), 16, 64));
  };
  EXPECT_EQ(count(rnd(1)), 16);
  EXPECT_EQ(rnd(1), rnd(1));
  EXPECT_NE(rnd(1), rnd(2));
  EXPECT_NE(rnd(1), fa);
}

TEST(Fgmp, GlobalSelectionBreaksTiesInOrder) {
  std::vector<FgmpTensorScores> t = {{"a", 1, 64, {5, 1, 3, 3}}, {"b", 1, 48, {3, 0, 4}}};
  FgmpSelection s = fgmp_select_global(t, 4.0 / 7.0, 0.0);
  EXPECT_EQ(s.fp8_total, 4);
  EXPECT_EQ(s.fp8_blocks["a"], 3);  // 5 and the two 3s (ties go to the first tensor)
  EXPECT_EQ(s.fp8_blocks["b"], 1);  // 4
  EXPECT_EQ(s.score_threshold, 3.0);
  s = fgmp_select_global(t, 0.0, 0.0);
  EXPECT_EQ(s.fp8_total, 0);
  EXPECT_EQ(s.fp8_blocks["a"], 0);
  s = fgmp_select_global(t, 1.0, 0.0);
  EXPECT_EQ(s.fp8_blocks["a"] + s.fp8_blocks["b"], 7);
}

// --target-bpw: the largest K with bpw <= B, from the documented byte formula.
TEST(Fgmp, TargetBpwIsTheLargestFittingCount) {
  const std::vector<std::array<int64_t, 2>> shapes = {{64, 64}, {96, 64}, {64, 40}, {32, 64}};
  std::vector<FgmpTensorScores> t;
  int64_t params = 0, blocks = 0;
  std::size_t base = 0;  // bytes at 0% FP8
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    const auto [r, c] = shapes[i];
    const int64_t nb = nblocks(c);
    std::vector<double> sc(static_cast<std::size_t>(r * nb));
    for (std::size_t j = 0; j < sc.size(); ++j) sc[j] = static_cast<double>((j * 7919 + i * 31) % 1000);
    t.push_back({"t" + std::to_string(i), r, c, sc});
    params += r * c;
    blocks += r * nb;
    base += static_cast<std::size_t>(r * ((nb + 7) / 8) + 4 * (r + 1) + 9 * r * nb + 8);
  }
  auto bpw = [&](int64_t k) { return 8.0 * static_cast<double>(base + 7 * static_cast<std::size_t>(k)) / static_cast<double>(params); };
  for (double target : {bpw(0), bpw(0) + 0.1, bpw(0) + 0.777, bpw(0) + 2.0, bpw(0) + 3.4}) {
    const FgmpSelection s = fgmp_select_global(t, 0.3, target);
    EXPECT_LE(bpw(s.fp8_total), target);
    EXPECT_TRUE(s.fp8_total == blocks || bpw(s.fp8_total + 1) > target) << target;
    int64_t sum = 0;
    for (const auto& [name, n] : s.fp8_blocks) sum += n;
    EXPECT_EQ(sum, s.fp8_total);
  }
  EXPECT_EQ(fgmp_select_global(t, 0.3, 100.0).fp8_total, blocks);
  try {
    fgmp_select_global(t, 0.3, bpw(0) - 0.01);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::kUsage);
    EXPECT_NE(std::string(e.what()).find("target-bpw"), std::string::npos) << e.what();
  }
}

// encode_count with a global selection's counts stores exactly the globally chosen blocks.
TEST(Fgmp, EncodeCountMatchesGlobalRanking) {
  const Mat a = random_mat(8, 48, 8), b = random_mat(6, 40, 9);
  const FgmpQuantizer q(params(0.3));
  std::vector<FgmpTensorScores> t = {{"a", 8, 48, ref_scores(a, true, true)}, {"b", 6, 40, ref_scores(b, true, true)}};
  const FgmpSelection s = fgmp_select_global(t, 0.4, 0.0);
  EXPECT_EQ(s.fp8_total, std::llround(0.4 * 42));
  for (int i = 0; i < 2; ++i) {
    const Mat& m = i ? b : a;
    const std::vector<int> fl = fp8_flags(q.encode_count(t[i].name, m.w.data(), m.f.data(), m.rows, m.cols, s.fp8_blocks.at(t[i].name)));
    for (std::size_t j = 0; j < fl.size(); ++j) EXPECT_EQ(fl[j] == 1, t[i].scores[j] >= s.score_threshold) << i << " " << j;
  }
}

// Hostile tensors: decode() rejects them with an input error naming the part.
TEST(Fgmp, DecodeRejectsHostileTensors) {
  const Mat m = random_mat(6, 40, 10);
  const PackedTensor good = FgmpQuantizer(params(0.3)).encode_weighted("t", m.w.data(), m.f.data(), 6, 40);
  auto expect_bad = [&](const char* what, auto mutate, const std::string& needle) {
    PackedTensor p = good;
    mutate(p);
    try {
      decode(p);
      ADD_FAILURE() << what << ": no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ExitCode::kInput) << what;
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << what << ": " << e.what();
    }
  };
  auto part = [](PackedTensor& p, const char* s) -> PackedPart& {
    for (PackedPart& x : p.parts)
      if (x.suffix == s) return x;
    throw std::logic_error(s);
  };
  expect_bad("offset0", [&](PackedTensor& p) { part(p, "weight_fp8_row_offset").bytes[0] = 1; }, "weight_fp8_row_offset");
  expect_bad("map bit", [&](PackedTensor& p) { part(p, "weight_block_map").bytes[0] ^= 1; }, "weight_block_map");
  expect_bad("padding bit", [&](PackedTensor& p) { part(p, "weight_block_map").bytes[1] |= 0x80; }, "padding");
  expect_bad("decreasing", [&](PackedTensor& p) {
    auto& o = part(p, "weight_fp8_row_offset").bytes;
    const int32_t v = -1;
    std::memcpy(o.data() + 8, &v, 4);
  }, "weight_fp8_row_offset");
  expect_bad("truncated fp8", [&](PackedTensor& p) {
    auto& f = part(p, "weight_fp8");
    f.shape[0] -= 1;
    f.bytes.resize(f.bytes.size() - 16);
  }, "weight_fp4");
  expect_bad("nan scale", [&](PackedTensor& p) {
    const float nan = std::nanf("");
    std::memcpy(part(p, "weight_fp8_scale").bytes.data(), &nan, 4);
  }, "weight_fp8_scale");
  expect_bad("nan code", [&](PackedTensor& p) { part(p, "weight_fp4_scale").bytes[0] = 0x7F; }, "weight_fp4_scale");
  expect_bad("missing", [&](PackedTensor& p) { p.parts.pop_back(); }, "weight_fp8_scale");
}

TEST(Fgmp, EncodeRejectsBadInput) {
  Mat m = random_mat(4, 32, 11);
  m.f[5] = -1.0f;
  EXPECT_THROW(FgmpQuantizer().encode_weighted("t", m.w.data(), m.f.data(), 4, 32), Error);
  m.f[5] = 1.0f;
  m.w[7] = std::nanf("");
  EXPECT_THROW(FgmpQuantizer().encode_weighted("t", m.w.data(), m.f.data(), 4, 32), Error);
  // An all-zero tensor: decodes to zeros at every fraction.
  const std::vector<float> z(64, 0.0f);
  for (double frac : {0.0, 0.5, 1.0}) {
    const std::vector<float> d = decode(FgmpQuantizer(params(frac)).encode("z", z.data(), 2, 32));
    for (float x : d) EXPECT_EQ(x, 0.0f);
  }
}

}  // namespace
}  // namespace mpq
