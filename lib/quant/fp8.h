// FP8 E4M3 weight quantization with one fp32 scale per tensor, NVIDIA ModelOpt's "FP8"
// layout (the one vLLM's modelopt loader reads):
//   scale  s = amax(|W|) / 448                    F32 scalar "weight_scale"
//   element q = E4M3(w / s)                       F8_E4M3 [rows, cols] "weight"
//   decode  w' = e4m3_to_fp32(q) * s
// An all-zero tensor stores s = 1 and zeros. Source: OCP OFP8 spec; ModelOpt export.
#pragma once

#include "lib/quant/quantizer.h"

namespace mpq {

/// FP8 per-tensor scale amax / 448 for a tensor amax >= 0; 1 when that is not > 0 (an
/// all-zero tensor, or an amax so small the quotient underflows).
float fp8_tensor_scale(float amax);

/// FP8 E4M3 per-tensor quantizer (format name "fp8").
class Fp8Quantizer final : public Quantizer {
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
