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

#include <nlohmann/json.hpp>

#include "formats/dtype.h"
#include "lib/quant/fgmp_params.h"

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
  PackedPart& part_mut(const std::string& suffix);
};

/// Parameters of the parameterized formats (squeezellm, uniform); fp8/nvfp4 ignore them.
struct QuantizerParams {
  int bits = 4;                 ///< index bits: 2, 3 or 4 (lookup table of 2^bits entries)
  double outlier_pct = 0.45;    ///< percent of weights, largest |w|, kept sparse in fp16
  double sensitive_pct = 0.05;  ///< percent of weights, largest Fisher, kept sparse (needs Fisher)
  int64_t group_size = 0;       ///< int: columns per group (0 = one group per row)
};

/// The on-disk layout family of a quantized linear. Several table rows may share one
/// (squeezellm and uniform are two fitting methods of the SqueezeLLM LUT + CSR layout).
enum class FormatId { kFp8, kNvfp4, kSqueezeLLM, kFgmp, kInt };

/// Checkpoint exports beside mpq's own layout (mpq-pack --export; lib/pack/export.h).
/// A row's FormatInfo::exports is the set of exports that can express the format.
enum ExportMask : unsigned {
  kExportModelOpt = 1u << 0,           ///< NVIDIA ModelOpt / TensorRT-LLM / vLLM "modelopt"
  kExportCompressedTensors = 1u << 1,  ///< compressed-tensors (llm-compressor; vLLM)
};

class Quantizer;
class TensorStore;
struct FormatSpec;

/// One row of the format table (ggml's type-traits table is the model): everything mpq
/// knows about a weight format, so that adding a format is adding a row and its kernels.
/// The function pointers are never null.
struct FormatInfo {
  const char* name;          ///< CLI, plan and manifest name: "fp8", "nvfp4", "squeezellm", ...
  FormatId layout;           ///< on-disk layout family (what a checkpoint reader sees)
  const char* quant_algo;    ///< ModelOpt quant_algo string: "FP8", "NVFP4"; mpq-native otherwise
  double nominal_bpw;        ///< bits per weight on a 4096 x 4096 layer, metadata included
  int block_size;            ///< elements per scale block along cols (0 = per tensor or per row)
  const char* description;
  /// The labels this row parses (parse_format_label), e.g. "squeezellm[-<2|3|4>bit][-sparse]".
  const char* label_forms;
  unsigned exports;          ///< ExportMask bits of the engine exports that can express it
  const char* export_note;   ///< why the other exports cannot (shown by mpq-inspect / errors)
  /// Fills spec->params / spec->fgmp when `label` is one of label_forms; false otherwise.
  bool (*parse)(const std::string& label, FormatSpec* spec);
  /// The quantizer of a parsed spec. Throws Error(kUsage) for parameters out of range.
  std::unique_ptr<Quantizer> (*make)(const FormatSpec& spec);
  /// The spec's parameters as plans and quantization_config record them ({} if none).
  nlohmann::json (*params_json)(const FormatSpec& spec);
  /// True when the checkpoint holds a linear of this layout under `prefix`.
  bool (*detect)(const TensorStore& store, const std::string& prefix);
  /// Reads and validates the linear `prefix` of logical shape [rows, cols] (see
  /// formats/packed_checkpoint.h, read_packed). Throws Error(kInput) naming file and tensor.
  PackedTensor (*read)(const TensorStore& store, const std::string& prefix, int64_t rows,
                       int64_t cols);
  /// A decoder for any tensor of this layout (parameters are read from the tensor).
  const Quantizer& (*decoder)();
};

/// A parsed format label: a table row plus its parameters. "source" (keep the tensor in
/// its stored dtype) has info == nullptr. The one label grammar of mpq-pack --format,
/// mpq-search --formats, plans and mpq-bench --formats.
struct FormatSpec {
  std::string label;              ///< as written, e.g. "squeezellm-3bit-sparse"
  std::string format;             ///< the row's name, or "source"
  const FormatInfo* info = nullptr;
  QuantizerParams params;         ///< squeezellm / uniform / int (bits; group_size)
  FgmpParams fgmp;                ///< fgmp: a per-tensor FP8 fraction (no global threshold)
  /// Label suffix "+gptq": rounded under GPTQ error compensation (lib/quant/gptq.h) instead
  /// of on its own; "+gptq-4o6" (nvfp4 only) also with Four Over Six block scales.
  bool gptq = false;
  bool four_over_six = false;
  bool is_source() const { return info == nullptr; }
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
  /// Tensor-scale formats (fp8, nvfp4): encode() with the per-tensor scale computed from
  /// `tensor_amax` instead of w's own amax, so that the shards of a fused engine layer
  /// (q/k/v -> qkv_proj, gate/up -> gate_up_proj) share one scale, as vLLM requires (it
  /// dequantizes a fused NVFP4 layer with the max of the shards' weight_scale_2 and
  /// requantizes FP8 shards to the max weight_scale; docs/formats.md "Engine exports").
  /// Block scales (nvfp4) are computed against that shared scale. Throws as encode() does,
  /// Error(kInternal) when tensor_amax is not finite or below amax(|w|), and Error(kUsage)
  /// for the other formats.
  virtual PackedTensor encode_with_amax(const std::string& name, const float* w, int64_t rows,
                                        int64_t cols, float tensor_amax) const;
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

/// The row named `name` (a row name, not a label), or nullptr.
const FormatInfo* find_format(const std::string& name);
/// The row of an on-disk layout family (the first row with that layout: the row whose
/// decoder reads every tensor of the layout).
const FormatInfo& layout_format(FormatId layout);

/// Parses a format label: "source", or one of a row's label_forms:
///   fp8 | nvfp4 | squeezellm[-<2|3|4>bit][-sparse] | uniform[-<2|3|4>bit] | fgmp[-<0..100>]
///   | int<2|3|4|8>[-g<16|32|64|128>]
/// "squeezellm" alone is mpq-pack's default (4 bits, 0.45% outliers + 0.05% sensitive);
/// "squeezellm-<b>bit" has no sparse part and "-sparse" adds the default one; "fgmp-<p>"
/// stores p percent of the tensor's blocks in FP8 ("fgmp" alone: 30). Throws
/// Error(kUsage) "unknown format '<label>' (expected ...)" listing every row's forms.
FormatSpec parse_format_label(const std::string& label);
/// The quantizer of a spec (nullptr for "source"). Throws Error(kUsage) for parameters
/// out of range (the row's make()).
std::unique_ptr<Quantizer> make_quantizer(const FormatSpec& spec);
/// The spec's parameters as recorded in plans and quantization_config ({} for fp8, nvfp4
/// and source).
nlohmann::json format_params_json(const FormatSpec& spec);
/// Every row's label_forms joined with " | " (for --help and error messages).
std::string format_label_forms();

}  // namespace mpq
