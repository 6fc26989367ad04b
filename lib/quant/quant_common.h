// Internal helpers shared by the quantizers in lib/quant (shape and NaN/Inf checks,
// little-endian fp32 scalars, building a PackedTensor from a layout, checking a part
// against its layout on decode), and by read_packed() for its shape check. Not part of
// mpq's public API: tools and tests go through quantizer.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "lib/common/shape.h"
#include "lib/numeric/codecs.h"  // load_u16_le, store_u16_le, load_i32_le, store_i32_le
#include "lib/quant/quantizer.h"

namespace mpq {
namespace quant_detail {

/// Below this many elements a loop runs on one thread (thread start-up costs more).
constexpr int64_t kParallelMin = int64_t{1} << 16;

/// Throws Error(kInput) "<what>: invalid shape [rows, cols]" unless rows, cols >= 0 and
/// rows * cols * 8 fits in int64 (so every packed size, and the fp32 tensor itself at
/// rows * cols * 4 bytes, fits in int64 and size_t).
void check_shape(const std::string& what, int64_t rows, int64_t cols);

/// Throws Error(kInput) "<name>: NaN at index (r, c)" (or "Inf") for the first non-finite
/// element of w (rows x cols fp32, row-major).
void check_finite(const std::string& name, const float* w, int64_t rows, int64_t cols);

/// encode()'s input checks and first pass: check_shape(name, ...), check_finite(name, ...),
/// then returns amax(|w|) over the rows x cols weight.
float checked_amax(const std::string& name, const float* w, int64_t rows, int64_t cols);

/// encode_with_amax()'s check: Error(kInternal) naming `name` unless tensor_amax is finite
/// and >= amax (the tensor's own amax(|w|)); a shared scale below a shard's amax would
/// saturate it.
void check_tensor_amax(const std::string& name, float amax, float tensor_amax);

/// decode()'s checks for quantizer q: throws Error(kInput) "<format> decoder given a
/// '<p.format>' tensor" when p is another format, then check_shape("<format> tensor",
/// p.rows, p.cols), then checked_part() for every entry of q.layout(p.rows, p.cols).
/// Returns p's parts in layout order.
std::vector<const PackedPart*> checked_parts(const Quantizer& q, const PackedTensor& p);

/// Throws Error(kInput) "<name>: Fisher sensitivity <v> at index (r, c), expected finite >= 0"
/// for the first negative, NaN or Inf entry of fisher (rows x cols fp32, row-major), which
/// may be nullptr (uniform sensitivities: nothing to check).
void check_sensitivity(const std::string& name, const float* fisher, int64_t rows, int64_t cols);

/// splitmix64 (Steele, Lea & Flood 2014): advances `state` and returns the next output.
uint64_t splitmix64_next(uint64_t& state);

/// The format_table() row named `format` (Quantizer::info()); aborts if absent (a bug).
const FormatInfo& format_info(const char* format);

/// Little-endian 16- and 32-bit integers (the packed parts' element encoding):
/// lib/numeric/codecs.h.
using mpq::load_i32_le;
using mpq::load_u16_le;
using mpq::store_i32_le;
using mpq::store_u16_le;

/// Code j of a row packed as a little-endian bitstream of `bits`-bit codes, LSB first (code j
/// at bits [j*bits, j*bits + bits); squeezellm's and int's qweight): ORs `code` in at `row`
/// (which starts zeroed), and reads it back.
inline void pack_code(uint8_t* row, int64_t j, int bits, uint32_t code) {
  const int64_t bit = j * bits;
  const uint32_t v = code << (bit & 7);
  row[bit >> 3] |= static_cast<uint8_t>(v);
  if ((bit & 7) + bits > 8) row[(bit >> 3) + 1] |= static_cast<uint8_t>(v >> 8);
}
inline uint32_t unpack_code(const uint8_t* row, int64_t j, int bits) {
  const int64_t bit = j * bits;
  uint32_t v = row[bit >> 3];
  if ((bit & 7) + bits > 8) v |= static_cast<uint32_t>(row[(bit >> 3) + 1]) << 8;
  return (v >> (bit & 7)) & ((1u << bits) - 1u);
}

/// Writes v as 4 little-endian bytes to dst.
void store_f32_le(float v, uint8_t* dst);

/// Reads a float from 4 little-endian bytes at src.
float load_f32_le(const uint8_t* src);

/// Bytes one part of a layout occupies: dtype_size(dtype) times the product of its shape
/// (1 element for the scalar shape []).
std::size_t part_bytes(const PackedPart& part);

/// Sum of part_bytes() over a layout (what Quantizer::bytes() returns).
std::size_t layout_bytes(const std::vector<PackedPart>& layout);

/// A PackedTensor of `format` with logical shape [rows, cols] whose parts are `layout`,
/// each given part_bytes() zero bytes, ready for encode() to fill.
PackedTensor packed_from_layout(const char* format, int64_t rows, int64_t cols,
                                std::vector<PackedPart> layout);

/// The part of p named expect.suffix, checked against its layout entry `expect`: dtype,
/// shape (a scalar [] also accepts [1]) and byte count. Throws Error(kInput)
/// "<format> tensor [rows x cols]: part '<suffix>' has dtype/has shape/holds ...", or
/// PackedTensor::part()'s error if the part is missing.
const PackedPart& checked_part(const char* format, const PackedTensor& p,
                               const PackedPart& expect);

}  // namespace quant_detail
}  // namespace mpq
