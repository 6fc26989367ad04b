// CPU kernels of the int format (see int_gemv.h).
#include "kernels/cpu/int_gemv.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "lib/numeric/codecs.h"

namespace mpq {

void int_unpack_row(const IntWeightView& v, int64_t r, uint8_t* codes) {
  const uint8_t* p = v.qweight + r * v.row_bytes;
  const int64_t C = v.cols;
  switch (v.bits) {
    case 8:
      std::memcpy(codes, p, static_cast<std::size_t>(C));
      return;
    case 4:
      for (int64_t c = 0; c < C; ++c) codes[c] = static_cast<uint8_t>((p[c >> 1] >> ((c & 1) * 4)) & 0xF);
      return;
    case 2:
      for (int64_t c = 0; c < C; ++c) codes[c] = static_cast<uint8_t>((p[c >> 2] >> ((c & 3) * 2)) & 0x3);
      return;
    default:  // the generic LSB-first bitstream (b = 3: 8 codes per 3 bytes)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t bit = c * v.bits;
        const uint32_t word = static_cast<uint32_t>(p[bit >> 3]) |
                              (static_cast<uint32_t>((bit >> 3) + 1 < v.row_bytes ? p[(bit >> 3) + 1] : 0) << 8);
        codes[c] = static_cast<uint8_t>((word >> (bit & 7)) & ((1u << v.bits) - 1));
      }
  }
}

void int_decode_rows(const IntWeightView& v, int64_t r0, int64_t n, float* out, int64_t ld) {
  std::vector<uint8_t> codes(static_cast<std::size_t>(v.cols));
  for (int64_t j = 0; j < n; ++j) {
    const int64_t r = r0 + j;
    int_unpack_row(v, r, codes.data());
    float* o = out + j * ld;
    for (int64_t g = 0; g < v.groups; ++g) {
      const float s = fp16_to_fp32(v.scales[r * v.groups + g]);
      const int z = v.zeros[r * v.groups + g];
      const int64_t c1 = std::min(v.cols, (g + 1) * v.group);
      for (int64_t c = g * v.group; c < c1; ++c) o[c] = s * static_cast<float>(static_cast<int>(codes[static_cast<std::size_t>(c)]) - z);
    }
    std::fill(o + v.cols, o + ld, 0.0f);
  }
}

void int_gemv(const IntWeightView& v, const float* x, float* y) {
  std::vector<float> xsum(static_cast<std::size_t>(v.groups), 0.0f);
  for (int64_t g = 0; g < v.groups; ++g) {
    const int64_t c1 = std::min(v.cols, (g + 1) * v.group);
    float s = 0.0f;
    for (int64_t c = g * v.group; c < c1; ++c) s += x[c];
    xsum[static_cast<std::size_t>(g)] = s;
  }
#pragma omp parallel if (v.rows * v.cols >= (int64_t{1} << 18))
  {
    std::vector<uint8_t> codes(static_cast<std::size_t>(v.cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < v.rows; ++r) {
      int_unpack_row(v, r, codes.data());
      float acc = 0.0f;
      for (int64_t g = 0; g < v.groups; ++g) {
        const int64_t c0 = g * v.group, c1 = std::min(v.cols, c0 + v.group);
        float dot = 0.0f;
        for (int64_t c = c0; c < c1; ++c) dot += static_cast<float>(codes[static_cast<std::size_t>(c)]) * x[c];
        acc += fp16_to_fp32(v.scales[r * v.groups + g]) *
               (dot - static_cast<float>(v.zeros[r * v.groups + g]) * xsum[static_cast<std::size_t>(g)]);
      }
      y[r] = acc;
    }
  }
}

}  // namespace mpq
