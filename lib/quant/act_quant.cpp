// Emulated activation quantization (fp8 / nvfp4 / fgmp per 16-element block); the formulas,
// the per-token scales and the NaN/Inf rule are in act_quant.h.
#include "lib/quant/act_quant.h"

#include <algorithm>
#include <cmath>

#include "lib/common/error.h"
#include "lib/numeric/codecs.h"

namespace mpq {
namespace {

// Per-token scales: FP8 s8 = amax / 448 (1 when that is 0, as Fp8Quantizer stores it) and
// the NVFP4 global scale s2 = amax / (6 * 448), amax over the finite elements of the row.
struct RowScales {
  float s8 = 1.0f;
  float s2 = 0.0f;
};

RowScales row_scales(const float* x, int64_t C) {
  float amax = 0.0f;
  for (int64_t c = 0; c < C; ++c)
    if (std::isfinite(x[c])) amax = std::max(amax, std::fabs(x[c]));
  RowScales s;
  s.s8 = amax / kE4M3Max;
  if (!(s.s8 > 0.0f)) s.s8 = 1.0f;
  s.s2 = amax / (6.0f * kE4M3Max);
  return s;
}

// Q_fp8 of the n elements of x into out (out may be x); non-finite elements copied.
void fp8_block(const float* x, int64_t n, float s8, float* out) {
  for (int64_t i = 0; i < n; ++i)
    out[i] = std::isfinite(x[i]) ? e4m3_to_fp32(fp32_to_e4m3(x[i] / s8)) * s8 : x[i];
}

// Q_nvfp4 of one block of n <= 16 elements into out (out may be x), with the arithmetic of
// Nvfp4Quantizer::encode + decode; non-finite elements copied.
void nvfp4_block(const float* x, int64_t n, float s2, float* out) {
  float bamax = 0.0f;
  for (int64_t i = 0; i < n; ++i)
    if (std::isfinite(x[i])) bamax = std::max(bamax, std::fabs(x[i]));
  const float denom = 6.0f * s2;
  const uint8_t sb = denom > 0.0f ? fp32_to_e4m3(bamax / denom) : uint8_t{0};
  const float sbf = e4m3_to_fp32(sb);
  const float scale = sbf * s2;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) {
      out[i] = x[i];
      continue;
    }
    const uint8_t code = scale > 0.0f ? fp32_to_e2m1(x[i] / scale) : uint8_t{0};
    out[i] = e2m1_to_fp32(code) * sbf * s2;
  }
}

// sum_i g_i (q4_i - q8_i)^2 over the finite elements, in float64, rounded to fp32.
float block_score(const float* x, const float* q4, const float* q8, const float* g, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) continue;
    const double d = static_cast<double>(q4[i]) - static_cast<double>(q8[i]);
    s += static_cast<double>(g[i]) * d * d;
  }
  return static_cast<float>(s);
}

}  // namespace

const char* act_mode_name(ActQuantMode mode) {
  switch (mode) {
    case ActQuantMode::kNone: return "none";
    case ActQuantMode::kFp8: return "fp8";
    case ActQuantMode::kNvfp4: return "nvfp4";
    case ActQuantMode::kFgmp: return "fgmp";
    case ActQuantMode::kDeclared: return "auto";
  }
  return "?";
}

ActQuantMode parse_act_mode(const std::string& name) {
  for (ActQuantMode m : {ActQuantMode::kNone, ActQuantMode::kFp8, ActQuantMode::kNvfp4, ActQuantMode::kFgmp,
                         ActQuantMode::kDeclared})
    if (name == act_mode_name(m)) return m;
  throw Error(ExitCode::kUsage, "--act '" + name + "': unknown mode (known: none, fp8, nvfp4, fgmp, auto)");
}

ActBlockCounts quantize_activations(float* x, int64_t T, int64_t C, ActQuantMode mode, const float* act_fisher,
                                    float threshold, float static_scale) {
  MPQ_ASSERT(T >= 0 && C >= 0);
  MPQ_ASSERT(mode != ActQuantMode::kFgmp || act_fisher != nullptr);
  MPQ_ASSERT(mode != ActQuantMode::kDeclared);  // resolved per linear by the caller
  const bool fixed = !std::isnan(static_scale);
  MPQ_ASSERT(!fixed || (mode != ActQuantMode::kFgmp && std::isfinite(static_scale) && static_scale > 0.0f));
  ActBlockCounts n;
  if (mode == ActQuantMode::kNone) return n;
  const int64_t nb = (C + kActBlockSize - 1) / kActBlockSize;
  for (int64_t t = 0; t < T; ++t) {
    float* row = x + t * C;
    const RowScales s = fixed ? RowScales{static_scale, static_scale} : row_scales(row, C);
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t c0 = b * kActBlockSize, len = std::min<int64_t>(kActBlockSize, C - c0);
      float* blk = row + c0;
      if (mode == ActQuantMode::kFp8) {
        fp8_block(blk, len, s.s8, blk);
        ++n.fp8;
      } else if (mode == ActQuantMode::kNvfp4) {
        nvfp4_block(blk, len, s.s2, blk);
        ++n.fp4;
      } else {
        float q4[kActBlockSize], q8[kActBlockSize];
        nvfp4_block(blk, len, s.s2, q4);
        fp8_block(blk, len, s.s8, q8);
        const bool use_fp8 = block_score(blk, q4, q8, act_fisher + c0, len) > threshold;
        std::copy(use_fp8 ? q8 : q4, (use_fp8 ? q8 : q4) + len, blk);
        ++(use_fp8 ? n.fp8 : n.fp4);
      }
    }
  }
  return n;
}

void fgmp_block_scores(const float* x, int64_t T, int64_t C, const float* act_fisher, float* scores) {
  MPQ_ASSERT(T >= 0 && C >= 0 && act_fisher != nullptr);
  const int64_t nb = (C + kActBlockSize - 1) / kActBlockSize;
  for (int64_t t = 0; t < T; ++t) {
    const float* row = x + t * C;
    const RowScales s = row_scales(row, C);
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t c0 = b * kActBlockSize, len = std::min<int64_t>(kActBlockSize, C - c0);
      float q4[kActBlockSize], q8[kActBlockSize];
      nvfp4_block(row + c0, len, s.s2, q4);
      fp8_block(row + c0, len, s.s8, q8);
      scores[t * nb + b] = block_score(row + c0, q4, q8, act_fisher + c0, len);
    }
  }
}

}  // namespace mpq
