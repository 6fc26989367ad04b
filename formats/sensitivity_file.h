// The sensitivity file mpq-sensitivity writes and mpq-search / mpq-pack read: one
// safetensors file (docs/formats.md, "Sensitivity file").
//
//   <module>.fisher        F32 [out, in]   diagonal empirical Fisher (when "fisher" computed)
//   <module>.hessian_diag  F32 [in]        diagonal of the layer Hessian (2/T) sum x x^T
//   <module>.hessian       F32 [in, in]    the full layer Hessian (with --full-hessian)
//   <module>.act_fisher    F32 [in]        mean over tokens of (dL/dx)^2 per input channel
//                                          (when "act-fisher" computed)
// <module> is the linear's module name, e.g. "model.layers.0.self_attn.q_proj".
// __metadata__ (all strings): mpq_sensitivity_version "1", tool, kinds ("fisher,hessian,
// hutchinson,act-fisher" subset), samples, seq_len, seed, sequential, layers "A:B", calibration_file,
// calibration_sha256, model_sha256 (JSON {file: sha256}), traces (JSON {module:
// {params, fisher_sum, hessian_trace, act_fisher_sum, hutchinson_trace, hutchinson_trace_per_param,
// hutchinson_stderr, hutchinson_samples}}).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "calibration/sensitivity.h"

namespace mpq {

/// Writes `r` atomically to `path` with `metadata` (merged with "traces" and the version).
/// Throws Error(kOutput).
void write_sensitivity_file(const std::string& path, const SensitivityResult& r,
                            const std::map<std::string, std::string>& metadata);

class TensorStore;  // formats/safetensors.h
struct TensorView;

/// Reader side, shared by mpq-search and mpq-pack (the file is opened with TensorStore::open,
/// which validates the safetensors layer).
///
/// Hutchinson trace per module from the "traces" metadata of every file of `sens`: module ->
/// hutchinson_trace, only for modules whose trace was computed (a number, and
/// hutchinson_samples absent or > 0; files written without --kind hutchinson carry 0 samples).
/// Throws Error(kInput) "<file>: __metadata__.traces...: <problem>" when traces is not JSON,
/// not an object, an entry is not an object, or a field has the wrong type.
std::map<std::string, double> read_hutchinson_traces(const TensorStore& sens);

/// The tensor `name` ("<module>.fisher", ".act_fisher", ".hessian_diag") of `sens` when
/// present, checked F32 with exactly `shape`; nullptr when absent. Throws Error(kInput)
/// "<file>: tensor '<name>': <dtype> <shape>, expected F32 <shape>" otherwise.
const TensorView* find_sensitivity_tensor(const TensorStore& sens, const std::string& name,
                                          const std::vector<int64_t>& shape);

}  // namespace mpq
