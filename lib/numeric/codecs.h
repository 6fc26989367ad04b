// Scalar codecs for the low-precision element types mpq stores.
//
// Sources: IEEE 754-2008 binary16; bfloat16 (Google Brain float, top 16 bits of binary32);
// OCP 8-bit Floating Point Specification (OFP8) rev 1.0 for E4M3 (bias 7, max 448, no
// infinities, NaN = S.1111.111) and E5M2 (bias 15, max 57344, IEEE-like inf/NaN);
// OCP Microscaling Formats (MX) v1.0 for E2M1 (FP4: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}).
// Encoders round to nearest, ties to even, and saturate finite overflow to the max finite
// value (the "satfinite" convention of NVIDIA's cvt instructions and ModelOpt). NaN inputs:
// E4M3/E5M2 return their canonical NaN (0x7F / 0x7F|0x80 by sign; E5M2 0x7E|sign), E2M1
// (which has no NaN) returns +0 — callers reject NaN before encoding.
#pragma once

#include <cstdint>

namespace mpq {

/// fp32 -> IEEE binary16 bits (round to nearest even; overflow -> inf, like a C cast).
uint16_t fp32_to_fp16(float x);
/// IEEE binary16 bits -> fp32 (exact).
float fp16_to_fp32(uint16_t h);
/// fp32 -> bfloat16 bits (round to nearest even; NaN stays NaN).
uint16_t fp32_to_bf16(float x);
/// bfloat16 bits -> fp32 (exact).
float bf16_to_fp32(uint16_t b);

/// Largest finite E4M3 value.
constexpr float kE4M3Max = 448.0f;
/// Largest finite E5M2 value.
constexpr float kE5M2Max = 57344.0f;
/// Largest E2M1 magnitude.
constexpr float kE2M1Max = 6.0f;

/// fp32 -> OCP E4M3 byte: RNE, saturating to ±448, NaN -> 0x7F (sign kept: 0xFF).
uint8_t fp32_to_e4m3(float x);
/// OCP E4M3 byte -> fp32 (exact; 0x7F/0xFF -> NaN).
float e4m3_to_fp32(uint8_t b);
/// fp32 -> OCP E5M2 byte: RNE, saturating to ±57344 (inf saturates too), NaN -> 0x7E|sign.
uint8_t fp32_to_e5m2(float x);
/// OCP E5M2 byte -> fp32 (exact; 0x7C/0xFC -> ±inf, 0x7D-0x7F/0xFD-0xFF -> NaN).
float e5m2_to_fp32(uint8_t b);
/// fp32 -> E2M1 nibble (bit 3 sign, bits 2-0 magnitude code 0..7 for
/// {0, 0.5, 1, 1.5, 2, 3, 4, 6}): RNE, saturating to ±6. NaN -> 0.
uint8_t fp32_to_e2m1(float x);
/// E2M1 nibble (low 4 bits used) -> fp32.
float e2m1_to_fp32(uint8_t nibble);

/// Little-endian 16- and 32-bit integers at any address (the element encoding of
/// safetensors data and of the packed parts; safetensors does not align tensor data).
inline void store_u16_le(uint16_t v, uint8_t* p) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
inline uint16_t load_u16_le(const uint8_t* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }
inline void store_i32_le(int32_t v, uint8_t* p) {
  const uint32_t u = static_cast<uint32_t>(v);
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(u >> (8 * i));
}
inline int32_t load_i32_le(const uint8_t* p) {
  return static_cast<int32_t>(static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
                              static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24);
}

}  // namespace mpq
