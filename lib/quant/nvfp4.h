// NVFP4 weight quantization in NVIDIA ModelOpt's layout.
//
// Source: NVIDIA, "Introducing NVFP4" (2025) and TensorRT-Model-Optimizer
// (modelopt/torch/quantization/qtensor/nvfp4_tensor.py) as read for this layout.
//   tensor scale  s2 = amax(|W|) / (6 * 448)                      F32 scalar "weight_scale_2"
//   block scale   s_b = E4M3( amax(|block|) / (6 * s2) )          F8_E4M3 [rows, ceil(cols/16)] "weight_scale"
//   element       q = E2M1( w / (e4m3_to_fp32(s_b) * s2) )        two per byte, element 2k in the low
//                                                                 nibble of byte k: U8 [rows, ceil(cols/16)*8] "weight"
//   decode        w' = e2m1(q) * e4m3_to_fp32(s_b) * s2
// Blocks are 16 consecutive elements of one row. A trailing partial block is zero-padded.
// An all-zero tensor stores s2 = 0 and decodes to zeros; a zero block scale decodes to 0.
#pragma once

#include <cstdint>

#include "lib/quant/quantizer.h"

namespace mpq {

constexpr int kNvfp4BlockSize = 16;

/// NVFP4 quantizer (format name "nvfp4").
class Nvfp4Quantizer final : public Quantizer {
 public:
  const FormatInfo& info() const override;
  PackedTensor encode(const std::string& name, const float* w, int64_t rows,
                      int64_t cols) const override;
  void decode(const PackedTensor& p, float* out) const override;
  std::vector<PackedPart> layout(int64_t rows, int64_t cols) const override;
};

}  // namespace mpq
