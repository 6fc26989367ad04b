#include "formats/sensitivity_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "formats/safetensors.h"
#include "lib/common/error.h"
#include "lib/common/json_fields.h"
#include "lib/common/layer_range.h"
#include "lib/common/shape.h"
#include "lib/model/llama.h"

namespace mpq {
namespace {

/// Trace fields in file order; all but params and hutchinson_samples are doubles.
constexpr int kTraceDoubles = 6;
/// Widest nlohmann rendering of a double ("-1.2345678901234567e-308", 24 characters)
/// minus the placeholder "0.0"; of a 64-bit count (20 digits) minus "0".
constexpr std::size_t kDoubleExtra = 24 - 3, kCountExtra = 20 - 1;

/// The traces object with every number that is only known at the end set to 0.
nlohmann::ordered_json placeholder_traces(const std::vector<SensitivityModule>& modules) {
  nlohmann::ordered_json traces = nlohmann::ordered_json::object();
  for (const SensitivityModule& m : modules)
    traces[m.name] = {{"params", m.rows * m.cols},
                      {"fisher_sum", 0.0},
                      {"hessian_trace", 0.0},
                      {"act_fisher_sum", 0.0},
                      {"hutchinson_trace", 0.0},
                      {"hutchinson_trace_per_param", 0.0},
                      {"hutchinson_stderr", 0.0},
                      {"hutchinson_samples", 0}};
  return traces;
}

std::string sys_error(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

}  // namespace

std::vector<SensitivityModule> sensitivity_modules(const LlamaConfig& c, int64_t begin, int64_t end, bool fisher,
                                                   bool hessian, bool full_hessian, bool act_fisher) {
  std::vector<SensitivityModule> out;
  for (int64_t l = begin; l < end; ++l)
    for (int i = 0; i < 7; ++i) {
      const auto [rows, cols] = linear_shape(c, i);
      out.push_back({"model.layers." + std::to_string(l) + "." + kLinearNames[i], rows, cols, fisher,
                     hessian || full_hessian, full_hessian, act_fisher});
    }
  return out;
}

nlohmann::ordered_json sensitivity_traces(const SensitivityResult& r) {
  nlohmann::ordered_json traces = nlohmann::ordered_json::object();
  for (const TensorSensitivity& t : r.tensors) {
    const double params = static_cast<double>(t.rows * t.cols);
    traces[t.name] = {{"params", t.rows * t.cols},
                      {"fisher_sum", t.fisher_sum},
                      {"hessian_trace", t.hessian_trace},
                      {"act_fisher_sum", t.act_fisher_sum},
                      {"hutchinson_trace", t.hutchinson_trace},
                      {"hutchinson_trace_per_param", t.hutchinson_trace / params},
                      {"hutchinson_stderr", t.hutchinson_stderr},
                      {"hutchinson_samples", t.hutchinson_samples}};
  }
  return traces;
}

// --- SensitivityFileWriter ----------------------------------------------------------------

SensitivityFileWriter::SensitivityFileWriter(const std::string& path, std::vector<SensitivityModule> modules,
                                             std::map<std::string, std::string> metadata)
    : path_(path), modules_(std::move(modules)), metadata_(std::move(metadata)) {
  metadata_["mpq_sensitivity_version"] = "1";
  metadata_.erase("traces");
  uint64_t offset = 0;
  for (std::size_t k = 0; k < modules_.size(); ++k) {
    const SensitivityModule& m = modules_[k];
    const auto add = [&](bool on, const char* suffix, std::vector<int64_t> shape) {
      if (!on) return;
      uint64_t n = 4;
      for (int64_t d : shape) n *= static_cast<uint64_t>(d);
      specs_.push_back(TensorSpec{m.name + "." + suffix, DType::F32, shape, n});
      slots_.push_back(Slot{k, suffix, offset, n});
      offset += n;
    };
    add(m.fisher, "fisher", {m.rows, m.cols});
    add(m.hessian_diag, "hessian_diag", {m.cols});
    add(m.hessian, "hessian", {m.cols, m.cols});
    add(m.act_fisher, "act_fisher", {m.cols});
  }
  // The reserve: the header with placeholder traces, widened by the largest growth of
  // every number (depends only on the modules and the metadata strings).
  std::map<std::string, std::string> meta = metadata_;
  meta["traces"] = placeholder_traces(modules_).dump();
  const std::size_t base = safetensors_header(specs_, meta, path_).size() - 8;
  const std::size_t reserve = base + modules_.size() * (kTraceDoubles * kDoubleExtra + kCountExtra);
  header_bytes_ = 8 + ((reserve + 7) / 8) * 8;
  file_bytes_ = header_bytes_ + offset;

  tmp_ = path_ + ".tmp." + std::to_string(::getpid());
  const std::string folder = std::filesystem::path(path_).parent_path().string();
  std::error_code ec;
  if (!folder.empty() && !std::filesystem::is_directory(folder, ec))
    throw_output(path_, "folder '" + folder + "' does not exist");
  fd_ = ::open(tmp_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0666);
  if (fd_ < 0) throw_output(path_, "cannot create '" + tmp_ + "': " + std::strerror(errno));
  // Reserve the blocks now, so a full disk fails here rather than as SIGBUS in the mapping.
  int err = ::posix_fallocate(fd_, 0, static_cast<off_t>(file_bytes_));
  if (err == EOPNOTSUPP || err == EINVAL) err = ::ftruncate(fd_, static_cast<off_t>(file_bytes_)) == 0 ? 0 : errno;
  if (err != 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
    fd_ = -1;
    throw_output(path_, "cannot size '" + tmp_ + "' to " + std::to_string(file_bytes_) + " bytes: " + std::strerror(err));
  }
  void* m = ::mmap(nullptr, file_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (m == MAP_FAILED) {
    const std::string msg = sys_error("cannot map");
    ::close(fd_);
    ::unlink(tmp_.c_str());
    fd_ = -1;
    throw_output(path_, msg);
  }
  map_ = static_cast<uint8_t*>(m);
}

SensitivityFileWriter::~SensitivityFileWriter() {
  if (map_) ::munmap(map_, file_bytes_);
  if (fd_ >= 0) ::close(fd_);
  if (!finished_) ::unlink(tmp_.c_str());
}

uint8_t* SensitivityFileWriter::tensor_bytes(std::size_t k, const std::string& suffix, std::size_t* nbytes) {
  for (const Slot& s : slots_)
    if (s.module == k && s.suffix == suffix) {
      if (nbytes) *nbytes = s.nbytes;
      return map_ + header_bytes_ + s.offset;
    }
  throw Error(ExitCode::kInternal, "sensitivity file: module " + std::to_string(k) + " has no " + suffix);
}

float* SensitivityFileWriter::fisher(std::size_t k) {
  if (!modules_.at(k).fisher) return nullptr;
  return reinterpret_cast<float*>(tensor_bytes(k, "fisher", nullptr));
}

void SensitivityFileWriter::finish(const SensitivityResult& r) {
  if (r.tensors.size() != modules_.size())
    throw Error(ExitCode::kInternal, "sensitivity file: result and layout differ in module count");
  for (std::size_t k = 0; k < modules_.size(); ++k) {
    const TensorSensitivity& t = r.tensors[k];
    const SensitivityModule& m = modules_[k];
    MPQ_ASSERT(t.name == m.name);
    std::size_t n = 0;
    if (m.fisher && !t.fisher.empty()) {
      uint8_t* dst = tensor_bytes(k, "fisher", &n);
      MPQ_ASSERT(n == 4 * t.fisher.size());
      std::memcpy(dst, t.fisher.data(), n);
    }
    const auto put_doubles = [&](const char* suffix, const std::vector<double>& v) {
      uint8_t* dst = tensor_bytes(k, suffix, &n);
      MPQ_ASSERT(n == 4 * v.size());
      for (std::size_t i = 0; i < v.size(); ++i) {
        const float f = static_cast<float>(v[i]);
        std::memcpy(dst + 4 * i, &f, 4);
      }
    };
    if (m.hessian_diag) put_doubles("hessian_diag", t.hessian_diag);
    if (m.hessian) put_doubles("hessian", t.hessian);
    if (m.act_fisher) {
      uint8_t* dst = tensor_bytes(k, "act_fisher", &n);
      MPQ_ASSERT(n == 4 * t.act_fisher.size());
      if (n) std::memcpy(dst, t.act_fisher.data(), n);
    }
  }
  finish(sensitivity_traces(r));
}

void SensitivityFileWriter::finish(const nlohmann::ordered_json& traces) {
  if (finished_) throw Error(ExitCode::kInternal, "sensitivity file: finished twice");
  std::map<std::string, std::string> meta = metadata_;
  meta["traces"] = traces.dump();
  const std::string head = safetensors_header(specs_, meta, path_, header_bytes_ - 8);
  if (head.size() != header_bytes_)
    throw Error(ExitCode::kInternal, "sensitivity file: header of " + std::to_string(head.size()) +
                                         " bytes exceeds its reserve of " + std::to_string(header_bytes_));
  std::memcpy(map_, head.data(), head.size());
  if (::msync(map_, file_bytes_, MS_SYNC) != 0) throw_output(path_, sys_error("msync"));
  if (::munmap(map_, file_bytes_) != 0) throw_output(path_, sys_error("munmap"));
  map_ = nullptr;
  if (::fsync(fd_) != 0) throw_output(path_, sys_error("fsync"));
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) throw_output(path_, sys_error("close"));
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) throw_output(path_, sys_error("rename"));
  finished_ = true;
  const std::string folder = std::filesystem::path(path_).parent_path().string();
  const int dfd = ::open(folder.empty() ? "." : folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);  // best effort: make the rename durable
    ::close(dfd);
  }
}

