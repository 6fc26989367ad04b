// Bit-level decoders shared by the CUDA GEMV kernels (kernels/cuda/gemv.cu) and their host
// tests: plain integer arithmetic, compiled as __host__ __device__ under nvcc and as ordinary
// inline functions under g++, so tests/test_cuda_gemv.cpp checks them exhaustively on any
// machine, GPU or not.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MPQ_HD __host__ __device__ __forceinline__
#else
#define MPQ_HD inline
#endif

namespace mpq::cuda {

/// Two E2M1 codes -> two IEEE binary16 values, with no table and no FP4 instruction (Hopper
/// has none). Input: the 4-bit codes in bits [0, 4) and [16, 20) of `v` (other bits ignored);
/// output: a half2 bit pattern, low half from bits [0, 4), high half from bits [16, 20), each
/// equal to e2m1(code) * 2^-14 exactly.
/// Why: E2M1 (OCP MX v1.0) is sign | 2-bit exponent (bias 1) | 1-bit mantissa. Placing the
/// sign at fp16 bit 15 and exponent+mantissa at fp16 bits 9..11 gives the fp16 value
/// 2^(e - 15) * (1 + m/2) = e2m1 * 2^-14 for e > 0, and the fp16 subnormal m/2 * 2^-14 =
/// e2m1 * 2^-14 for e = 0; the kernels fold the 2^14 into the block scale.
MPQ_HD uint32_t e2m1x2_to_half2_bits(uint32_t v) {
  return ((v & 0x00080008u) << 12) | ((v & 0x00070007u) << 9);
}

/// Index j (0 <= j < 32) of a 32-index group of `bits`-bit indices (bits in {2, 3, 4}) held in
/// `bits` little-endian 32-bit words: bits [j*bits, j*bits + bits) of the LSB-first stream,
/// bit t being bit t % 32 of words[t / 32] (lib/quant/squeezellm.h's row bitstream read in
/// 4-byte words). Indices may straddle two words (bits = 3).
MPQ_HD uint32_t lut_group_index(const uint32_t* words, int j, int bits) {
  const int bit = j * bits, w = bit >> 5, sh = bit & 31;
  uint32_t v = words[w] >> sh;
  if (sh + bits > 32) v |= words[w + 1] << (32 - sh);
  return v & ((1u << bits) - 1u);
}

}  // namespace mpq::cuda
