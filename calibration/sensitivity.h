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

#include "formats/safetensors.h"
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
  /// Most windows run at once, one per thread (0 = automatic: window_threads(), i.e. all
  /// threads up to 64M weights, else 1 with the threads inside the GEMMs). The results do
  /// not depend on it, nor on the thread count (see compute_sensitivities).
  int max_window_threads = 0;
  /// compute_sensitivities(store): how the weights are read.
  enum class Weights {
    kAuto,    ///< in memory up to 64M weights, else streamed
    kMemory,  ///< the whole model converted to fp32 first
    kStream,  ///< one layer at a time from the mapped checkpoint (StreamedParams)
  };
  Weights weights = Weights::kAuto;
  /// Keep only each layer's input during the forward pass and recompute the activations in
  /// the backward pass (LlamaGradSink::keep_only_layer_inputs): about a third more time,
  /// the same numbers, far less memory for long windows or many layers (Llama-2-70B).
  bool recompute_activations = false;
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

/// Where the Fisher accumulators live: storage(k) is tensor k's rows * cols floats (k in
/// SensitivityResult::tensors order), zero on entry and holding the Fisher on return. The
/// sensitivity file writer hands out its memory-mapped tensors, so a 7B model's 26 GB of
/// Fisher live in the page cache of the output file, not in anonymous memory. Null: in
/// TensorSensitivity::fisher.
using FisherStorage = std::function<float*(std::size_t)>;

/// Runs the passes over `windows` (each of the same length, ids in the vocabulary).
/// Windows are streamed: memory does not grow with their number. Throws Error(kUsage) for
/// an empty layer range.
///
/// Reproducibility: every sum runs in window order whatever the thread count: a window's
/// squared weight gradients and its layer-input statistics are added to the accumulators
/// in window order (windows running in parallel hand theirs over in that order), and the
/// Fisher is divided by N and summed (float64, element order) at the end. The output is
/// therefore byte-identical for any --threads value on the same machine and build (tested),
/// given that the GEMM library splits no dot product across threads (OpenBLAS and Eigen
/// partition rows and columns); another BLAS, CPU family or compiler may round differently.
/// Hutchinson folds its samples in sample order too.
SensitivityResult compute_sensitivities(const LlamaConfig& config, const LlamaParams<float>& params,
                                        const std::vector<int32_t>& ids,
                                        const std::vector<int64_t>& window_starts, int64_t seq_len,
                                        const SensitivityOptions& opt,
                                        const SensitivityProgress& progress = nullptr);

/// The passes on a checkpoint (config `config`, tensors checked by check_llama_checkpoint()):
/// per opt.weights, converted to fp32 in memory or streamed one layer at a time in the
/// stored dtype (then one window runs at a time and only that layer's weights, one weight
/// gradient and the activations of the layers >= opt.layer_begin are in memory). Gradients
/// are computed only for the layers in range and stop at layer_begin. Same numbers either
/// way (tested). Hutchinson converts the whole model to float64 (4 copies: 32 bytes per
/// weight); small models only.
SensitivityResult compute_sensitivities(const LlamaConfig& config, const TensorStore& store,
                                        const std::vector<int32_t>& ids,
                                        const std::vector<int64_t>& window_starts, int64_t seq_len,
                                        const SensitivityOptions& opt,
                                        const SensitivityProgress& progress = nullptr,
                                        const FisherStorage& fisher = nullptr);

/// Convenience overload: copies the model's weights into parameters first.
SensitivityResult compute_sensitivities(const LlamaModel& model, const std::vector<int32_t>& ids,
                                        const std::vector<int64_t>& window_starts, int64_t seq_len,
                                        const SensitivityOptions& opt,
                                        const SensitivityProgress& progress = nullptr);

}  // namespace mpq
