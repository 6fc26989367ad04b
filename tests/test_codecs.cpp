// Tests of lib/numeric/codecs: every code of every format decoded against an independent
// formula from the bit fields, encode(decode(c)) == c, ties-to-even at every midpoint,
// saturation and NaN rules, and encode against a brute-force nearest-value search.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "lib/common/error.h"
#include "lib/numeric/codecs.h"

namespace mpq {
namespace {

// ---- Independent reference: value of a binary floating-point code from its fields ----

/// Layout of a small binary float: 1 sign bit, `ebits` exponent bits, `mbits` mantissa bits.
struct Layout {
  const char* name;
  int ebits;
  int mbits;
  int bias;
  /// Special-value rule of the all-ones exponent: "ieee" (inf/NaN), "e4m3" (only
  /// S.1111.111 is NaN), "none" (E2M1: no specials).
  const char* specials;
};

constexpr Layout kE4M3{"e4m3", 4, 3, 7, "e4m3"};
constexpr Layout kE5M2{"e5m2", 5, 2, 15, "ieee"};
constexpr Layout kE2M1{"e2m1", 2, 1, 1, "none"};
constexpr Layout kFp16{"fp16", 5, 10, 15, "ieee"};
constexpr Layout kBf16{"bf16", 8, 7, 127, "ieee"};

enum class Kind { kFinite, kInf, kNaN };

struct RefValue {
  Kind kind;
  double value;  // signed; for kInf the sign is carried by ±infinity
};

/// Decodes `code` from its bit fields with ldexp, separately from the library.
RefValue ref_decode(const Layout& L, uint32_t code) {
  const int total = 1 + L.ebits + L.mbits;
  const bool neg = (code >> (total - 1)) & 1u;
  const uint32_t e = (code >> L.mbits) & ((1u << L.ebits) - 1);
  const uint32_t m = code & ((1u << L.mbits) - 1);
  const uint32_t emax_field = (1u << L.ebits) - 1;
  const double sign = neg ? -1.0 : 1.0;
  if (std::string(L.specials) == "ieee" && e == emax_field) {
    if (m == 0) return {Kind::kInf, sign * std::numeric_limits<double>::infinity()};
    return {Kind::kNaN, 0.0};
  }
  if (std::string(L.specials) == "e4m3" && e == emax_field && m == (1u << L.mbits) - 1)
    return {Kind::kNaN, 0.0};
  double mag;
  if (e == 0)
    mag = std::ldexp(static_cast<double>(m), 1 - L.bias - L.mbits);  // subnormal
  else
    mag = std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -L.mbits),
                     static_cast<int>(e) - L.bias);
  return {Kind::kFinite, sign * mag};  // sign * 0.0 gives -0.0 for the negative zero code
}

uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

using Decoder = std::function<float(uint32_t)>;
using Encoder = std::function<uint32_t(float)>;

struct Codec {
  Layout layout;
  Decoder decode;
  Encoder encode;
  uint32_t max_code;   ///< largest positive finite code
  uint32_t sign_bit;   ///< sign bit of a code
  bool saturating;     ///< overflow -> max finite (else -> inf)
};

Codec e4m3_codec() {
  return {kE4M3, [](uint32_t c) { return e4m3_to_fp32(static_cast<uint8_t>(c)); },
          [](float x) { return uint32_t{fp32_to_e4m3(x)}; }, 0x7E, 0x80, true};
}
Codec e5m2_codec() {
  return {kE5M2, [](uint32_t c) { return e5m2_to_fp32(static_cast<uint8_t>(c)); },
          [](float x) { return uint32_t{fp32_to_e5m2(x)}; }, 0x7B, 0x80, true};
}
Codec e2m1_codec() {
  return {kE2M1, [](uint32_t c) { return e2m1_to_fp32(static_cast<uint8_t>(c)); },
          [](float x) { return uint32_t{fp32_to_e2m1(x)}; }, 0x7, 0x8, true};
}
Codec fp16_codec() {
  return {kFp16, [](uint32_t c) { return fp16_to_fp32(static_cast<uint16_t>(c)); },
          [](float x) { return uint32_t{fp32_to_fp16(x)}; }, 0x7BFF, 0x8000, false};
}
Codec bf16_codec() {
  return {kBf16, [](uint32_t c) { return bf16_to_fp32(static_cast<uint16_t>(c)); },
          [](float x) { return uint32_t{fp32_to_bf16(x)}; }, 0x7F7F, 0x8000, false};
}

std::string hex(uint32_t v) {
  std::ostringstream s;
  s << "0x" << std::hex << v;
  return s.str();
}

