// Scalar codecs: fp32 <-> fp16 / bf16 / OCP E4M3 / OCP E5M2 / E2M1, by integer bit
// manipulation only (no compiler _Float16, no dependence on the FPU rounding mode), so
// results are the same on every host. The intended semantics are those of NVIDIA's
// cvt.rn(.satfinite) conversions; fp32_to_fp16 was checked against GCC's _Float16 cast
// for all 2^32 fp32 inputs (a one-off check, not part of the test suite).
//
// Sources: IEEE 754-2008 binary16; bfloat16 (top half of binary32); OCP 8-bit Floating
// Point Specification (OFP8) rev 1.0; OCP Microscaling Formats (MX) v1.0 (E2M1).
//
// Conventions chosen here (the header states the rest):
//   * Negative zero keeps its sign bit in every format, E2M1 included: fp32_to_e2m1(-0.0f)
//     and any negative input that rounds to zero give 0x8, and e2m1_to_fp32(0x8) is -0.0f.
//     So encode(decode(c)) == c for all 16 E2M1 nibbles.
//   * fp16/bf16 NaN: sign kept, quiet bit set, top payload bits kept (bf16 truncates, fp16
//     keeps the top 10 bits of the fp32 payload).
//   * E5M2 ±inf codes decode to ±inf but (satfinite) encode back to ±57344 (0x7B / 0xFB).
#include "lib/numeric/codecs.h"

#include <cstring>

