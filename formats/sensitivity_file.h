// The sensitivity file mpq-sensitivity writes and mpq-search / mpq-pack read: one
// safetensors file (docs/formats.md, "Sensitivity file").
//
//   <module>.fisher        F32 [out, in]   diagonal empirical Fisher (when "fisher" computed)
//   <module>.hessian_diag  F32 [in]        diagonal of the layer Hessian (2/T) sum x x^T
//   <module>.hessian       F32 [in, in]    the full layer Hessian (with --full-hessian)
//   <module>.act_fisher    F32 [in]        mean over tokens of (dL/dx)^2 per input channel
//                                          (when "act-fisher" computed)
// <module> is the linear's module name, e.g. "model.layers.0.self_attn.q_proj"; modules in
// layer-major, kLinearNames order, each module's tensors in the order above.
// __metadata__ (all strings): mpq_sensitivity_version "1", tool, kinds ("fisher,hessian,
// hutchinson,act-fisher" subset), samples, seq_len, seed, sequential, layers "A:B",
// num_layers, calibration_file, calibration_sha256, model_sha256 (JSON {file: sha256}),
// traces (JSON {module: {params, fisher_sum, hessian_trace, act_fisher_sum,
// hutchinson_trace, hutchinson_trace_per_param, hutchinson_stderr, hutchinson_samples}}).
//
// Layout: the header is space-padded to a length fixed before any number is known
// (sensitivity_header_reserve: the header with every trace number at its widest), so the
// tensors' offsets are known up front and the Fisher accumulators can live in the output
// file itself, memory-mapped (a 7B model has 26 GB of Fisher). The padding depends only on
// the module list and the metadata strings, so a merge of layer parts and a single run
// write the same bytes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "calibration/sensitivity.h"
#include "formats/sharded_safetensors.h"

namespace mpq {

/// One module of a sensitivity file and the tensors it has.
struct SensitivityModule {
  std::string name;  ///< "model.layers.<l>.<linear>"
  int64_t rows = 0, cols = 0;
  bool fisher = false, hessian_diag = false, hessian = false, act_fisher = false;
};

/// The modules of layers [begin, end) of config `c` with the given kinds (full implies
/// the diagonal too), in file order.
std::vector<SensitivityModule> sensitivity_modules(const LlamaConfig& c, int64_t begin, int64_t end, bool fisher,
                                                   bool hessian, bool full_hessian, bool act_fisher);

/// The "traces" metadata of a result, as written (ordered like r.tensors).
nlohmann::ordered_json sensitivity_traces(const SensitivityResult& r);

/// A sensitivity file laid out before the passes run: the file is created at
/// "<path>.tmp.<pid>" with its final size, mapped read-write, and renamed over `path` by
/// finish(). The Fisher tensors can be accumulated in place (fisher(k)); pages of the
/// mapping are file-backed, not anonymous memory. Without finish() the temporary file is
/// removed. Errors: Error(kOutput) naming the path.
class SensitivityFileWriter {
 public:
  /// `metadata` without "traces" and "mpq_sensitivity_version" (added here).
  SensitivityFileWriter(const std::string& path, std::vector<SensitivityModule> modules,
                        std::map<std::string, std::string> metadata);
  ~SensitivityFileWriter();
  SensitivityFileWriter(const SensitivityFileWriter&) = delete;
  SensitivityFileWriter& operator=(const SensitivityFileWriter&) = delete;

  const std::vector<SensitivityModule>& modules() const { return modules_; }
  /// Module k's Fisher, rows * cols floats inside the mapped file (zero at creation), or
  /// nullptr when the module has none. (4-byte alignment: data offsets are multiples of 4.)
  float* fisher(std::size_t k);
  /// Where the bytes of module k's tensor `suffix` ("fisher", "hessian_diag", "hessian",
  /// "act_fisher") go: pointer and size; Error(kInternal) when the module has no such tensor.
  uint8_t* tensor_bytes(std::size_t k, const std::string& suffix, std::size_t* nbytes);
  /// Copies from `r` (same modules, in order) every tensor not already in place (a
  /// non-empty TensorSensitivity::fisher is copied; an empty one is taken as accumulated
  /// in place), then finish(traces) with r's traces.
  void finish(const SensitivityResult& r);
  /// Writes the header with `traces`, flushes (msync, fsync) and renames over the path.
  void finish(const nlohmann::ordered_json& traces);

 private:
  struct Slot {
    std::size_t module;
    std::string suffix;
    uint64_t offset, nbytes;  // relative to the data region
  };
  std::string path_, tmp_;
  std::vector<SensitivityModule> modules_;
  std::map<std::string, std::string> metadata_;
  std::vector<TensorSpec> specs_;
  std::vector<Slot> slots_;
  uint64_t header_bytes_ = 0;  // 8 + reserved JSON length
  uint64_t file_bytes_ = 0;
  int fd_ = -1;
  uint8_t* map_ = nullptr;
  bool finished_ = false;
};

/// Writes `r` to `path` (atomically) with `metadata` (merged with "traces" and the
/// version), through SensitivityFileWriter. Throws Error(kOutput).
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
/// Combines the files of a split run (mpq-sensitivity --layers A:B on ranges that tile
/// [0, num_layers)) into exactly the file one run over all layers writes (byte-identical;
/// tested). Checks before writing anything, each failure Error(kInput) naming the part and
/// what is wrong: every part is a version-1 sensitivity file with "layers" and
/// "num_layers"; all parts agree on every metadata entry but "layers" and "traces"
/// (model_sha256 and calibration_sha256 included: parts of different inputs are refused);
/// the ranges neither overlap nor leave layers out; each part holds exactly the tensors its
/// range and kinds call for. Error(kUsage) for fewer than one part. Memory: tensors are
/// copied from part mappings into the output mapping; nothing is held.
void merge_sensitivity_files(const std::vector<std::string>& parts, const std::string& out);

}  // namespace mpq
