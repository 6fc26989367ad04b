// The format table, quantizer dispatch and PackedTensor helpers (see quantizer.h).
#include "lib/quant/quantizer.h"

#include "lib/common/error.h"
#include "lib/quant/fp8.h"
#include "lib/quant/nvfp4.h"
#include "lib/quant/quant_common.h"

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

const std::vector<FormatInfo>& format_table() {
  // nominal_bpw counts the per-block scales but not the single per-tensor fp32 scale
  // (32 / (rows * cols) bits, negligible for real layers).
  static const std::vector<FormatInfo> table = {
      {"fp8", "FP8", 8.0, 0,
       "FP8 E4M3 weights, one fp32 scale per tensor (ModelOpt FP8)"},
      {"nvfp4", "NVFP4", 4.5, kNvfp4BlockSize,
       "E2M1 weights, E4M3 scale per 16-element block, fp32 scale per tensor (ModelOpt NVFP4)"},
  };
  return table;
}

const Quantizer& quantizer_for(const std::string& format) {
  static const Fp8Quantizer fp8;
  static const Nvfp4Quantizer nvfp4;
  if (format == "fp8") return fp8;
  if (format == "nvfp4") return nvfp4;
  std::string known;
  for (const FormatInfo& f : format_table()) {
    if (!known.empty()) known += ", ";
    known += f.name;
  }
  throw Error(ExitCode::kUsage, "unknown format '" + format + "' (known: " + known + ")");
}

}  // namespace mpq