/// Collects the first few mismatches so an exhaustive loop reports compactly.
struct Mismatches {
  int count = 0;
  std::string first;
  void add(const std::string& what) {
    if (count++ < 8) first += what + "\n";
  }
};

// ---- Exhaustive decode and round trip ----

void check_exhaustive_decode(const Codec& c) {
  const uint32_t ncodes = 1u << (1 + c.layout.ebits + c.layout.mbits);
  Mismatches mm;
  for (uint32_t code = 0; code < ncodes; ++code) {
    const RefValue ref = ref_decode(c.layout, code);
    const float got = c.decode(code);
    if (ref.kind == Kind::kNaN) {
      if (!std::isnan(got)) mm.add(hex(code) + ": expected NaN, got " + std::to_string(got));
      continue;
    }
    const float want = static_cast<float>(ref.value);
    if (static_cast<double>(want) != ref.value) mm.add(hex(code) + ": reference not exact in fp32");
    if (bits_of(got) != bits_of(want))
      mm.add(hex(code) + ": got " + std::to_string(got) + " (bits " + hex(bits_of(got)) +
             "), want " + std::to_string(want) + " (bits " + hex(bits_of(want)) + ")");
  }
  EXPECT_EQ(mm.count, 0) << c.layout.name << " decode mismatches:\n" << mm.first;
}

void check_round_trip(const Codec& c) {
  const uint32_t ncodes = 1u << (1 + c.layout.ebits + c.layout.mbits);
  Mismatches mm;
  int checked = 0;
  for (uint32_t code = 0; code < ncodes; ++code) {
    const RefValue ref = ref_decode(c.layout, code);
    if (ref.kind == Kind::kNaN) continue;
    // Saturating formats map ±inf to ±max finite, so an inf code cannot round trip.
    if (ref.kind == Kind::kInf && c.saturating) continue;
    const uint32_t back = c.encode(c.decode(code));
    ++checked;
    if (back != code) mm.add(hex(code) + " -> " + hex(back));
  }
  EXPECT_GT(checked, 0);
  EXPECT_EQ(mm.count, 0) << c.layout.name << " round-trip mismatches:\n" << mm.first;
}

TEST(Codecs, E4M3ExhaustiveDecode) { check_exhaustive_decode(e4m3_codec()); }
TEST(Codecs, E5M2ExhaustiveDecode) { check_exhaustive_decode(e5m2_codec()); }
TEST(Codecs, E2M1ExhaustiveDecode) { check_exhaustive_decode(e2m1_codec()); }
TEST(Codecs, Fp16ExhaustiveDecode) { check_exhaustive_decode(fp16_codec()); }
TEST(Codecs, Bf16ExhaustiveDecode) { check_exhaustive_decode(bf16_codec()); }

TEST(Codecs, E4M3RoundTrip) { check_round_trip(e4m3_codec()); }
TEST(Codecs, E5M2RoundTrip) { check_round_trip(e5m2_codec()); }
TEST(Codecs, E2M1RoundTrip) { check_round_trip(e2m1_codec()); }
TEST(Codecs, Fp16RoundTrip) { check_round_trip(fp16_codec()); }
TEST(Codecs, Bf16RoundTrip) { check_round_trip(bf16_codec()); }

