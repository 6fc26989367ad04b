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

/// NVFP4 per-tensor (second-level) scale s2 = amax / (6 * 448) for a tensor amax >= 0.
float nvfp4_scale_2(float amax);

/// NVFP4 E4M3 block scale byte for a block whose (possibly clipped) amax is `block_amax`:
/// E4M3(block_amax / (6 * s2)), or 0 when 6 * s2 is 0 (ModelOpt's computation).
uint8_t nvfp4_block_scale(float block_amax, float s2);

/// Encodes n <= 16 weights w of one block with the decode scale `scale` =
/// e4m3_to_fp32(block scale) * s2 into 8 bytes at dst (E2M1 codes, element 2k in the low
/// nibble of byte k; padding codes 0). All codes are 0 when scale is not > 0.
void nvfp4_encode_block(const float* w, int64_t n, float scale, uint8_t* dst);

/// NVFP4 quantizer (format name "nvfp4").
class Nvfp4Quantizer final : public Quantizer {
 public:
  const FormatInfo& info() const override;
  PackedTensor encode(const std::string& name, const float* w, int64_t rows,
                      int64_t cols) const override;
  PackedTensor encode_with_amax(const std::string& name, const float* w, int64_t rows,
                                int64_t cols, float tensor_amax) const override;
  void decode(const PackedTensor& p, float* out) const override;
  std::vector<PackedPart> layout(int64_t rows, int64_t cols) const override;
};

}  // namespace mpq
