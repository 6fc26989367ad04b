#include "lib/bench/bench.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <regex>
#include <set>

#include "kernels/cpu/fgmp_gemv.h"
#include "kernels/cpu/lut_gemv.h"
#include "lib/bench/dense_cpu.h"
#include "lib/common/error.h"
#include "lib/model/llama.h"
#include "lib/numeric/codecs.h"
#include "lib/quant/fgmp.h"
#include "lib/search/search.h"

namespace mpq::bench {
namespace {

constexpr int kMaxBatch = 16;  // the CUDA small-batch kernels' limit (cuda::kMaxGemvBatch)
constexpr int kMaxCopies = 4096;

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string shape_name(const LayerShape& s) {
  return std::to_string(s.rows) + "x" + std::to_string(s.cols);
}

double elapsed_s(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Quantile q of sorted v, linear interpolation between order statistics.
double quantile(const std::vector<double>& v, double q) {
  const double pos = q * static_cast<double>(v.size() - 1);
  const std::size_t i = static_cast<std::size_t>(pos);
  const double f = pos - static_cast<double>(i);
  return i + 1 < v.size() ? v[i] * (1 - f) + v[i + 1] * f : v[i];
}

// A weight in the form one CPU kernel reads, `copies` times in separate memory.
struct CpuWeight {
  std::string kernel;
  std::size_t bytes = 0;
  std::vector<std::vector<uint16_t>> f16;
  std::vector<std::vector<float>> f32;
  std::vector<std::shared_ptr<const CpuLinear>> packed;  // the runtime kernels (lib/model/cpu_linear.h)
  int copies() const {
    return static_cast<int>(!f16.empty() ? f16.size() : !f32.empty() ? f32.size() : packed.size());
  }
};

// Y = X W^T for copy c (batch rows of X).
void cpu_product(const CpuWeight& w, int c, const LayerShape& s, const float* X, int batch,
                 float* Y) {
  const auto cc = static_cast<std::size_t>(c);
  if (!w.f16.empty()) return f16_gemm(w.f16[cc].data(), X, batch, s.rows, s.cols, Y);
  if (!w.f32.empty()) return f32_gemm(w.f32[cc].data(), X, batch, s.rows, s.cols, Y);
  w.packed[cc]->matmul(X, batch, Y, KernelMode::kFast);
}

// Physical memory available now (bytes), or max when unknown.
std::size_t available_memory() {
  const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return SIZE_MAX;
  return static_cast<std::size_t>(pages) * static_cast<std::size_t>(page);
}

CpuWeight prepare_cpu(const FormatSpec& spec, const LayerShape& s, const std::vector<float>& w,
                      const std::vector<float>& fisher, const Options& opt) {
  CpuWeight out;
  const std::size_t n = static_cast<std::size_t>(s.rows * s.cols);
  const std::size_t cap = std::min(opt.max_total_bytes, available_memory() / 2);
  if (spec.format == "f16") {
    std::vector<uint16_t> h(n);
    for (std::size_t i = 0; i < n; ++i) h[i] = fp32_to_fp16(w[i]);
    out.bytes = 2 * n;
    out.f16.assign(static_cast<std::size_t>(rotation_copies(out.bytes, opt.rotate_bytes, cap)), h);
    out.kernel = f16_gemm_has_f16c() ? "f16c" : "scalar";
  } else if (spec.format == "f32") {
    out.bytes = 4 * n;
    out.f32.assign(static_cast<std::size_t>(rotation_copies(out.bytes, opt.rotate_bytes, cap)), w);
    out.kernel = "eigen";
  } else {
    const PackedTensor p = encode_format(spec, w.data(), fisher.data(), s.rows, s.cols);
    out.bytes = p.bytes();
    const int copies = rotation_copies(out.bytes, opt.rotate_bytes, cap);
    for (int c = 0; c < copies; ++c) out.packed.push_back(make_cpu_linear(p));
    out.kernel = out.packed[0]->path(1, KernelMode::kFast);
  }
  return out;
}

}  // namespace

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const auto p = line.find(':');
      if (p != std::string::npos) return line.substr(line.find_first_not_of(' ', p + 1));
    }
  return "cpu";
}

std::vector<LayerShape> default_shapes() {
  return {{4096, 4096, "llama2-7b q/k/v/o"},
          {11008, 4096, "llama2-7b gate/up"},
          {4096, 11008, "llama2-7b down"},
          {14336, 4096, "llama3-8b gate/up"},
          {4096, 14336, "llama3-8b down"}};
}

