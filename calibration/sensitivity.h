// Sensitivities of every linear weight of a Llama model, from calibration windows.
//
//  * Fisher (SqueezeLLM, Kim et al. 2023, sec. 3.1): diagonal empirical Fisher
//    F = (1/N) sum_n g_n^2, g_n the gradient of window n's mean next-token loss (batch 1).
//  * Layer Hessian (GPTQ / OBS proxy, Frantar et al. 2022; llama.cpp imatrix):
//    H = (2/T) sum_t x_t x_t^T over the T calibration tokens entering the linear (x its
//    input row). The diagonal always; the full matrix on request; the trace.
//  * Hutchinson trace of the loss Hessian per weight tensor (HAWQ-V2, Dong et al. 2020;
//    PyHessian): Tr(H_W) ~ mean over Rademacher v of v_W^T (H v)_W, with H v from a central
//    difference of float64 gradients, (g(theta + eps v) - g(theta - eps v)) / (2 eps), on
//    one calibration window per sample (cycling). Cross-tensor terms have zero mean, so
//    one v over all parameters estimates every tensor's trace at once. Stops when every
//    tensor's running mean changes by under `hutchinson_tol` relative, or after
//    `hutchinson_iters` samples. Reported also divided by the parameter count.
//  * Activation Fisher (FGMP's activation sensitivity): per input channel c of a linear,
//    A_c = (1/T) sum over the T calibration tokens of (dL/dx[t, c])^2, x the linear's input
//    and L the same per-window mean loss the Fisher pass differentiates (dL/dx is the total
//    gradient w.r.t. that tensor, so q/k/v share one value, as do gate/up). Weights the
//    FP4-vs-FP8 error of each activation block (lib/quant/act_quant.h).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "lib/model/llama.h"
#include "lib/model/llama_grad.h"

namespace mpq {

struct SensitivityOptions {
  bool fisher = true;
  bool hessian = true;
  bool full_hessian = false;      ///< also the full [in, in] layer Hessian
  bool hutchinson = false;
  bool act_fisher = false;        ///< mean squared gradient w.r.t. each linear's input channels
  int hutchinson_iters = 100;     ///< maximum Rademacher samples
  int hutchinson_min_iters = 8;   ///< never stop before this many
  double hutchinson_tol = 1e-3;   ///< relative change of the running mean that stops
  double hutchinson_eps = 1e-4;   ///< finite-difference step along v
  int64_t layer_begin = 0;        ///< layers [layer_begin, layer_end) are computed
  int64_t layer_end = -1;         ///< -1 = all
  uint64_t seed = 0;              ///< Rademacher vectors
};

/// Sensitivities of one linear weight [rows = out, cols = in], named by its module
/// ("model.layers.0.self_attn.q_proj").
struct TensorSensitivity {
  std::string name;
  int64_t rows = 0, cols = 0;
  std::vector<float> fisher;          ///< [rows * cols] when computed
  std::vector<double> hessian_diag;   ///< [cols]
  std::vector<double> hessian;        ///< [cols * cols] when full_hessian
  std::vector<float> act_fisher;      ///< [cols] when act_fisher
  double fisher_sum = 0;              ///< sum of F
  double hessian_trace = 0;           ///< trace of the layer Hessian
  double act_fisher_sum = 0;          ///< sum of act_fisher
  double hutchinson_trace = 0;        ///< estimated Tr of the loss Hessian block
  double hutchinson_stderr = 0;       ///< standard error of that mean
  int hutchinson_samples = 0;
};

struct SensitivityResult {
  std::vector<TensorSensitivity> tensors;  ///< layer-major, kLinearNames order
  int64_t windows = 0, seq_len = 0, tokens = 0;
  double seconds = 0;
  double fisher_tokens_per_second = 0;  ///< forward+backward throughput of the Fisher pass
};

/// (stage name, step done, steps total, seconds elapsed) for progress and ETA.
using SensitivityProgress = std::function<void(const std::string&, int64_t, int64_t, double)>;

/// Runs the passes over `windows` (each of the same length, ids in the vocabulary).
/// Windows are streamed: memory does not grow with their number. Throws Error(kUsage) for
/// an empty layer range.
SensitivityResult compute_sensitivities(const LlamaConfig& config, const LlamaParams<float>& params,
                                        const std::vector<int32_t>& ids,
                                        const std::vector<int64_t>& window_starts, int64_t seq_len,
                                        const SensitivityOptions& opt,
                                        const SensitivityProgress& progress = nullptr);

/// Convenience overload: copies the model's weights into parameters first.
SensitivityResult compute_sensitivities(const LlamaModel& model, const std::vector<int32_t>& ids,
                                        const std::vector<int64_t>& window_starts, int64_t seq_len,
                                        const SensitivityOptions& opt,
                                        const SensitivityProgress& progress = nullptr);

}  // namespace mpq