TEST(Codecs, KnownValues) {
  const float e2m1[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  for (uint8_t n = 0; n < 8; ++n) {
    EXPECT_EQ(e2m1_to_fp32(n), e2m1[n]);
    EXPECT_EQ(e2m1_to_fp32(static_cast<uint8_t>(n | 0x8)), -e2m1[n]);
  }
  EXPECT_EQ(e2m1_to_fp32(0xF3), 1.5f);  // only the low nibble is used
  EXPECT_EQ(e4m3_to_fp32(0x7E), kE4M3Max);
  EXPECT_EQ(e4m3_to_fp32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(e4m3_to_fp32(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(e4m3_to_fp32(0x38), 1.0f);
  EXPECT_EQ(e5m2_to_fp32(0x7B), kE5M2Max);
  EXPECT_EQ(e5m2_to_fp32(0x01), std::ldexp(1.0f, -16));
  EXPECT_EQ(e5m2_to_fp32(0x3C), 1.0f);
  EXPECT_EQ(fp16_to_fp32(0x3C00), 1.0f);
  EXPECT_EQ(fp16_to_fp32(0x7BFF), 65504.0f);
  EXPECT_EQ(fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(bf16_to_fp32(0x3F80), 1.0f);
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(fp32_to_e2m1(kE2M1Max), 0x7);
  EXPECT_EQ(fp32_to_e5m2(1.0f), 0x3C);
  EXPECT_EQ(fp32_to_e4m3(-1.0f), 0xB8);
}

TEST(Codecs, NegativeZeroKeepsSign) {
  EXPECT_EQ(fp32_to_e4m3(-0.0f), 0x80);
  EXPECT_EQ(fp32_to_e5m2(-0.0f), 0x80);
  EXPECT_EQ(fp32_to_e2m1(-0.0f), 0x8);
  EXPECT_EQ(fp32_to_fp16(-0.0f), 0x8000);
  EXPECT_EQ(fp32_to_bf16(-0.0f), 0x8000);
  // Negative values that round to zero keep the sign too.
  EXPECT_EQ(fp32_to_e4m3(-1e-30f), 0x80);
  EXPECT_EQ(fp32_to_e2m1(-0.2f), 0x8);
  EXPECT_EQ(fp32_to_fp16(-1e-30f), 0x8000);
  EXPECT_TRUE(std::signbit(e2m1_to_fp32(0x8)));
  EXPECT_TRUE(std::signbit(e4m3_to_fp32(0x80)));
  EXPECT_TRUE(std::signbit(e5m2_to_fp32(0x80)));
}

// ---- Rounding boundaries: every midpoint ties to even, its neighbours round outward ----

void check_midpoints(const Codec& c) {
  Mismatches mm;
  for (uint32_t code = 0; code < c.max_code; ++code) {
    const float lo = c.decode(code);
    const float hi = c.decode(code + 1);
    const double mid_d = (static_cast<double>(lo) + static_cast<double>(hi)) / 2.0;
    const float mid = static_cast<float>(mid_d);
    ASSERT_EQ(static_cast<double>(mid), mid_d) << c.layout.name << " midpoint not exact";
    const uint32_t even = (code & 1u) ? code + 1 : code;
    const float below = std::nextafter(mid, lo);
    const float above = std::nextafter(mid, hi);
    for (int s = 0; s < 2; ++s) {
      const float sg = s ? -1.0f : 1.0f;
      const uint32_t sb = s ? c.sign_bit : 0u;
      const uint32_t got_mid = c.encode(sg * mid);
      const uint32_t got_below = c.encode(sg * below);
      const uint32_t got_above = c.encode(sg * above);
      if (got_mid != (sb | even))
        mm.add("mid " + std::to_string(sg * mid) + " -> " + hex(got_mid) + ", want " +
               hex(sb | even));
      if (got_below != (sb | code))
        mm.add("below-mid " + std::to_string(sg * below) + " -> " + hex(got_below) + ", want " +
               hex(sb | code));
      if (got_above != (sb | (code + 1)))
        mm.add("above-mid " + std::to_string(sg * above) + " -> " + hex(got_above) + ", want " +
               hex(sb | (code + 1)));
    }
  }
  EXPECT_EQ(mm.count, 0) << c.layout.name << " midpoint mismatches:\n" << mm.first;
}

TEST(Codecs, E4M3Midpoints) { check_midpoints(e4m3_codec()); }
TEST(Codecs, E5M2Midpoints) { check_midpoints(e5m2_codec()); }
TEST(Codecs, E2M1Midpoints) { check_midpoints(e2m1_codec()); }
TEST(Codecs, Fp16Midpoints) { check_midpoints(fp16_codec()); }
TEST(Codecs, Bf16Midpoints) { check_midpoints(bf16_codec()); }

TEST(Codecs, E2M1MidpointTable) {
  // The thresholds ModelOpt's E2M1 cast uses, spelled out.
  const float mids[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
  const uint8_t want[7] = {0, 2, 2, 4, 4, 6, 6};
  for (int i = 0; i < 7; ++i) {
    EXPECT_EQ(fp32_to_e2m1(mids[i]), want[i]) << mids[i];
    EXPECT_EQ(fp32_to_e2m1(-mids[i]), want[i] | 0x8) << -mids[i];
  }
}

// ---- Saturation, infinity and NaN ----

TEST(Codecs, E4M3SaturationAndNaN) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (float x : {448.0f, std::nextafter(448.0f, inf), 464.0f, 480.0f, 1e6f,
                  std::numeric_limits<float>::max(), inf}) {
    EXPECT_EQ(fp32_to_e4m3(x), 0x7E) << x;
    EXPECT_EQ(fp32_to_e4m3(-x), 0xFE) << -x;
  }
  EXPECT_EQ(fp32_to_e4m3(nan), 0x7F);
  EXPECT_EQ(fp32_to_e4m3(-nan), 0xFF);
  EXPECT_TRUE(std::isnan(e4m3_to_fp32(0x7F)));
  EXPECT_TRUE(std::isnan(e4m3_to_fp32(0xFF)));
}

TEST(Codecs, E5M2SaturationInfAndNaN) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (float x : {57344.0f, 61440.0f, 65536.0f, 1e9f, std::numeric_limits<float>::max(), inf}) {
    EXPECT_EQ(fp32_to_e5m2(x), 0x7B) << x;
    EXPECT_EQ(fp32_to_e5m2(-x), 0xFB) << -x;
  }
  EXPECT_EQ(fp32_to_e5m2(nan), 0x7E);
  EXPECT_EQ(fp32_to_e5m2(-nan), 0xFE);
  EXPECT_EQ(e5m2_to_fp32(0x7C), inf);
  EXPECT_EQ(e5m2_to_fp32(0xFC), -inf);
  for (uint8_t b : {0x7D, 0x7E, 0x7F, 0xFD, 0xFE, 0xFF}) EXPECT_TRUE(std::isnan(e5m2_to_fp32(b)));
}

TEST(Codecs, E2M1SaturationAndNaN) {
  const float inf = std::numeric_limits<float>::infinity();
  for (float x : {6.0f, 7.0f, 8.0f, 1e30f, inf}) {
    EXPECT_EQ(fp32_to_e2m1(x), 0x7) << x;
    EXPECT_EQ(fp32_to_e2m1(-x), 0xF) << -x;
  }
  EXPECT_EQ(fp32_to_e2m1(std::numeric_limits<float>::quiet_NaN()), 0x0);
  EXPECT_EQ(fp32_to_e2m1(-std::numeric_limits<float>::quiet_NaN()), 0x0);
}

TEST(Codecs, Fp16OverflowAndNaN) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(fp32_to_fp16(65504.0f), 0x7BFF);
  EXPECT_EQ(fp32_to_fp16(std::nextafter(65520.0f, 0.0f)), 0x7BFF);
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7C00);  // tie between 65504 (odd) and 2^16 -> inf
  EXPECT_EQ(fp32_to_fp16(1e10f), 0x7C00);
  EXPECT_EQ(fp32_to_fp16(inf), 0x7C00);
  EXPECT_EQ(fp32_to_fp16(-inf), 0xFC00);
  EXPECT_EQ(fp16_to_fp32(0x7C00), inf);
  EXPECT_EQ(fp16_to_fp32(0xFC00), -inf);
  // NaN stays NaN with its sign, even when the payload lives in fp32's low mantissa bits.
  for (uint32_t bits : {0x7FC00000u, 0x7F800001u, 0xFFC00000u, 0xFF800001u}) {
    float x;
    std::memcpy(&x, &bits, 4);
    const uint16_t h = fp32_to_fp16(x);
    EXPECT_EQ(h & 0x7C00, 0x7C00) << hex(bits);
    EXPECT_NE(h & 0x03FF, 0) << hex(bits);
    EXPECT_EQ(h >> 15, bits >> 31) << hex(bits);
    EXPECT_TRUE(std::isnan(fp16_to_fp32(h)));
  }
}

TEST(Codecs, Bf16OverflowAndNaN) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(fp32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);  // RNE overflows to inf
  EXPECT_EQ(fp32_to_bf16(inf), 0x7F80);
  EXPECT_EQ(fp32_to_bf16(-inf), 0xFF80);
  for (uint32_t bits : {0x7FC00000u, 0x7F800001u, 0xFF800001u, 0x7FFFFFFFu}) {
    float x;
    std::memcpy(&x, &bits, 4);
    const uint16_t b = fp32_to_bf16(x);
    EXPECT_TRUE(std::isnan(bf16_to_fp32(b))) << hex(bits) << " -> " << hex(b);
    EXPECT_EQ(b >> 15, bits >> 31) << hex(bits);
  }
}

// ---- Brute force: encode == nearest representable value, ties to even ----

/// Positive finite values of a codec indexed by code (0..max_code), ascending.
std::vector<double> positive_values(const Codec& c) {
  std::vector<double> v;
  for (uint32_t code = 0; code <= c.max_code; ++code) {
    const RefValue r = ref_decode(c.layout, code);
    v.push_back(r.value);
  }
  for (std::size_t i = 1; i < v.size(); ++i) MPQ_ASSERT(v[i] > v[i - 1]);
  return v;
}

/// Expected code of x: nearest value (ties to the even code), saturating to max_code or
/// overflowing to inf at max + half an ulp; sign bit copied from x. `linear` scans every
/// code; otherwise a binary search over the same ascending table.
uint32_t nearest_code(const Codec& c, const std::vector<double>& vals, float x, bool linear) {
  const uint32_t sb = std::signbit(x) ? c.sign_bit : 0u;
  const double vmax = vals.back();
  double a = std::fabs(static_cast<double>(x));
  // Saturating formats: anything past max rounds to max. Clamping first also keeps the
  // distance comparisons below exact (far-away inputs would make |a - v| round to ties).
  if (c.saturating) a = std::min(a, vmax);
  if (!c.saturating) {
    const double half_ulp = (vmax - vals[vals.size() - 2]) / 2.0;
    if (a >= vmax + half_ulp) return sb | (c.max_code + 1);  // inf code
  }
  uint32_t best = 0;
  if (linear) {
    double bestd = std::numeric_limits<double>::infinity();
    for (uint32_t code = 0; code < vals.size(); ++code) {
      const double d = std::fabs(a - vals[code]);
      if (d < bestd || (d == bestd && (code & 1u) == 0)) {
        bestd = d;
        best = code;
      }
    }
  } else {
    const auto it = std::lower_bound(vals.begin(), vals.end(), a);
    if (it == vals.end()) {
      best = c.max_code;
    } else if (it == vals.begin()) {
      best = 0;
    } else {
      const uint32_t hi = static_cast<uint32_t>(it - vals.begin());
      const uint32_t lo = hi - 1;
      const double dlo = a - vals[lo];
      const double dhi = vals[hi] - a;
      best = dlo < dhi ? lo : dhi < dlo ? hi : ((lo & 1u) ? hi : lo);
    }
  }
  return sb | best;
}

/// Random fp32 inputs: exponents spread over [emin_p2, emax_p2] (powers of two), random
/// mantissas (some with low bits cleared so exact values and midpoints occur), plus fp32
/// subnormals and arbitrary finite bit patterns.
std::vector<float> random_inputs(int n, int emin_p2, int emax_p2, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> exp_d(emin_p2, emax_p2);
  std::uniform_int_distribution<uint32_t> bits_d;
  std::uniform_int_distribution<int> kind_d(0, 19);
  std::uniform_int_distribution<int> clear_d(0, 23);
  std::vector<float> out;
  out.reserve(n);
  while (static_cast<int>(out.size()) < n) {
    const uint32_t r = bits_d(rng);
    const uint32_t sign = (r & 1u) << 31;
    uint32_t man = bits_d(rng) & 0x7FFFFFu;
    const int kind = kind_d(rng);
    if (kind < 8) man &= ~((1u << clear_d(rng)) - 1u);  // short mantissas: ties, exact values
    uint32_t bits;
    if (kind == 18) {
      bits = sign | man;  // fp32 subnormal
    } else if (kind == 19) {
      bits = bits_d(rng);  // anything finite
      if ((bits & 0x7F800000u) == 0x7F800000u) continue;
    } else {
      bits = sign | (static_cast<uint32_t>(exp_d(rng) + 127) << 23) | man;
    }
    float x;
    std::memcpy(&x, &bits, 4);
    out.push_back(x);
  }
  return out;
}

void check_brute_force(const Codec& c, int n, int emin_p2, int emax_p2, bool linear) {
  const std::vector<double> vals = positive_values(c);
  const std::vector<float> xs = random_inputs(n, emin_p2, emax_p2, 12345u);
  Mismatches mm;
  for (float x : xs) {
    const uint32_t want = nearest_code(c, vals, x, linear);
    const uint32_t got = c.encode(x);
    if (got != want) {
      std::ostringstream s;
      s.precision(9);
      s << x << " (bits " << hex(bits_of(x)) << ") -> " << hex(got) << ", want " << hex(want);
      mm.add(s.str());
    }
  }
  EXPECT_EQ(mm.count, 0) << c.layout.name << " brute-force mismatches:\n" << mm.first;
}

// Exponent spans cover below the smallest subnormal through past the largest finite value.
TEST(Codecs, E4M3BruteForce) { check_brute_force(e4m3_codec(), 300000, -13, 10, true); }
TEST(Codecs, E5M2BruteForce) { check_brute_force(e5m2_codec(), 300000, -19, 17, true); }
TEST(Codecs, E2M1BruteForce) { check_brute_force(e2m1_codec(), 300000, -4, 4, true); }
TEST(Codecs, Fp16BruteForce) { check_brute_force(fp16_codec(), 300000, -27, 17, false); }
TEST(Codecs, Bf16BruteForce) { check_brute_force(bf16_codec(), 300000, -126, 127, false); }

}  // namespace
}  // namespace mpq
