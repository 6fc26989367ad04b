// The format table, quantizer dispatch and PackedTensor helpers (see quantizer.h).
#include "lib/quant/quantizer.h"

#include <regex>

#include "formats/packed_checkpoint.h"

#include "lib/common/error.h"
#include "lib/quant/fgmp.h"
#include "lib/quant/fp8.h"
#include "lib/quant/intg.h"
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

PackedPart& PackedTensor::part_mut(const std::string& suffix) {
  return const_cast<PackedPart&>(static_cast<const PackedTensor&>(*this).part(suffix));
}

std::size_t Quantizer::bytes(int64_t rows, int64_t cols) const {
  return quant_detail::layout_bytes(layout(rows, cols));
}

PackedTensor Quantizer::encode_weighted(const std::string& name, const float* w,
                                       const float* /*fisher*/, int64_t rows, int64_t cols) const {
  return encode(name, w, rows, cols);
}

PackedTensor Quantizer::encode_with_amax(const std::string&, const float*, int64_t, int64_t, float) const {
  throw Error(ExitCode::kUsage, std::string(info().name) + ": no per-tensor scale to share (only fp8 and nvfp4 have one)");
}

namespace {

// ---- Label grammar of each row (parse), quantizer factories (make), recorded params ----

bool parse_plain(const char* name, const std::string& label) { return label == name; }

// squeezellm[-<b>bit][-sparse] and uniform[-<b>bit]: "squeezellm" alone is mpq-pack's
// default (4 bits with the default sparse part); "-<b>bit" without "-sparse" has none.
bool parse_lut(const char* name, bool sparse_allowed, const std::string& label, FormatSpec* spec) {
  static const std::regex re("(squeezellm|uniform)(-([234])bit)?(-sparse)?");
  std::smatch m;
  if (!std::regex_match(label, m, re) || m[1] != name) return false;
  if (m[4].matched && (!sparse_allowed || !m[2].matched)) return false;
  spec->params = QuantizerParams{};
  if (m[2].matched) {
    spec->params.bits = std::stoi(m[3]);
    const bool sparse = m[4].matched;
    spec->params.outlier_pct = sparse ? 0.45 : 0.0;
    spec->params.sensitive_pct = sparse ? 0.05 : 0.0;
  }
  if (!sparse_allowed) spec->params.outlier_pct = spec->params.sensitive_pct = 0.0;
  return true;
}

bool parse_fgmp(const std::string& label, FormatSpec* spec) {
  static const std::regex re("fgmp(-([0-9]{1,3}))?");
  std::smatch m;
  if (!std::regex_match(label, m, re)) return false;
  spec->fgmp = FgmpParams{};
  if (m[1].matched) {
    const int p = std::stoi(m[2]);
    if (p > 100) return false;
    spec->fgmp.fp8_fraction = p / 100.0;
  }
  return true;
}

// int<b>[-g<G>]
bool parse_int(const std::string& label, FormatSpec* spec) {
  static const std::regex re("int([2348])(-g(16|32|64|128))?");
  std::smatch m;
  if (!std::regex_match(label, m, re)) return false;
  spec->params = QuantizerParams{};
  spec->params.bits = std::stoi(m[1]);
  spec->params.group_size = m[2].matched ? std::stoll(m[3]) : 0;
  spec->params.outlier_pct = spec->params.sensitive_pct = 0.0;
  return true;
}

nlohmann::json lut_params(const FormatSpec& s) {
  return {{"bits", s.params.bits}, {"outlier_pct", s.params.outlier_pct}, {"sensitive_pct", s.params.sensitive_pct}};
}

nlohmann::json no_params(const FormatSpec&) { return nlohmann::json::object(); }

bool has_part(const TensorStore& store, const std::string& prefix, const char* suffix) {
  return store.has(prefix + "." + suffix);
}

const char* const kLutNote =
    "per-row fp16 lookup tables and a CSR outlier matrix: no serving engine reads this layout";

}  // namespace

