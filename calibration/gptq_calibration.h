// The sequential calibration pass of GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training
// Quantization for Generative Pre-trained Transformers", section 4 and its reference code's
// "true sequential" mode): layer by layer, and inside a layer group by group in the order
// the forward pass reads them (q/k/v, then o, then gate/up, then down), the input Hessian
// H = 2/N sum_t x_t x_t^T of a group is collected from the calibration windows with every
// earlier linear already replaced by its quantized values, the group's linears are
// quantized against it (lib/quant/gptq.h), and the quantized layer's output feeds the next
// layer. The hidden states of every window are carried from layer to layer, so each layer
// runs five layer forwards per window (one per group, one for its output), never the
// whole model again.
//
// Memory: the windows' hidden states (samples x seq_len x hidden fp32: 512 MB for
// 128 x 256 windows of Llama-2-7B), one layer of fp32 parameters (808 MB for Llama-2-7B),
// and one Hessian per linear of the current group (cols^2 float64: 0.97 GB for down_proj
// of Llama-2-7B). Weights are read one layer at a time from the checkpoint's mapping
// (StreamedParams), in their stored dtype until converted.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "calibration/linear_inputs.h"
#include "lib/quant/quantizer.h"  // PackedTensor
#include "lib/model/llama_grad.h"

namespace mpq {

/// Quantizes one linear under GPTQ: `module` ("model.layers.3.self_attn.q_proj"), its input
/// Hessian `h` (cols x cols float64, row-major, 2/N sum x x^T over the calibration tokens).
/// Returns the packed tensor and sets `dequantized` to its decoded weights (rows x cols
/// fp32, what the next layers' calibration sees); std::nullopt keeps the module unquantized
/// (its original weights stay in the pass). May throw (the pass rethrows).
using GptqLinearFn =
    std::function<std::optional<PackedTensor>(const std::string& module, const std::vector<double>& h,
                                              std::vector<float>& dequantized)>;

/// Progress of the pass: (layers done, layer count).
using GptqProgress = std::function<void(int64_t, int64_t)>;

/// The pass over one checkpoint (see the file comment). Construction embeds the windows;
/// take() runs layers in order as far as the module asked for. Not thread-safe.
class GptqSequentialPass {
 public:
  /// `c` and `store` (a checked dense checkpoint, check_llama_checkpoint) must outlive the
  /// pass. `ids`: calibration token ids; windows: `opt.samples` windows of `opt.seq_len`
  /// tokens at sampled starts (calibration/windows.h, seed opt.seed). Throws Error(kInput)
  /// when the ids are shorter than one window.
  GptqSequentialPass(const LlamaConfig& c, const TensorStore& store, const std::vector<int32_t>& ids,
                     const CalibWindowOptions& opt, GptqLinearFn quantize, GptqProgress progress = nullptr);
  ~GptqSequentialPass();

  /// The packed tensor of `module` of layer l (quantized by the GptqLinearFn), running
  /// layers up to l first. Each module may be taken once; layers only move forward (running
  /// layer l drops what earlier layers left untaken; asking for it then is an internal error). Returns nullopt when
  /// the function kept the module unquantized.
  std::optional<PackedTensor> take(const std::string& module);

  /// Calibration tokens (windows x seq_len) and the seconds spent so far, for reports.
  int64_t tokens() const;
  double seconds() const { return seconds_; }

 private:
  void run_layer(int64_t l);

  const LlamaConfig& c_;
  std::unique_ptr<StreamedParams> src_;
  GptqLinearFn quantize_;
  GptqProgress progress_;
  std::vector<MatRM<float>> h_;  // hidden states entering layer next_, one per window
  int64_t next_ = 0;             // the next layer to run
  std::map<std::string, std::optional<PackedTensor>> done_;
  double seconds_ = 0.0;
};

}  // namespace mpq
