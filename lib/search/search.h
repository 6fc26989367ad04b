// mpq-search's engine: per-tensor candidate formats with their exact bytes and predicted
// loss increase, the budgeted assignment (lib/search/ilp.h), and the plan file.
//
// Predicted loss increase of quantizing weight W [out, in] to Q(W) (Q computed by actually
// encoding and decoding W with the candidate's quantizer):
//   Fisher form (SqueezeLLM, Kim et al. 2024, eq. 4; the diagonal-Fisher second-order
//   model):       Omega = 1/2 * sum_ij F_ij (Q(W)_ij - W_ij)^2,  F = "<module>.fisher"
//   HAWQ form (HAWQ-V3, Yao et al. 2021, eq. 8 with HAWQ-V2's trace):
//                 Omega = (Tr(H) / n) * ||Q(W) - W||^2,  Tr(H) the Hutchinson trace of the
//                 loss Hessian block of W (sensitivity metadata "traces"), n = out * in.
//   K-FAC form (with calibration windows; Martens & Grosse 2015's Kronecker factorization
//   of the Fisher, F_ij ~ s_i E[x_j^2], applied to the layer's error as GPTQ sees it):
//                 Omega = 1/2 sum_i s_i (Q(W)-W)_i E[x x^T] (Q(W)-W)_i^T,
//                 s_i = sum_j F_ij / sum_j E[x_j^2], E[x x^T] = H / 2 from the original
//                 model's calibration windows (H = 2/N sum x x^T, the GPTQ Hessian). Unlike
//                 the diagonal forms it sees the input correlations that GPTQ exploits; for
//                 a diagonal E[x x^T] and an exactly factored F it equals the Fisher form.
//   "+gptq" candidates are scored with Q(W) = GPTQ on that H (per tensor, from the original
//   model's inputs: a predictor of mpq-pack's sequential pass, not the same numbers).
// The source dtype ("source" candidate) has Omega = 0 and the source's bytes.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <tuple>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lib/pack/pack_model.h"
#include "lib/quant/fgmp.h"
#include "lib/quant/quantizer.h"
#include "lib/search/ilp.h"

