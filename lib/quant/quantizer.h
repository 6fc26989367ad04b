// One interface for every weight format (faiss-style fit/encode, decode, layout, bytes),
// and the table of formats that drives parsing, help, validation and dispatch in the tools.
//
// Weights are row-major fp32 [rows = out_features, cols = in_features] (PyTorch nn.Linear
// layout). Blocks run along the input dimension (cols). A cols that is not a multiple of
// the block size ends in a partial block, zero-padded on disk to a whole block; the
// logical shape is kept in PackedTensor::rows/cols (and recorded in the checkpoint).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/dtype.h"

namespace mpq {

/// One on-disk tensor of a packed weight, named by its suffix after the module prefix
/// ("weight", "weight_scale", "weight_scale_2", ...), as ModelOpt names them.
struct PackedPart {
  std::string suffix;
  DType dtype = DType::U8;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  ///< little-endian, row-major over shape
};

/// A quantized weight: the format name, the logical fp32 shape and its on-disk parts.
struct PackedTensor {
  std::string format;  ///< a FormatInfo::name, e.g. "nvfp4"
  int64_t rows = 0;    ///< logical out_features
  int64_t cols = 0;    ///< logical in_features (before any block padding)
  std::vector<PackedPart> parts;

  /// Sum of the parts' byte sizes (everything stored, scales included).
  std::size_t bytes() const;
  /// bytes() * 8 / (rows * cols): bits per weight including all metadata.
  double bpw() const;
  /// The part with `suffix`; throws Error(kInput) if absent.
  const PackedPart& part(const std::string& suffix) const;
};

/// Static description of one format (one row of the format table).
struct FormatInfo {
  const char* name;          ///< CLI name: "fp8", "nvfp4"
  const char* quant_algo;    ///< ModelOpt quant_algo string: "FP8", "NVFP4"
  double nominal_bpw;        ///< bits per weight for a large layer, metadata included
  int block_size;            ///< elements per scale block along cols (0 = per tensor)
  const char* description;
};

/// Encoder/decoder of one weight format.
class Quantizer {
 public:
  virtual ~Quantizer() = default;
  virtual const FormatInfo& info() const = 0;
  /// Quantizes w (rows x cols fp32, row-major). Throws Error(kInput) if w holds NaN/Inf
  /// (the message names `name`, the tensor's name, and the first bad index).
  virtual PackedTensor encode(const std::string& name, const float* w, int64_t rows,
                              int64_t cols) const = 0;
  /// Expands a packed tensor back to fp32 rows x cols (the logical shape).
  /// Throws Error(kInput) if a part is missing or has the wrong dtype/shape.
  virtual void decode(const PackedTensor& p, float* out) const = 0;
  /// The parts encode() produces for a rows x cols weight, in encode()'s order: suffix,
  /// dtype and shape filled in, bytes left empty. The one source of the format's on-disk
  /// layout: encode() and bytes() derive from it, and read_packed() checks a checkpoint
  /// against it. Throws Error(kInput) "<format>: invalid shape [rows, cols]" if rows or
  /// cols is negative or the sizes overflow.
  virtual std::vector<PackedPart> layout(int64_t rows, int64_t cols) const = 0;
  /// Exact bytes encode() produces for a rows x cols weight: the sum over layout() of
  /// dtype size times the shape's element count. Throws as layout() does.
  virtual std::size_t bytes(int64_t rows, int64_t cols) const;
};

/// The format table: every format mpq can pack, in CLI order.
const std::vector<FormatInfo>& format_table();
/// The quantizer for a format name; throws Error(kUsage) listing the known names.
const Quantizer& quantizer_for(const std::string& format);

}  // namespace mpq