const std::vector<FormatInfo>& format_table() {
  // nominal_bpw counts the per-block scales but not the single per-tensor fp32 scale
  // (32 / (rows * cols) bits, negligible for real layers).
  static const std::vector<FormatInfo> table = {
      {"fp8", FormatId::kFp8, "FP8", 8.0, 0,
       "FP8 E4M3 weights, one fp32 scale per tensor (ModelOpt FP8)", "fp8",
       kExportModelOpt | kExportCompressedTensors, "",
       [](const std::string& l, FormatSpec*) { return parse_plain("fp8", l); },
       [](const FormatSpec&) -> std::unique_ptr<Quantizer> { return std::make_unique<Fp8Quantizer>(); },
       no_params,
       [](const TensorStore& st, const std::string& p) {
         return st.has(p + ".weight") && st.get(p + ".weight").dtype == DType::F8_E4M3 &&
                has_part(st, p, "weight_scale") && !has_part(st, p, "weight_scale_2");
       },
       read_fp8_tensor,
       []() -> const Quantizer& { return quantizer_for("fp8"); }},
      {"nvfp4", FormatId::kNvfp4, "NVFP4", 4.5, kNvfp4BlockSize,
       "E2M1 weights, E4M3 scale per 16-element block, fp32 scale per tensor (ModelOpt NVFP4)", "nvfp4",
       kExportModelOpt | kExportCompressedTensors, "",
       [](const std::string& l, FormatSpec*) { return parse_plain("nvfp4", l); },
       [](const FormatSpec&) -> std::unique_ptr<Quantizer> { return std::make_unique<Nvfp4Quantizer>(); },
       no_params,
       [](const TensorStore& st, const std::string& p) {  // ModelOpt or compressed-tensors names
         return has_part(st, p, "weight_scale_2") || (has_part(st, p, "weight_packed") && has_part(st, p, "weight_global_scale"));
       },
       read_nvfp4_tensor,
       []() -> const Quantizer& { return quantizer_for("nvfp4"); }},
      // SqueezeLLM at 4 bits on a 4096-wide layer (lib/quant/squeezellm.h): 4 index bits
      // + 16 fp16 LUT entries per row (16*16/4096 = 0.0625) + the I32 row pointer
      // (32/4096 = 0.0078) + 0.5% sparse entries at 32 bits each (0.16) = 4.23.
      // --bits 3 / 2 give 3.20 / 2.18.
      {"squeezellm", FormatId::kSqueezeLLM, "SQUEEZELLM", 4.0 + 16.0 * 16.0 / 4096.0 + 32.0 / 4096.0 + 0.005 * 32.0, 0,
       "SqueezeLLM dense-and-sparse: per-row (Fisher-weighted) k-means LUT of 2^bits fp16 "
       "entries, --bits 2|3|4, plus 0.5% fp16 sparse outliers (CSR)",
       "squeezellm[-<2|3|4>bit][-sparse]", 0, kLutNote,
       [](const std::string& l, FormatSpec* s) { return parse_lut("squeezellm", true, l, s); },
       [](const FormatSpec& s) -> std::unique_ptr<Quantizer> {
         return std::make_unique<SqueezeLLMQuantizer>(s.params.bits, s.params.outlier_pct, s.params.sensitive_pct);
       },
       lut_params,
       [](const TensorStore& st, const std::string& p) { return has_part(st, p, "lookup_table"); },
       read_squeezellm_tensor,
       []() -> const Quantizer& { return quantizer_for("squeezellm"); }},
      // The same layout with a per-row uniform min-max grid and no sparse entries: 4.07.
      {"uniform", FormatId::kSqueezeLLM, "SQUEEZELLM", 4.0 + 16.0 * 16.0 / 4096.0 + 32.0 / 4096.0, 0,
       "per-row min-max uniform round-to-nearest grid of 2^bits levels (--bits 2|3|4), "
       "stored in the squeezellm layout without sparse entries (baseline)",
       "uniform[-<2|3|4>bit]", 0, kLutNote,
       [](const std::string& l, FormatSpec* s) { return parse_lut("uniform", false, l, s); },
       [](const FormatSpec& s) -> std::unique_ptr<Quantizer> {
         return std::make_unique<SqueezeLLMQuantizer>(s.params.bits, 0.0, 0.0, SqueezeLLMQuantizer::Grid::kUniform);
       },
       lut_params,
       [](const TensorStore& st, const std::string& p) { return has_part(st, p, "lookup_table"); },
       read_squeezellm_tensor,
       []() -> const Quantizer& { return quantizer_for("squeezellm"); }},
      // FGMP at the default 30% FP8 on a 4096-wide layer (lib/quant/fgmp.h): 0.7 * 4.5
      // (NVFP4 blocks) + 0.3 * 8 (FP8 blocks) + 1/16 (block map) + 32/4096 (row offsets) = 5.62.
      {"fgmp", FormatId::kFgmp, "FGMP", 0.7 * 4.5 + 0.3 * 8.0 + 1.0 / 16.0 + 32.0 / 4096.0, kNvfp4BlockSize,
       "FGMP fine-grained mixed precision: each 16-element block NVFP4 or FP8, the FP8 blocks "
       "chosen by Fisher-weighted perturbation (--fp8-fraction, default 0.30, or --target-bpw), "
       "NVFP4 block scales clipped by Fisher-weighted error",
       "fgmp[-<0..100>]", 0,
       "NVFP4 and FP8 blocks mixed inside one tensor: engines choose one format per layer",
       parse_fgmp,
       [](const FormatSpec& s) -> std::unique_ptr<Quantizer> { return std::make_unique<FgmpQuantizer>(s.fgmp); },
       [](const FormatSpec& s) -> nlohmann::json {
         return {{"fp8_fraction", s.fgmp.fp8_fraction},
                 {"selection", fgmp_selection_name(s.fgmp.selection)},
                 {"clipping", fgmp_clipping_name(s.fgmp.clipping)}};
       },
       [](const TensorStore& st, const std::string& p) { return has_part(st, p, "weight_block_map"); },
       read_fgmp_tensor,
       []() -> const Quantizer& { return quantizer_for("fgmp"); }},
      // int4-g128 on a 4096-wide layer (lib/quant/intg.h): 4 + (16 + 8) / 128 = 4.19;
      // int4 (per row) 4.006, int4-g32 4.75.
      {"int", FormatId::kInt, "INT", 4.0 + 24.0 / 128.0, 0,
       "group-wise integer (GPTQ's asymmetric grid): b-bit codes, fp16 scale and integer zero per "
       "group of G inputs (int<b> = one group per row), b = 2, 3, 4, 8",
       "int<2|3|4|8>[-g<16|32|64|128>]", 0,
       "mpq's int layout (U8 bitstream codes, U8 zeros); compressed-tensors pack-quantized export not written yet",
       parse_int,
       [](const FormatSpec& s) -> std::unique_ptr<Quantizer> {
         return std::make_unique<IntGroupQuantizer>(s.params.bits, s.params.group_size);
       },
       [](const FormatSpec& s) -> nlohmann::json { return {{"bits", s.params.bits}, {"group_size", s.params.group_size}}; },
       [](const TensorStore& st, const std::string& p) { return has_part(st, p, "zeros") && has_part(st, p, "scales"); },
       read_int_tensor,
       []() -> const Quantizer& { return quantizer_for("int"); }},
  };
  return table;
}