namespace mpq {

/// One candidate: a format label of the one grammar (parse_format_label, lib/quant/quantizer.h),
/// "source" keeping the tensor in its source dtype.
using CandidateSpec = FormatSpec;

/// The default candidate labels (every format mpq packs, at its usual settings).
std::vector<std::string> default_candidate_labels();

/// Costs of one candidate for one tensor.
struct CandidateCost {
  double bytes = 0;         ///< exact stored bytes (PackedTensor::bytes(), every part)
  double omega_fisher = 0;  ///< Fisher-form Omega (NaN without "<module>.fisher")
  double omega_hawq = 0;    ///< HAWQ-form Omega (NaN without a Hutchinson trace)
  double omega_kfac = 0;    ///< K-FAC-form Omega (NaN without calibration windows or Fisher)
  double output_mse = 0;    ///< mean over tokens of ||(Q(W)-W) x||^2 (NaN without calibration)
};

/// The Omega of `cc` under cost form `cost` ("fisher", "hawq", "kfac").
double candidate_omega(const CandidateCost& cc, const std::string& cost);

/// One quantizable linear and the costs of every candidate (indexed like the specs).
struct TensorCandidates {
  std::string module;  ///< "model.layers.0.self_attn.q_proj"
  int64_t rows = 0, cols = 0;
  std::string source_dtype;  ///< "f32", "f16", "bf16"
  std::vector<CandidateCost> costs;
};

/// (tensor index, tensor count, module) after each tensor.
using SearchProgress = std::function<void(std::size_t, std::size_t, const std::string&)>;

/// Encodes and decodes every linear projection of the Llama-family model at `model_dir`
/// with every candidate and computes bytes and both Omega forms. `sensitivity` is a
/// mpq-sensitivity file (formats/sensitivity_file.h); its Fisher also weights the squeezellm
/// k-means. Throws Error(kInput) naming file and tensor for a missing/misshaped tensor,
/// NaN weights, or a sensitivity file without "<module>.fisher" [out, in] F32.
/// With `calib` (text non-empty): the layer input Hessians of the original model over those
/// windows (calibration/gptq_calibration.h, without quantizing) give omega_kfac and
/// output_mse, and "+gptq" candidates; without, a "+gptq" spec is Error(kUsage).
std::vector<TensorCandidates> evaluate_candidates(const std::string& model_dir,
                                                  const std::string& sensitivity,
                                                  const std::vector<CandidateSpec>& specs,
                                                  const SearchProgress& progress = nullptr,
                                                  const CalibWindowOptions* calib = nullptr);

/// Per-shape, per-candidate latency in microseconds (the table mpq-bench writes), JSON:
/// {"device": "...", "entries": [{"rows": R, "cols": C, "candidate": "nvfp4", "us": 12.5}, ...]}.
struct LatencyTable {
  std::string device;
  /// Latency of `candidate` on a [rows, cols] layer; throws Error(kInput) naming `file`,
  /// the shape and the candidate when the table has no such entry.
  double lookup(int64_t rows, int64_t cols, const std::string& candidate) const;
  std::string file;
  std::vector<std::tuple<int64_t, int64_t, std::string, double>> entries;
};

/// Reads a latency table; throws Error(kInput) naming the file and field.
LatencyTable read_latency_table(const std::string& path);

/// What to optimize and under which budgets.
struct SearchOptions {
  std::string cost = "fisher";  ///< "fisher", "hawq" or "kfac"
  double max_bytes = std::numeric_limits<double>::infinity();       ///< linear bytes budget
  double max_latency_us = std::numeric_limits<double>::infinity();  ///< needs a latency table
  /// Tie specs, each a comma list of module suffixes ("q_proj,k_proj,v_proj"): within a
  /// layer, the modules ending in those names take one candidate.
  std::vector<std::string> ties;
  const LatencyTable* latency = nullptr;
  /// Target engine export (lib/pack/export.h), kMpq = none: only candidates the export can
  /// express for the tensor are allowed (FormatInfo::exports; NVFP4 only where in_features %
  /// 16 == 0), and the engine's fused layers (q/k/v, gate/up) are tied. Recorded in the plan;
  /// mpq-pack --plan packs with it unless --export says otherwise.
  ExportKind target_export = ExportKind::kMpq;
};

/// Whether engine export `kind` can store a tensor with `cols` inputs in candidate `spec`
/// (always for kMpq and "source"; otherwise the format's export bit, and for NVFP4
/// cols % 16 == 0, which vLLM requires).
bool export_allows(ExportKind kind, const CandidateSpec& spec, int64_t cols);

/// The ILP of `tensors` under `opt` (candidates with a NaN cost of the chosen form make it
/// throw Error(kInput) naming the missing sensitivity, "<module>.fisher" or its trace).
IlpProblem build_problem(const std::vector<TensorCandidates>& tensors,
                         const std::vector<CandidateSpec>& specs, const SearchOptions& opt);

/// The plan document (docs/formats.md, "Plan file") for a solved problem: per tensor the
/// candidate label, format, parameters, bytes and Omega; totals; solver status and gaps.
/// `inputs` goes in verbatim (sha256 of the model files and the sensitivity file).
nlohmann::json make_plan(const std::vector<TensorCandidates>& tensors,
                         const std::vector<CandidateSpec>& specs, const SearchOptions& opt,
                         const IlpSolution& sol, double solve_seconds, const nlohmann::json& inputs);

/// Reads a plan file written by make_plan() into mpq-pack's per-module entries (quantizers
/// built with make_quantizer() from each entry's candidate label). When
/// `sensitivity` is not null it receives the plan's "sensitivity_file" (empty if none).
/// Throws Error(kInput) naming the file and field for a malformed plan, a solver status
/// other than "optimal", or an unknown candidate.
/// `target_export`, when not null, receives the plan's "export" ("mpq" when absent).
std::map<std::string, PlanEntry> read_plan(const std::string& path, std::string* sensitivity = nullptr,
                                           std::string* sensitivity_sha256 = nullptr,
                                           std::string* target_export = nullptr);

/// Linear weights of all tensors (sum of rows * cols).
int64_t total_linear_params(const std::vector<TensorCandidates>& tensors);

}  // namespace mpq