void write_sensitivity_file(const std::string& path, const SensitivityResult& r,
                            const std::map<std::string, std::string>& metadata) {
  std::vector<SensitivityModule> modules;
  for (const TensorSensitivity& t : r.tensors)
    modules.push_back({t.name, t.rows, t.cols, !t.fisher.empty(), !t.hessian_diag.empty(), !t.hessian.empty(),
                       !t.act_fisher.empty()});
  SensitivityFileWriter w(path, std::move(modules), metadata);
  w.finish(r);
}

// --- Merging the parts of a split run --------------------------------------------------------

void merge_sensitivity_files(const std::vector<std::string>& parts, const std::string& out) {
  if (parts.empty()) throw Error(ExitCode::kUsage, "mpq-merge: no parts given");
  struct Part {
    std::string path;
    std::unique_ptr<SafetensorsFile> file;
    int64_t begin = 0, end = 0;
    nlohmann::ordered_json traces;
  };
  std::vector<Part> ps;
  int64_t num_layers = -1;
  std::map<std::string, std::string> common;  // metadata but layers and traces
  std::string first;
  for (const std::string& path : parts) {
    Part p;
    p.path = path;
    p.file = SafetensorsFile::open(path);
    const auto& md = p.file->metadata();
    const auto get = [&](const char* key) -> const std::string& {
      const auto it = md.find(key);
      if (it == md.end())
        throw_input(path, std::string("__metadata__ has no '") + key + "': not a part of an mpq-sensitivity --layers run "
                                                                       "(or written by an older mpq)");
      return it->second;
    };
    if (get("mpq_sensitivity_version") != "1")
      throw_input(path, "mpq_sensitivity_version '" + get("mpq_sensitivity_version") + "' (want \"1\")");
    const std::string layers = get("layers");
    const auto colon = layers.find(':');
    try {
      if (colon == std::string::npos) throw std::invalid_argument("no colon");
      std::size_t used = 0;
      p.begin = std::stoll(layers.substr(0, colon), &used);
      if (used != colon) throw std::invalid_argument("junk");
      p.end = std::stoll(layers.substr(colon + 1), &used);
      if (used != layers.size() - colon - 1) throw std::invalid_argument("junk");
      const std::string nl = get("num_layers");
      const int64_t n = std::stoll(nl, &used);
      if (used != nl.size() || n <= 0) throw std::invalid_argument("junk");
      if (num_layers >= 0 && n != num_layers)
        throw_input(path, "num_layers " + nl + " differs from " + first + "'s " + std::to_string(num_layers));
      num_layers = n;
    } catch (const std::logic_error&) {
      const auto nl = md.find("num_layers");
      throw_input(path, "__metadata__ layers '" + layers + "' / num_layers '" + (nl == md.end() ? "" : nl->second) +
                            "' are not integers A:B and N");
    }
    if (p.begin < 0 || p.end > num_layers || p.begin >= p.end)
      throw_input(path, "layers " + layers + " outside [0, " + std::to_string(num_layers) + ")");
    try {
      p.traces = nlohmann::ordered_json::parse(get("traces"));
    } catch (const nlohmann::json::exception&) {
      throw_input(path, "__metadata__ traces is not valid JSON");
    }
    if (!p.traces.is_object()) throw_input(path, "__metadata__ traces is not a JSON object");
    std::map<std::string, std::string> rest = md;
    rest.erase("layers");
    rest.erase("traces");
    if (first.empty()) {
      common = rest;
      first = path;
    } else {
      // Inputs first: a different model or calibration set is the likeliest mistake.
      std::vector<std::string> keys = {"model_sha256", "calibration_sha256"};
      for (const auto& kv : common)
        if (kv.first != "model_sha256" && kv.first != "calibration_sha256") keys.push_back(kv.first);
      for (const std::string& k : keys) {
        if (!common.count(k)) continue;
        const std::string& v = common.at(k);
        const auto it = rest.find(k);
        if (it == rest.end() || it->second != v)
          throw_input(path, "__metadata__ " + k + (it == rest.end() ? " is missing" : " differs from " + first + "'s") +
                                (k == "model_sha256" || k == "calibration_sha256"
                                     ? ": the parts were computed from different inputs"
                                     : ": the parts were computed with different settings"));
      }
      for (const auto& [k, v] : rest)
        if (!common.count(k)) throw_input(path, "__metadata__ " + k + " is not in " + first);
    }
    ps.push_back(std::move(p));
  }
  std::sort(ps.begin(), ps.end(), [](const Part& a, const Part& b) { return a.begin < b.begin; });
  {
    std::vector<LayerRange> ranges;
    std::vector<std::string> files;
    for (const Part& p : ps) {
      ranges.push_back({p.begin, p.end});
      files.push_back(p.path);
    }
    check_layer_tiling(ranges, files, num_layers);
  }

  // The modules of the whole file, from the parts' own tensors (shapes and kinds checked
  // against each other: every part must hold the same kinds for every module).
  std::vector<SensitivityModule> modules;
  nlohmann::ordered_json traces = nlohmann::ordered_json::object();
  std::vector<std::size_t> source;  // module -> the part holding it
  for (std::size_t pi = 0; pi < ps.size(); ++pi) {
    const Part& p = ps[pi];
    std::size_t expected = 0;
    for (int64_t l = p.begin; l < p.end; ++l)
      for (int i = 0; i < 7; ++i) {
        const std::string name = "model.layers." + std::to_string(l) + "." + kLinearNames[i];
        SensitivityModule m{name, 0, 0, p.file->has(name + ".fisher"), p.file->has(name + ".hessian_diag"),
                            p.file->has(name + ".hessian"), p.file->has(name + ".act_fisher")};
        const auto shape_of = [&](const char* suffix) { return p.file->get(name + "." + suffix).shape; };
        if (m.fisher) {
          const auto sh = shape_of("fisher");
          if (sh.size() != 2) throw_input(p.path, "tensor '" + name + ".fisher' is not 2-D");
          m.rows = sh[0];
          m.cols = sh[1];
        } else if (m.hessian_diag || m.act_fisher) {
          const auto sh = shape_of(m.hessian_diag ? "hessian_diag" : "act_fisher");
          m.cols = sh.empty() ? 0 : sh[0];
          const auto it = p.traces.find(name);
          if (it == p.traces.end() || !it->contains("params") || !(*it)["params"].is_number_integer() || m.cols <= 0)
            throw_input(p.path, "traces has no params for '" + name + "'");
          m.rows = (*it)["params"].get<int64_t>() / m.cols;
        } else {
          throw_input(p.path, "missing tensors of module '" + name + "' (its layers " + std::to_string(p.begin) + ":" +
                                  std::to_string(p.end) + " should hold it)");
        }
        if (!modules.empty()) {
          const SensitivityModule& f = modules.front();
          if (m.fisher != f.fisher || m.hessian_diag != f.hessian_diag || m.hessian != f.hessian ||
              m.act_fisher != f.act_fisher)
            throw_input(p.path, "module '" + name + "' holds other kinds of tensor than '" + f.name + "' of " + ps[0].path);
        }
        const auto check = [&](bool on, const char* suffix, std::vector<int64_t> shape) {
          if (!on) return;
          const TensorView& t = p.file->get(name + "." + suffix);
          if (t.dtype != DType::F32 || t.shape != shape)
            throw_input(p.path, "tensor '" + t.name + "': " + dtype_name(t.dtype) + " " + shape_str(t.shape) +
                                    ", expected F32 " + shape_str(shape));
        };
        check(m.hessian_diag, "hessian_diag", {m.cols});
        check(m.hessian, "hessian", {m.cols, m.cols});
        check(m.act_fisher, "act_fisher", {m.cols});
        const auto tr = p.traces.find(name);
        if (tr == p.traces.end()) throw_input(p.path, "traces has no entry for '" + name + "'");
        traces[name] = *tr;
        expected += static_cast<std::size_t>(m.fisher) + m.hessian_diag + m.hessian + m.act_fisher;
        source.push_back(pi);
        modules.push_back(m);
      }
    if (p.file->names().size() != expected)
      throw_input(p.path, "holds " + std::to_string(p.file->names().size()) + " tensors, its layers " +
                              std::to_string(p.begin) + ":" + std::to_string(p.end) + " call for " +
                              std::to_string(expected));
    if (p.traces.size() != static_cast<std::size_t>((p.end - p.begin) * 7))
      throw_input(p.path, "traces has " + std::to_string(p.traces.size()) + " entries, its layers call for " +
                              std::to_string((p.end - p.begin) * 7));
  }

  std::map<std::string, std::string> meta = common;
  meta["layers"] = "0:" + std::to_string(num_layers);
  SensitivityFileWriter w(out, modules, meta);
  for (std::size_t k = 0; k < modules.size(); ++k) {
    const Part& p = ps[source[k]];
    for (const char* suffix : {"fisher", "hessian_diag", "hessian", "act_fisher"}) {
      const std::string name = modules[k].name + "." + suffix;
      if (!p.file->has(name)) continue;
      const TensorView& t = p.file->get(name);
      std::size_t n = 0;
      uint8_t* dst = w.tensor_bytes(k, suffix, &n);
      MPQ_ASSERT(n == t.nbytes);
      if (n) std::memcpy(dst, t.data, n);
    }
  }
  w.finish(traces);
}

std::map<std::string, double> read_hutchinson_traces(const TensorStore& sens) {
  std::map<std::string, double> out;
  for (const auto& f : sens.files()) {
    const auto it = f->metadata().find("traces");
    if (it == f->metadata().end()) continue;
    const nlohmann::json j = parse_json_text(it->second, f->path(), "__metadata__.traces");
    const JsonObject traces(j, f->path(), "__metadata__.traces");
    for (const auto& [module, entry] : j.items()) {
      const JsonObject m(entry, f->path(), traces.field(module));
      if (!m.has("hutchinson_trace") || m.get_int("hutchinson_samples", 1) <= 0) continue;
      out[module] = m.get_double("hutchinson_trace");
    }
  }
  return out;
}

const TensorView* find_sensitivity_tensor(const TensorStore& sens, const std::string& name,
                                          const std::vector<int64_t>& shape) {
  if (!sens.has(name)) return nullptr;
  const TensorView& t = sens.get(name);
  if (t.dtype != DType::F32 || t.shape != shape)
    throw_input(t.file, "tensor '" + name + "': " + dtype_name(t.dtype) + " " + shape_str(t.shape) + ", expected F32 " +
                            shape_str(shape));
  return &t;
}

}  // namespace mpq
