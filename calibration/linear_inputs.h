// Forward passes of a dense model over calibration windows, with the inputs of every linear
// handed to observers: the shared driver of the activation calibrations (FGMP activation
// thresholds, lib/pack/act_calibration.h; static input scales of engine exports,
// lib/pack/input_scales.h).
//
// Windows: `samples` windows of `seq_len` tokens at sampled starts (calibration/windows.h,
// seed `seed`), from a calibration file tokenized with the model's tokenizer (BOS first, as
// mpq-sensitivity does) or read as int32 ids (.i32). The fp32 forward of lib/model/llama_grad
// runs one window per thread for small models (window_threads), each thread reporting to its
// own observer, so observers need no locking.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lib/model/llama_grad.h"

namespace mpq {

/// Which calibration windows to run.
struct CalibWindowOptions {
  std::string text;      ///< calibration text (.txt) or int32 ids (.i32)
  int64_t samples = 32;  ///< windows
  int64_t seq_len = 256; ///< tokens per window (>= 2)
  uint64_t seed = 0;     ///< window sampling (splitmix64)
};

/// Token ids of a calibration file (.i32: int32 little-endian ids; otherwise text encoded
/// with `model_dir`'s tokenizer). Throws Error(kInput) naming the file for a missing or empty
/// file, a tokenizer problem, or an id outside [0, vocab) (naming the position).
std::vector<int32_t> read_calibration_ids(const std::string& model_dir, const std::string& path,
                                          int64_t vocab);

/// Threads observe_linear_inputs() uses for a model of `params`: one window per thread up to
/// window_threads(params) (lib/model/llama.h).
int calibration_threads(const LlamaParams<float>& params);

/// Runs the forward pass of every window of `ids` (see the file comment); window n goes to
/// the thread that calls observers[omp_get_thread_num()]->on_linear_input(...).
/// observers.size() threads are used. Throws Error(kInput) when the ids are shorter than one
/// window, and rethrows the first error of a forward pass.
void observe_linear_inputs(const LlamaConfig& c, const LlamaParams<float>& params,
                           const std::vector<int32_t>& ids, const CalibWindowOptions& opt,
                           const std::vector<LinearInputObserver*>& observers);

}  // namespace mpq