LayerShape parse_shape(const std::string& text) {
  static const std::regex re("([0-9]{1,7})x([0-9]{1,7})");
  std::smatch m;
  if (std::regex_match(text, m, re)) {
    const int64_t r = std::stoll(m[1]), c = std::stoll(m[2]);
    if (r >= 1 && c >= 1 && r <= (1 << 20) && c <= (1 << 20)) return {r, c, "custom"};
  }
  throw Error(ExitCode::kUsage, "--shapes '" + text + "': expected ROWSxCOLS, each in [1, 1048576]");
}

FormatSpec parse_format(const std::string& label) {
  FormatSpec s;
  s.label = s.format = label;
  if (label == "f16" || label == "f32") return s;
  mpq::FormatSpec c;
  try {
    c = parse_format_label(label);  // the one label grammar (lib/quant/quantizer.h)
  } catch (const Error&) {
  }
  if (!c.info)
    throw Error(ExitCode::kUsage, "--formats: unknown format '" + label + "': expected f16 | f32 | " +
                                      format_label_forms().substr(std::string("source | ").size()));
  s.format = c.format;
  s.params = c.params;
  s.fp8_fraction = c.fgmp.fp8_fraction;
  s.quant = c;
  return s;
}

std::vector<std::string> default_formats(Device device) {
  std::vector<std::string> v{"f16"};
  if (device == Device::kCpu) v.push_back("f32");
  for (int sparse = 0; sparse < 2; ++sparse)
    for (int b = 2; b <= 4; ++b) v.push_back("squeezellm-" + std::to_string(b) + "bit" + (sparse ? "-sparse" : ""));
  for (int b = 2; b <= 4; ++b) v.push_back("uniform-" + std::to_string(b) + "bit");
  for (const char* f : {"fgmp-10", "fgmp-30", "fgmp-50", "fp8", "nvfp4"}) v.push_back(f);
  return v;
}

std::string unsupported_reason(const FormatSpec& spec, Device device) {
  if (device == Device::kCuda && spec.format == "f32") return "no CUDA kernel for dense fp32 weights";
  return "";
}

std::unique_ptr<Quantizer> make_format_quantizer(const FormatSpec& spec) {
  if (spec.format == "f16" || spec.format == "f32") return nullptr;
  return make_quantizer(spec.quant);
}

std::string candidate_label(const std::string& format_label, const std::string& source) {
  if (format_label == "f16" || format_label == "f32") return format_label == source ? "source" : "";
  return format_label;
}

Stats summarize_us(std::vector<double> us) {
  if (us.empty()) throw Error(ExitCode::kUsage, "summarize_us: no timings");
  std::sort(us.begin(), us.end());
  Stats s;
  s.median_us = quantile(us, 0.5);
  s.p25_us = quantile(us, 0.25);
  s.p75_us = quantile(us, 0.75);
  s.min_us = us.front();
  s.max_us = us.back();
  s.reps = static_cast<int>(us.size());
  return s;
}

int rotation_copies(std::size_t bytes, std::size_t rotate_bytes, std::size_t max_total_bytes) {
  const std::size_t b = std::max<std::size_t>(bytes, 1);
  std::size_t n = std::clamp<std::size_t>((rotate_bytes + b - 1) / b, 2, kMaxCopies);
  n = std::min(n, std::max<std::size_t>(max_total_bytes / b, 1));
  return static_cast<int>(n);
}

void random_weight(int64_t rows, int64_t cols, uint64_t seed, std::vector<float>* w,
                   std::vector<float>* fisher) {
  w->resize(static_cast<std::size_t>(rows * cols));
  fisher->resize(w->size());
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    std::mt19937_64 g(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(r));
    std::normal_distribution<float> n(0.0f, 1.0f);
    for (int64_t c = 0; c < cols; ++c) {
      (*w)[static_cast<std::size_t>(r * cols + c)] = 0.02f * n(g);
      const float gr = n(g);
      (*fisher)[static_cast<std::size_t>(r * cols + c)] = gr * gr;
    }
  }
}

PackedTensor encode_format(const FormatSpec& spec, const float* w, const float* fisher, int64_t rows,
                           int64_t cols) {
  const auto q = make_format_quantizer(spec);
  MPQ_ASSERT(q != nullptr);
  return q->encode_weighted("bench." + spec.label, w, fisher, rows, cols);
}

