// Group-wise integer weight quantization, GPTQ's asymmetric layout (format "int", labels
// "int<b>" = one group per row, "int<b>-g<G>"), b in {2, 3, 4, 8}, G in {16, 32, 64, 128}.
//
// Source: Frantar et al. 2023, "GPTQ" (the quantizer of its reference code, quant.py
// Quantizer: asymmetric min-max over each group, the range widened to include 0); the same
// grid AutoGPTQ / GPTQModel pack as qweight + qzeros + scales.
// Per row r and group g (columns [g*G, min(C, (g+1)*G))), maxq = 2^b - 1:
//   lo = min(0, min w), hi = max(0, max w); s = fp16((hi - lo) / maxq) (s = 1 when hi = lo);
//   z = clamp(round(-lo / s), 0, maxq)                  integer zero-point
//   q = clamp(round(w / s) + z, 0, maxq)                 round half to even
//   decode w' = s * (q - z)                              in fp32 (s as stored)
//
// On-disk layout (module prefix <m>; little-endian, row-major), W [R, C], NG = ceil(C / G):
//   <m>.qweight  U8  [R, b * ceil(C / 8)]  codes as a little-endian bitstream per row, LSB first
//                                           (code j at bits [j*b, j*b + b): every 8 codes are b
//                                           bytes, as squeezellm's qweight); padding codes 0
//   <m>.scales   F16 [R, NG]               s of each group
//   <m>.zeros    U8  [R, NG]               z of each group, <= maxq
// The group size is C for "int<b>" (NG = 1) and G otherwise; a reader takes b from the
// qweight width and G from the scales width (G = ceil(C / NG) must be one of the sizes, or C).
// Size: R * (b * ceil(C/8) + 3 * NG) bytes; bpw on 4096 x 4096: int4 4.006, int4-g128 4.19,
// int4-g32 4.75, int3-g16 4.50.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/int_gemv.h"  // IntWeightView, the layout's kernel contract
#include "lib/quant/quantizer.h"

namespace mpq {

/// Group sizes of the "int<b>-g<G>" labels (besides one group per row).
constexpr int64_t kIntGroupSizes[] = {16, 32, 64, 128};

/// Group-wise integer quantizer (format name "int"). group_size 0 = one group per row.
class IntGroupQuantizer final : public Quantizer {
 public:
  /// bits in {2, 3, 4, 8}, group_size 0 or one of kIntGroupSizes; Error(kUsage) otherwise.
  IntGroupQuantizer(int bits, int64_t group_size);
  const FormatInfo& info() const override;
  /// The RTN grid of the file comment. Throws Error(kInput) naming `name` for NaN/Inf weights
  /// or a group whose scale overflows fp16 (|w| > 65504 * maxq / 2).
  PackedTensor encode(const std::string& name, const float* w, int64_t rows, int64_t cols) const override;
  /// Decodes any int tensor (b and G from the parts). Throws Error(kInput) for missing parts,
  /// wrong dtypes/shapes, a group size that is not a valid one, zeros > maxq or non-finite scales.
  void decode(const PackedTensor& p, float* out) const override;
  std::vector<PackedPart> layout(int64_t rows, int64_t cols) const override;

  int bits() const { return bits_; }
  /// Columns per group for a layer with `cols` inputs (group_size, or cols when 0).
  int64_t group_cols(int64_t cols) const { return group_size_ > 0 ? group_size_ : cols; }
  int64_t group_size() const { return group_size_; }

 private:
  int bits_;
  int64_t group_size_;
};

/// The parameters of one group (lo / hi of its values as above): scale s (fp16-representable,
/// > 0) and integer zero-point z in [0, 2^bits - 1].
struct IntGroupParams {
  float scale = 1.0f;
  int zero = 0;
};
IntGroupParams int_group_params(const float* w, int64_t n, int bits);

/// q = clamp(round(w / s) + z, 0, maxq) (round half to even) for one value.
int int_group_code(float w, const IntGroupParams& p, int bits);

/// Bits and group size of a stored int tensor from its parts' shapes (Error(kInput) naming the
/// part when they are not a valid layout for [rows, cols]).
void int_tensor_geometry(const PackedTensor& p, int* bits, int64_t* group_cols);

/// The kernel view (kernels/cpu/int_gemv.h) of an int PackedTensor: geometry from
/// int_tensor_geometry() (same errors), pointers into p's part bytes (p must outlive the
/// view). The scale and zero contents are not checked here.
IntWeightView int_weight_view(const PackedTensor& p);

}  // namespace mpq