namespace mpq {
namespace {

uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

float bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

/// v / 2^s rounded to nearest, ties to even, for 1 <= s <= 31. Written without branches:
/// encoders run on every weight, and data-dependent branches mispredict on real data.
inline uint32_t shift_right_rne(uint32_t v, int s) {
  const uint32_t q = v >> s;
  const uint32_t rem = v & ((uint32_t{1} << s) - 1);
  const uint32_t half = uint32_t{1} << (s - 1);
  return q + static_cast<uint32_t>((rem > half) | ((rem == half) & (q & 1u)));
}

/// Magnitude code of a non-negative fp32 (given by its bits, sign clear, not NaN) in a
/// binary format with `mbits` (<= 22) mantissa bits and exponent bias `bias` (emin =
/// 1 - bias >= -125), IEEE layout (biased exponent above the mantissa, subnormals at
/// biased exponent 0), rounded to nearest even. No overflow handling: the result grows
/// past the largest finite code (fp32 inf lands far past it); callers clamp.
///
/// With value = sig * 2^(e - 23) (sig with the implicit bit; fp32 subnormals have e = -126
/// and no implicit bit), the target quantum is 2^(max(e, emin) - mbits), so the rounded
/// significand is q = RNE(sig >> (23 - mbits + max(0, emin - e))). The code is then
/// (max(e - emin, 0) << mbits) + q for normals and subnormals alike: for a normal, q carries
/// the implicit bit, which adds the missing 1 to the biased exponent (e - emin + 1 = e +
/// bias), and a rounding carry (q = 2^(mbits+1)) moves on to the next binade; a subnormal
/// that rounds up to 2^mbits lands exactly on the smallest normal's code.
inline uint32_t encode_magnitude(uint32_t abs_bits, int mbits, int bias) {
  const int exp32 = static_cast<int>(abs_bits >> 23);
  const uint32_t sig = (abs_bits & 0x7FFFFFu) | (exp32 != 0 ? 0x800000u : 0u);
  const int e = (exp32 != 0 ? exp32 : 1) - 127;
  const int emin = 1 - bias;
  const int below = emin - e > 0 ? emin - e : 0;
  int shift = 23 - mbits + below;
  // sig < 2^24, so any shift >= 25 rounds to 0 (sig < half); capping keeps it defined.
  shift = shift < 25 ? shift : 25;
  const uint32_t q = shift_right_rne(sig, shift);
  const int above = e - emin > 0 ? e - emin : 0;
  return (static_cast<uint32_t>(above) << mbits) + q;
}

/// Decodes a finite magnitude code (no sign) of an IEEE-layout format to fp32 bits.
/// Every value of the formats here is exactly representable in fp32 as a normal number.
uint32_t decode_magnitude(uint32_t code, int mbits, int bias) {
  const uint32_t m = code & ((uint32_t{1} << mbits) - 1);
  int e = static_cast<int>(code >> mbits);
  if (e == 0) {
    if (m == 0) return 0;
    // Subnormal: m * 2^(1 - bias - mbits). Normalize: shift m up until the implicit bit
    // (bit mbits) is set, lowering the exponent by one per shift.
    uint32_t mm = m;
    e = 1;
    while ((mm & (uint32_t{1} << mbits)) == 0) {
      mm <<= 1;
      --e;
    }
    return (static_cast<uint32_t>(e - bias + 127) << 23) |
           ((mm & ((uint32_t{1} << mbits) - 1)) << (23 - mbits));
  }
  return (static_cast<uint32_t>(e - bias + 127) << 23) | (m << (23 - mbits));
}

constexpr uint32_t kF32SignBit = 0x80000000u;
constexpr uint32_t kF32ExpMask = 0x7F800000u;

bool is_nan_bits(uint32_t abs_bits) { return abs_bits > kF32ExpMask; }

/// Shared encoder of the saturating 8-bit/4-bit formats: RNE, clamp to `max_code`.
/// Infinity saturates too (its code lands past max_code); NaN is the caller's.
inline uint32_t encode_satfinite(uint32_t abs_bits, int mbits, int bias, uint32_t max_code) {
  const uint32_t c = encode_magnitude(abs_bits, mbits, bias);
  return c > max_code ? max_code : c;
}

struct Fp8Tables {
  float e4m3[256];
  float e5m2[256];
  float e2m1[16];
};

const Fp8Tables& tables() {
  static const Fp8Tables t = [] {
    Fp8Tables r{};
    for (uint32_t b = 0; b < 256; ++b) {
      const uint32_t sign = (b & 0x80u) ? kF32SignBit : 0u;
      const uint32_t mag = b & 0x7Fu;
      // E4M3: S.1111.111 is NaN; everything else finite (no infinities).
      r.e4m3[b] = mag == 0x7Fu ? bits_float(sign | 0x7FC00000u)
                               : bits_float(sign | decode_magnitude(mag, 3, 7));
      // E5M2: exponent 31 with mantissa 0 is inf, else NaN.
      if (mag == 0x7Cu)
        r.e5m2[b] = bits_float(sign | kF32ExpMask);
      else if (mag > 0x7Cu)
        r.e5m2[b] = bits_float(sign | 0x7FC00000u);
      else
        r.e5m2[b] = bits_float(sign | decode_magnitude(mag, 2, 15));
    }
    for (uint32_t n = 0; n < 16; ++n) {
      const uint32_t sign = (n & 0x8u) ? kF32SignBit : 0u;
      r.e2m1[n] = bits_float(sign | decode_magnitude(n & 0x7u, 1, 1));
    }
    return r;
  }();
  return t;
}

}  // namespace

uint16_t fp32_to_fp16(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & ~kF32SignBit;
  if (is_nan_bits(a)) return static_cast<uint16_t>(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
  uint32_t c = encode_magnitude(a, 10, 15);
  if (c > 0x7C00u) c = 0x7C00u;  // inf, overflow and rounding past 65504 -> inf
  return static_cast<uint16_t>(sign | c);
}

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t mag = h & 0x7FFFu;
  if (mag >= 0x7C00u) {
    // inf (mantissa 0) or NaN (payload moved to the top of the fp32 mantissa).
    return bits_float(sign | kF32ExpMask | ((mag & 0x3FFu) << 13));
  }
  return bits_float(sign | decode_magnitude(mag, 10, 15));
}

uint16_t fp32_to_bf16(float x) {
  const uint32_t u = float_bits(x);
  if (is_nan_bits(u & ~kF32SignBit)) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  // RNE on the low 16 bits; a carry propagates through exponent (and to inf on overflow).
  const uint32_t r = u + 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(r >> 16);
}

float bf16_to_fp32(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

uint8_t fp32_to_e4m3(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t a = u & ~kF32SignBit;
  if (is_nan_bits(a)) return static_cast<uint8_t>(sign | 0x7Fu);
  return static_cast<uint8_t>(sign | encode_satfinite(a, 3, 7, 0x7Eu));
}

float e4m3_to_fp32(uint8_t b) { return tables().e4m3[b]; }

uint8_t fp32_to_e5m2(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t a = u & ~kF32SignBit;
  if (is_nan_bits(a)) return static_cast<uint8_t>(sign | 0x7Eu);
  return static_cast<uint8_t>(sign | encode_satfinite(a, 2, 15, 0x7Bu));
}

float e5m2_to_fp32(uint8_t b) { return tables().e5m2[b]; }

uint8_t fp32_to_e2m1(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t a = u & ~kF32SignBit;
  if (is_nan_bits(a)) return 0;
  const uint32_t sign = (u >> 28) & 0x8u;
  return static_cast<uint8_t>(sign | encode_satfinite(a, 1, 1, 0x7u));
}

float e2m1_to_fp32(uint8_t nibble) { return tables().e2m1[nibble & 0xFu]; }

}  // namespace mpq