void check_options(const Options& opt) {
  if (opt.reps < 1) throw Error(ExitCode::kUsage, "--reps: expected >= 1");
  if (opt.warmup < 0) throw Error(ExitCode::kUsage, "--warmup: expected >= 0");
  if (opt.batches.empty()) throw Error(ExitCode::kUsage, "--batches: empty");
  for (int b : opt.batches)
    if (b < 1 || b > kMaxBatch)
      throw Error(ExitCode::kUsage, "--batches: " + std::to_string(b) + " outside [1, 16]");
  for (const auto& f : opt.formats) parse_format(f);
  if (opt.e2e && opt.device != Device::kCuda) throw Error(ExitCode::kUsage, "--e2e needs --device cuda");
  if (opt.e2e_layers < 1) throw Error(ExitCode::kUsage, "--e2e-layers: expected >= 1");
}

std::vector<FormatSpec> resolve_formats(const Options& opt, std::vector<Skipped>* skipped) {
  std::vector<std::string> labels{"f16"};
  for (const auto& f : opt.formats.empty() ? default_formats(opt.device) : opt.formats) labels.push_back(f);
  std::vector<FormatSpec> out;
  std::set<std::string> seen;
  for (const auto& l : labels) {
    if (!seen.insert(l).second) continue;
    FormatSpec s = parse_format(l);
    const std::string why = unsupported_reason(s, opt.device);
    if (why.empty()) out.push_back(std::move(s));
    else skipped->push_back({l, why});
  }
  return out;
}

void finalize(Report* r) {
  for (auto& m : r->results) {
    m.gbps = static_cast<double>(m.weight_bytes) / (m.stats.median_us * 1e3);
    m.copy_fraction = r->copy_gbps > 0 ? m.gbps / r->copy_gbps : 0.0;
    m.speedup_vs_f16 = 0;
    for (const auto& b : r->results)
      if (b.format == "f16" && b.batch == m.batch && b.shape.rows == m.shape.rows && b.shape.cols == m.shape.cols)
        m.speedup_vs_f16 = b.stats.median_us / m.stats.median_us;
  }
  const E2eResult* base = nullptr;
  for (const auto& e : r->e2e)
    if (e.format == "f16") base = &e;
  for (auto& e : r->e2e) {
    e.tokens_per_s = 1e6 / e.stats.median_us;
    e.gbps = static_cast<double>(e.weight_bytes) / (e.stats.median_us * 1e3);
    e.speedup_vs_f16 = base ? base->stats.median_us / e.stats.median_us : 0.0;
  }
}