const FormatInfo* find_format(const std::string& name) {
  for (const FormatInfo& f : format_table())
    if (name == f.name) return &f;
  return nullptr;
}

const FormatInfo& layout_format(FormatId layout) {
  for (const FormatInfo& f : format_table())
    if (f.layout == layout) return f;
  MPQ_ASSERT(!"a layout without a format_table() row");
  std::abort();
}

std::string format_label_forms() {
  std::string s = "source";
  for (const FormatInfo& f : format_table()) s += std::string(" | ") + f.label_forms;
  return s;
}

FormatSpec parse_format_label(const std::string& label) {
  // "<label>+gptq" / "<label>+gptq-4o6": the method suffix, then the format's own label.
  std::string base = label;
  bool gptq = false, four_over_six = false;
  for (const char* suffix : {"+gptq-4o6", "+gptq"}) {
    const std::string sfx = suffix;
    if (base.size() > sfx.size() && base.compare(base.size() - sfx.size(), sfx.size(), sfx) == 0) {
      base.resize(base.size() - sfx.size());
      gptq = true;
      four_over_six = sfx == "+gptq-4o6";
      break;
    }
  }
  FormatSpec s;
  s.label = label;
  s.format = base;
  s.gptq = gptq;
  s.four_over_six = four_over_six;
  if (base == "source") {
    if (gptq) throw Error(ExitCode::kUsage, "format '" + label + "': source keeps the weights as stored (no +gptq)");
    return s;
  }
  for (const FormatInfo& f : format_table())
    if (f.parse(base, &s)) {
      s.info = &f;
      s.format = f.name;
      if (four_over_six && f.layout != FormatId::kNvfp4)
        throw Error(ExitCode::kUsage, "format '" + label + "': +gptq-4o6 (Four Over Six block scales) is for nvfp4 only");
      return s;
    }
  throw Error(ExitCode::kUsage, "unknown format '" + label + "' (expected " + format_label_forms() +
                                    ", each optionally followed by +gptq; nvfp4 also +gptq-4o6)");
}

std::unique_ptr<Quantizer> make_quantizer(const FormatSpec& spec) {
  return spec.info ? spec.info->make(spec) : nullptr;
}

nlohmann::json format_params_json(const FormatSpec& spec) {
  return spec.info ? spec.info->params_json(spec) : nlohmann::json::object();
}

const Quantizer& quantizer_for(const std::string& format) {
  static const Fp8Quantizer fp8;
  static const Nvfp4Quantizer nvfp4;
  static const SqueezeLLMQuantizer squeezellm(4, 0.45, 0.05);
  static const SqueezeLLMQuantizer uniform(4, 0.0, 0.0, SqueezeLLMQuantizer::Grid::kUniform);
  static const FgmpQuantizer fgmp;
  static const IntGroupQuantizer intg(4, 0);
  const FormatInfo* f = find_format(format);
  if (!f) parse_format_label(format);  // throws the usage error listing the forms
  if (!f) throw Error(ExitCode::kUsage, "quantizer_for: '" + format + "' is a label, not a format name");
  switch (f->layout) {
    case FormatId::kFp8: return fp8;
    case FormatId::kNvfp4: return nvfp4;
    case FormatId::kSqueezeLLM: return format == "uniform" ? static_cast<const Quantizer&>(uniform) : squeezellm;
    case FormatId::kFgmp: return fgmp;
    case FormatId::kInt: return intg;
  }
  MPQ_ASSERT(!"unhandled FormatId");
  std::abort();
}

std::unique_ptr<Quantizer> make_quantizer(const std::string& format, const QuantizerParams& params) {
  const FormatInfo* f = find_format(format);
  if (!f) quantizer_for(format);  // throws the usage error listing the known forms
  FormatSpec spec;
  spec.label = spec.format = format;
  spec.info = f;
  spec.params = params;
  return f->make(spec);
}

}  // namespace mpq
