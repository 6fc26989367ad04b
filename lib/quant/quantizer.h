// One interface for every weight format (faiss-style fit/encode, decode, layout, bytes),
// and the table of formats that drives parsing, help, validation and dispatch in the tools.
//
// Weights are row-major fp32 [rows = out_features, cols = in_features] (PyTorch nn.Linear
// layout). Blocks run along the input dimension (cols). A cols that is not a multiple of
// the block size ends in a partial block, zero-padded on disk to a whole block; the
// logical shape is kept in PackedTensor::rows/cols (and recorded in the checkpoint).
#pragma once

#include <cstdint>
#include <memory>
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
  /// Quantizes w like encode(), given per-weight sensitivities `fisher` (rows x cols fp32,
  /// row-major, >= 0; e.g. the diagonal Fisher "<module>.fisher" of a sensitivity file), or
  /// nullptr for uniform sensitivities. Formats that fit something to the weights (SqueezeLLM:
  /// the lookup tables and the sparse set) use them; the default ignores them and calls
  /// encode() (fp8, nvfp4). Throws as encode() does, and Error(kInput) naming `name` when a
  /// sensitivity is negative, NaN or Inf.
  virtual PackedTensor encode_weighted(const std::string& name, const float* w,
                                       const float* fisher, int64_t rows, int64_t cols) const;
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
  /// A format with a data-dependent part (squeezellm's sparse matrix, whose nnz can grow
  /// with Fisher sensitivities) gives the layout of encode(); encode_weighted() may produce
  /// larger variable parts, and a reader sizes them from the tensor itself (read_packed()).
  /// The exact size of an encoded tensor is always PackedTensor::bytes().
  virtual std::size_t bytes(int64_t rows, int64_t cols) const;
};

/// Parameters of the parameterized formats (squeezellm, uniform); fp8/nvfp4 ignore them.
struct QuantizerParams {
  int bits = 4;                 ///< index bits: 2, 3 or 4 (lookup table of 2^bits entries)
  double outlier_pct = 0.45;    ///< percent of weights, largest |w|, kept sparse in fp16
  double sensitive_pct = 0.05;  ///< percent of weights, largest Fisher, kept sparse (needs Fisher)
};

/// The format table: every format mpq can pack, in CLI order.
const std::vector<FormatInfo>& format_table();
/// The quantizer for a format name; throws Error(kUsage) listing the known names.
/// "squeezellm" and "uniform" give instances with the default QuantizerParams; their
/// decode() reads the bit width from the tensor, so any squeezellm tensor decodes with them.
/// "fgmp" gives FgmpQuantizer with default FgmpParams (lib/quant/fgmp.h); its decode() takes
/// the FP8/NVFP4 split from the tensor, so any fgmp tensor decodes with it.
const Quantizer& quantizer_for(const std::string& format);
/// A quantizer for `format` with `params` (the parameterized formats: "squeezellm" = k-means
/// lookup tables plus a sparse fp16 outlier matrix, "uniform" = per-row min-max uniform grid
/// in the same layout, no sparse part); fp8/nvfp4 ignore params; "fgmp" gives the default
/// FgmpParams (construct FgmpQuantizer for others). Throws Error(kUsage) for an
/// unknown format or parameters out of range (bits not in {2, 3, 4}, a percentage outside
/// [0, 100]).
std::unique_ptr<Quantizer> make_quantizer(const std::string& format, const QuantizerParams& params);

}  // namespace mpq