Report run_cpu(const Options& opt0) {
  Options opt = opt0;
  check_options(opt);
  if (opt.shapes.empty()) opt.shapes = default_shapes();
  if (opt.threads > 0) omp_set_num_threads(opt.threads);
  auto progress = [&](const std::string& s) {
    if (opt.progress) opt.progress(s);
  };
  Report rep;
  rep.device_kind = "cpu";
  rep.device_name = cpu_model_name();
  rep.threads = omp_get_max_threads();
  getloadavg(rep.load_average_start, 3);
  const std::vector<FormatSpec> specs = resolve_formats(opt, &rep.skipped);
  for (const auto& s : rep.skipped) progress("skipping " + s.format + ": " + s.reason);

  rep.copy_bytes = opt.rotate_bytes;
  rep.copy_gbps = cpu_copy_bandwidth_gbps(rep.copy_bytes, 5);
  progress("copy bandwidth (" + std::to_string(rep.threads) + " threads, " +
           fmt("%.0f", static_cast<double>(rep.copy_bytes) / 1048576.0) + " MiB, read + write): " +
           fmt("%.2f", rep.copy_gbps) + " GB/s");

  const std::size_t steps = opt.shapes.size() * specs.size();
  std::size_t step = 0;
  const auto t_start = std::chrono::steady_clock::now();
  for (std::size_t si = 0; si < opt.shapes.size(); ++si) {
    const LayerShape& shape = opt.shapes[si];
    std::vector<float> w, fisher;
    random_weight(shape.rows, shape.cols, si + 1, &w, &fisher);
    for (const auto& spec : specs) {
      ++step;
      const std::string tag = "[" + std::to_string(step) + "/" + std::to_string(steps) + "] " +
                              shape_name(shape) + " " + spec.label;
      const auto t0 = std::chrono::steady_clock::now();
      const CpuWeight cw = prepare_cpu(spec, shape, w, fisher, opt);
      progress(tag + ": " + fmt("%.1f", static_cast<double>(cw.bytes) / 1e6) + " MB, " +
               std::to_string(cw.copies()) + " copies, prepared in " + fmt("%.1f", elapsed_s(t0)) + " s");
      for (int batch : opt.batches) {
        std::vector<float> X(static_cast<std::size_t>(batch * shape.cols));
        std::mt19937 g(static_cast<uint32_t>(batch));
        std::uniform_real_distribution<float> u(-1.0f, 1.0f);
        for (float& x : X) x = u(g);
        std::vector<float> Y(static_cast<std::size_t>(batch * shape.rows));
        int c = 0;
        for (int i = 0; i < opt.warmup; ++i, c = (c + 1) % cw.copies())
          cpu_product(cw, c, shape, X.data(), batch, Y.data());
        std::vector<double> us;
        for (int i = 0; i < opt.reps; ++i, c = (c + 1) % cw.copies()) {
          const auto t = std::chrono::steady_clock::now();
          cpu_product(cw, c, shape, X.data(), batch, Y.data());
          us.push_back(elapsed_s(t) * 1e6);
        }
        for (float y : Y)  // a NaN here would mean a kernel read garbage
          if (!std::isfinite(y)) throw Error(ExitCode::kInternal, tag + ": non-finite output");
        Measurement m;
        m.shape = shape;
        m.format = spec.label;
        m.batch = batch;
        m.weight_bytes = cw.bytes;
        m.bpw = 8.0 * static_cast<double>(cw.bytes) / static_cast<double>(shape.rows * shape.cols);
        m.copies = cw.copies();
        m.kernel = cw.kernel;
        m.stats = summarize_us(us);
        rep.results.push_back(m);
        const double el = elapsed_s(t_start);
        progress(tag + " b=" + std::to_string(batch) + ": median " + fmt("%.1f", m.stats.median_us) +
                 " us, " + fmt("%.2f", static_cast<double>(cw.bytes) / (m.stats.median_us * 1e3)) +
                 " GB/s  (elapsed " + fmt("%.0f", el) + " s, ETA " +
                 fmt("%.0f", el / static_cast<double>(step) * static_cast<double>(steps - step)) + " s)");
      }
    }
  }
  getloadavg(rep.load_average_end, 3);
  finalize(&rep);
  return rep;
}

std::string format_table(const Report& r) {
  std::string out;
  char buf[320];
  std::snprintf(buf, sizeof buf, "device: %s (%s", r.device_name.c_str(), r.device_kind.c_str());
  out += buf;
  if (r.device_kind == "cpu") {
    std::snprintf(buf, sizeof buf, ", %d thread%s, load average %.2f at start, %.2f at end", r.threads,
                  r.threads == 1 ? "" : "s", r.load_average_start[0], r.load_average_end[0]);
    out += buf;
  }
  std::snprintf(buf, sizeof buf, ")\ncopy bandwidth (read + write): %.2f GB/s\n\n", r.copy_gbps);
  out += buf;
  std::snprintf(buf, sizeof buf, "%-12s %-24s %5s %11s %23s %9s %7s %8s %7s %7s\n", "shape", "format", "batch",
                "median_us", "p25-p75_us (min-max)", "GB/s", "%copy", "vs_f16", "bpw", "kernel");
  out += buf;
  for (const auto& m : r.results) {
    const std::string spread = fmt("%.1f", m.stats.p25_us) + "-" + fmt("%.1f", m.stats.p75_us) + " (" +
                               fmt("%.0f", m.stats.min_us) + "-" + fmt("%.0f", m.stats.max_us) + ")";
    std::snprintf(buf, sizeof buf, "%-12s %-24s %5d %11.1f %23s %9.2f %7.1f %8.2f %7.3f %7s\n",
                  shape_name(m.shape).c_str(), m.format.c_str(), m.batch, m.stats.median_us, spread.c_str(),
                  m.gbps, 100.0 * m.copy_fraction, m.speedup_vs_f16, m.bpw, m.kernel.c_str());
    out += buf;
  }
  for (const auto& s : r.skipped) out += "skipped " + s.format + ": " + s.reason + "\n";
  if (!r.e2e.empty()) {
    out += "\nend-to-end decode, batch 1: " + r.e2e_scope + "\n";
    std::snprintf(buf, sizeof buf, "%-24s %8s %12s %10s %9s %8s %6s\n", "format", "layers", "us/token", "tokens/s",
                  "GB/s", "vs_f16", "graph");
    out += buf;
    for (const auto& e : r.e2e) {
      std::snprintf(buf, sizeof buf, "%-24s %8d %12.1f %10.1f %9.1f %8.2f %6s\n", e.format.c_str(), e.layers,
                    e.stats.median_us, e.tokens_per_s, e.gbps, e.speedup_vs_f16, e.cuda_graph ? "yes" : "no");
      out += buf;
    }
  }
  return out;
}

