// Emulated ("fake") quantization of a linear layer's input activations: the values are
// quantized and dequantized back to fp32 in place, so an fp32 GEMM afterwards sees exactly
// what an FP8 / NVFP4 / FGMP tensor-core GEMM would read. This is FGMP's runtime half.
//
// Source: FGMP (fine-grained mixed precision, NVFP4 + FP8 per 16-element block, chosen by a
// Fisher-weighted score against a per-layer threshold; the weight half is lib/quant/fgmp.*),
// NVIDIA's NVFP4 recipe for activations (per-tensor-or-token fp32 global scale, E4M3 block
// scales, E2M1 values) and the OCP OFP8 / MX v1.0 element codecs (lib/numeric/codecs.h).
//
// X is row-major [T, C]: T tokens, C input channels. Scales are dynamic per token (row):
//   fp8    s_t = amax_t / 448;           x' = e4m3(x / s_t) * s_t
//   nvfp4  s2_t = amax_t / (6 * 448);    per 16-element block b along C:
//          s_b = E4M3(amax_b / (6 * s2_t)); x' = e2m1(x / (e4m3(s_b) * s2_t)) * e4m3(s_b) * s2_t
//          (exactly the arithmetic of lib/quant/nvfp4.cpp on a 1 x C tensor)
//   fgmp   per block: score = sum_i g_i * (Q_nvfp4(x_i) - Q_fp8(x_i))^2 (float64), g the
//          module's act_fisher [C]; FP8 when score > threshold, else NVFP4.
// A partial last block (C mod 16 elements) is a block of its own, as in the weight formats.
// amax_t is over the row's finite elements; a row with amax_t = 0 stays 0.
// Non-finite elements (NaN, +-Inf) are left unchanged, do not enter any amax or score, and
// the other elements of their block are quantized as if they were 0; so a NaN activation
// still reaches the logits (and the perplexity) instead of being hidden.
#pragma once

#include <atomic>
#include <cstdint>
#include <limits>
#include <string>

namespace mpq {

/// Elements per activation block (NVFP4's block size; also FGMP's choice granularity).
constexpr int kActBlockSize = 16;

/// What to do with each linear input: keep fp32, all FP8, all NVFP4, FGMP per block, or
/// kDeclared: per linear, what the checkpoint's quantization_config declares the engine does
/// (formats/packed_checkpoint.h, declared_activation()), with its static input scale.
enum class ActQuantMode { kNone, kFp8, kNvfp4, kFgmp, kDeclared };

/// "none", "fp8", "nvfp4", "fgmp", "auto" (kDeclared).
const char* act_mode_name(ActQuantMode mode);

/// Parses an act_mode_name(). Throws Error(kUsage) listing the known names otherwise.
ActQuantMode parse_act_mode(const std::string& name);

/// Blocks quantized to each format (counted per linear call: q/k/v each count their input).
struct ActBlockCounts {
  int64_t fp4 = 0;  ///< NVFP4 blocks
  int64_t fp8 = 0;  ///< FP8 blocks
  ActBlockCounts& operator+=(const ActBlockCounts& o) {
    fp4 += o.fp4;
    fp8 += o.fp8;
    return *this;
  }
  /// fp4 / (fp4 + fp8), 0 when no block was counted.
  double fp4_fraction() const { return fp4 + fp8 ? static_cast<double>(fp4) / static_cast<double>(fp4 + fp8) : 0.0; }
};

/// Thread-safe running ActBlockCounts (forward passes of parallel windows add to it).
/// Copying copies the current values.
struct ActBlockCounter {
  std::atomic<int64_t> fp4{0}, fp8{0};
  ActBlockCounter() = default;
  ActBlockCounter(const ActBlockCounter& o) : fp4(o.fp4.load()), fp8(o.fp8.load()) {}
  ActBlockCounter& operator=(const ActBlockCounter& o) {
    fp4 = o.fp4.load();
    fp8 = o.fp8.load();
    return *this;
  }
  void add(const ActBlockCounts& c) {
    fp4 += c.fp4;
    fp8 += c.fp8;
  }
  ActBlockCounts get() const { return {fp4.load(), fp8.load()}; }
  void reset() { fp4 = fp8 = 0; }
};

/// Fake-quantizes X (row-major [T, C] fp32) in place with per-token dynamic scales (see the
/// file comment). `act_fisher` ([C] fp32, >= 0) and `threshold` are used by kFgmp only (may
/// be null / anything otherwise); a +inf threshold gives all NVFP4, -inf all FP8.
/// Returns the blocks of each format (kNone: 0, 0). Requires T, C >= 0 and, for kFgmp, a
/// non-null act_fisher (asserted: callers validate inputs at load).
/// `static_scale`, when not NaN, replaces the per-token scales by one calibrated per-tensor
/// scale (an engine export's input_scale, ModelOpt's meaning: kFp8 s = static_scale for every
/// row, kNvfp4 s2 = static_scale), as vLLM's static W8A8 FP8 and W4A4 NVFP4 paths quantize
/// (scaled_fp8_quant / scaled_fp4_quant with the checkpoint's scale); values beyond the
/// range saturate (E4M3 at 448, block scales at 448, E2M1 at 6). It must be finite and > 0,
/// and not used with kFgmp (asserted).
ActBlockCounts quantize_activations(float* x, int64_t T, int64_t C, ActQuantMode mode,
                                    const float* act_fisher = nullptr, float threshold = 0.0f,
                                    float static_scale = std::numeric_limits<float>::quiet_NaN());

/// FGMP block scores of X [T, C] (row-major fp32) with act_fisher g [C]: scores[t * nb + b]
/// = sum over finite x_i of block b of row t of g_i * (Q_nvfp4(x_i) - Q_fp8(x_i))^2, with
/// nb = ceil(C / 16) and the per-token scales above; `scores` must hold T * nb floats.
/// The score is accumulated in float64 and rounded to fp32; quantize_activations(kFgmp)
/// compares that same fp32 value with the threshold.
void fgmp_block_scores(const float* x, int64_t T, int64_t C, const float* act_fisher, float* scores);

}  // namespace mpq
