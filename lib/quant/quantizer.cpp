// The format table, quantizer dispatch and PackedTensor helpers (see quantizer.h).
#include "lib/quant/quantizer.h"

#include "lib/common/error.h"
#include "lib/quant/fgmp.h"
#include "lib/quant/fp8.h"
#include "lib/quant/nvfp4.h"
#include "lib/quant/quant_common.h"
#include "lib/quant/squeezellm.h"

namespace mpq {

std::size_t PackedTensor::bytes() const {
  std::size_t n = 0;
  for (const PackedPart& p : parts) n += p.bytes.size();
  return n;
}

double PackedTensor::bpw() const {
  // An empty tensor has no weights to divide by; report 0 rather than inf/NaN.
  if (rows <= 0 || cols <= 0) return 0.0;
  return static_cast<double>(bytes()) * 8.0 / (static_cast<double>(rows) * static_cast<double>(cols));
}

const PackedPart& PackedTensor::part(const std::string& suffix) const {
  for (const PackedPart& p : parts)
    if (p.suffix == suffix) return p;
  throw Error(ExitCode::kInput, "packed " + format + " tensor [" + std::to_string(rows) + " x " +
                                    std::to_string(cols) + "]: missing part '" + suffix + "'");
}

std::size_t Quantizer::bytes(int64_t rows, int64_t cols) const {
  return quant_detail::layout_bytes(layout(rows, cols));
}

PackedTensor Quantizer::encode_weighted(const std::string& name, const float* w,
                                       const float* /*fisher*/, int64_t rows, int64_t cols) const {
  return encode(name, w, rows, cols);
}

const std::vector<FormatInfo>& format_table() {
  // nominal_bpw counts the per-block scales but not the single per-tensor fp32 scale
  // (32 / (rows * cols) bits, negligible for real layers).
  static const std::vector<FormatInfo> table = {
      {"fp8", "FP8", 8.0, 0,
       "FP8 E4M3 weights, one fp32 scale per tensor (ModelOpt FP8)"},
      {"nvfp4", "NVFP4", 4.5, kNvfp4BlockSize,
       "E2M1 weights, E4M3 scale per 16-element block, fp32 scale per tensor (ModelOpt NVFP4)"},
      // SqueezeLLM at 4 bits on a 4096-wide layer (lib/quant/squeezellm.h): 4 index bits
      // + 16 fp16 LUT entries per row (16*16/4096 = 0.0625) + the I32 row pointer
      // (32/4096 = 0.0078) + 0.5% sparse entries at 32 bits each (0.16) = 4.23.
      // --bits 3 / 2 give 3.20 / 2.18.
      {"squeezellm", "SQUEEZELLM", 4.0 + 16.0 * 16.0 / 4096.0 + 32.0 / 4096.0 + 0.005 * 32.0, 0,
       "SqueezeLLM dense-and-sparse: per-row (Fisher-weighted) k-means LUT of 2^bits fp16 "
       "entries, --bits 2|3|4, plus 0.5% fp16 sparse outliers (CSR)"},
      // The same layout with a per-row uniform min-max grid and no sparse entries: 4.07.
      {"uniform", "SQUEEZELLM", 4.0 + 16.0 * 16.0 / 4096.0 + 32.0 / 4096.0, 0,
       "per-row min-max uniform round-to-nearest grid of 2^bits levels (--bits 2|3|4), "
       "stored in the squeezellm layout without sparse entries (baseline)"},
      // FGMP at the default 30% FP8 on a 4096-wide layer (lib/quant/fgmp.h): 0.7 * 4.5
      // (NVFP4 blocks) + 0.3 * 8 (FP8 blocks) + 1/16 (block map) + 32/4096 (row offsets) = 5.62.
      {"fgmp", "FGMP", 0.7 * 4.5 + 0.3 * 8.0 + 1.0 / 16.0 + 32.0 / 4096.0, kNvfp4BlockSize,
       "FGMP fine-grained mixed precision: each 16-element block NVFP4 or FP8, the FP8 blocks "
       "chosen by Fisher-weighted perturbation (--fp8-fraction, default 0.30, or --target-bpw), "
       "NVFP4 block scales clipped by Fisher-weighted error"},
  };
  return table;
}

const Quantizer& quantizer_for(const std::string& format) {
  static const Fp8Quantizer fp8;
  static const Nvfp4Quantizer nvfp4;
  if (format == "fp8") return fp8;
  if (format == "nvfp4") return nvfp4;
  static const SqueezeLLMQuantizer squeezellm(4, 0.45, 0.05);
  static const SqueezeLLMQuantizer uniform(4, 0.0, 0.0, SqueezeLLMQuantizer::Grid::kUniform);
  if (format == "squeezellm") return squeezellm;
  if (format == "uniform") return uniform;
  static const FgmpQuantizer fgmp;
  if (format == "fgmp") return fgmp;
  std::string known;
  for (const FormatInfo& f : format_table()) {
    if (!known.empty()) known += ", ";
    known += f.name;
  }
  throw Error(ExitCode::kUsage, "unknown format '" + format + "' (known: " + known + ")");
}

std::unique_ptr<Quantizer> make_quantizer(const std::string& format, const QuantizerParams& params) {
  if (format == "fp8") return std::make_unique<Fp8Quantizer>();
  if (format == "nvfp4") return std::make_unique<Nvfp4Quantizer>();
  if (format == "squeezellm")
    return std::make_unique<SqueezeLLMQuantizer>(params.bits, params.outlier_pct, params.sensitive_pct);
  if (format == "uniform")
    return std::make_unique<SqueezeLLMQuantizer>(params.bits, 0.0, 0.0,
                                                 SqueezeLLMQuantizer::Grid::kUniform);
  if (format == "fgmp") return std::make_unique<FgmpQuantizer>();  // FgmpParams: construct directly
  quantizer_for(format);  // throws the usage error listing the known names
  MPQ_ASSERT(!"quantizer_for() accepted a format make_quantizer() does not know");
  std::abort();
}

}  // namespace mpq