namespace {
nlohmann::json stats_json(const Stats& s) {
  return {{"median_us", s.median_us}, {"p25_us", s.p25_us}, {"p75_us", s.p75_us},
          {"min_us", s.min_us},       {"max_us", s.max_us}, {"reps", s.reps}};
}
}  // namespace

nlohmann::json report_json(const Report& r, const Options& opt) {
  nlohmann::json j;
  j["device_kind"] = r.device_kind;
  j["device"] = r.device_name;
  if (r.device_kind == "cpu") {
    j["threads"] = r.threads;
    j["load_average_start"] = {r.load_average_start[0], r.load_average_start[1], r.load_average_start[2]};
    j["load_average_end"] = {r.load_average_end[0], r.load_average_end[1], r.load_average_end[2]};
  }
  j["copy_bandwidth_gbps"] = r.copy_gbps;
  j["copy_bandwidth_bytes"] = r.copy_bytes;
  j["copy_bandwidth_definition"] = "2 * bytes / time (read + write), median";
  j["reps"] = opt.reps;
  j["warmup"] = opt.warmup;
  j["rotate_bytes"] = opt.rotate_bytes;
  nlohmann::json res = nlohmann::json::array();
  for (const auto& m : r.results) {
    nlohmann::json e = stats_json(m.stats);
    e["rows"] = m.shape.rows;
    e["cols"] = m.shape.cols;
    e["model"] = m.shape.model;
    e["format"] = m.format;
    e["batch"] = m.batch;
    e["weight_bytes"] = m.weight_bytes;
    e["bpw"] = m.bpw;
    e["copies"] = m.copies;
    e["kernel"] = m.kernel;
    e["gbps"] = m.gbps;
    e["copy_fraction"] = m.copy_fraction;
    e["speedup_vs_f16"] = m.speedup_vs_f16;
    res.push_back(e);
  }
  j["results"] = res;
  j["skipped"] = nlohmann::json::array();
  for (const auto& s : r.skipped) j["skipped"].push_back({{"format", s.format}, {"reason", s.reason}});
  if (!r.e2e.empty()) {
    j["e2e"]["scope"] = r.e2e_scope;
    for (const auto& e : r.e2e) {
      nlohmann::json x = stats_json(e.stats);
      x["format"] = e.format;
      x["layers"] = e.layers;
      x["weight_bytes"] = e.weight_bytes;
      x["tokens_per_s"] = e.tokens_per_s;
      x["gbps"] = e.gbps;
      x["speedup_vs_f16"] = e.speedup_vs_f16;
      x["cuda_graph"] = e.cuda_graph;
      j["e2e"]["results"].push_back(x);
    }
  }
  return j;
}

nlohmann::json latency_table_json(const Report& r, int batch, const std::string& source) {
  nlohmann::json entries = nlohmann::json::array();
  bool measured = false;
  for (const auto& m : r.results) {
    if (m.batch != batch) continue;
    measured = true;
    const std::string cand = candidate_label(m.format, source);
    if (cand.empty()) continue;
    entries.push_back({{"rows", m.shape.rows}, {"cols", m.shape.cols}, {"candidate", cand}, {"us", m.stats.median_us}});
  }
  if (!measured)
    throw Error(ExitCode::kUsage, "--latency-batch " + std::to_string(batch) + ": that batch was not measured (--batches)");
  std::string device = r.device_name + " (" + r.device_kind;
  if (r.device_kind == "cpu") device += ", " + std::to_string(r.threads) + " threads";
  device += ")";
  return {{"device", device}, {"batch", batch}, {"source", source}, {"entries", entries}};
}

#ifndef MPQ_HAVE_CUDA
Report run_cuda(const Options& opt) {
  check_options(opt);
  throw Error(ExitCode::kInput,
              "--device cuda: this mpq was built without CUDA (configure with -DMPQ_CUDA=ON where nvcc is installed)");
}
#endif

}  // namespace mpq::bench
