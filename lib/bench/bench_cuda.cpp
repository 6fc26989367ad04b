// mpq-bench on CUDA device 0 (kernels/cuda/gemv.h): the per-layer loop of run_cpu with
// DeviceLinear::gemv and CUDA-event timing, and the end-to-end decode of a stack of
// Llama-2-7B-shaped linear layers. Compiled only when MPQ_HAVE_CUDA (bench.cpp throws
// otherwise).
#ifdef MPQ_HAVE_CUDA

#include <cuda_runtime.h>

#include <cstdio>
#include <random>

#include "kernels/cuda/dequant.h"
#include "kernels/cuda/gemv.h"
#include "lib/bench/bench.h"
#include "lib/common/error.h"
#include "lib/numeric/codecs.h"

namespace mpq::bench {
namespace {

// One weight on the device, `copies` times (separate device memory).
std::vector<cuda::DeviceLinear> upload_copies(const FormatSpec& spec, const LayerShape& s,
                                              const std::vector<float>& w,
                                              const std::vector<float>& fisher, const Options& opt) {
  std::vector<cuda::DeviceLinear> out;
  if (spec.format == "f16") {
    std::vector<uint16_t> h(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) h[i] = fp32_to_fp16(w[i]);
    const int copies = rotation_copies(2 * h.size(), opt.rotate_bytes, opt.max_total_bytes);
    for (int c = 0; c < copies; ++c) out.push_back(cuda::DeviceLinear::upload_f16(h.data(), s.rows, s.cols));
  } else {
    const PackedTensor p = encode_format(spec, w.data(), fisher.data(), s.rows, s.cols);
    const int copies = rotation_copies(p.bytes(), opt.rotate_bytes, opt.max_total_bytes);
    for (int c = 0; c < copies; ++c) out.push_back(cuda::DeviceLinear::upload(p));
  }
  return out;
}

cuda::DeviceBuffer random_device_floats(int64_t n, uint32_t seed) {
  std::vector<float> h(static_cast<std::size_t>(n));
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (float& x : h) x = u(g);
  cuda::DeviceBuffer d(h.size() * sizeof(float));
  d.upload(h.data(), h.size() * sizeof(float));
  return d;
}

// Llama-2-7B's seven linears per layer, in decode order: q, k, v, o, gate, up, down.
const LayerShape kLlama2Linears[7] = {{4096, 4096, "q"},     {4096, 4096, "k"},  {4096, 4096, "v"},
                                      {4096, 4096, "o"},     {11008, 4096, "gate"},
                                      {11008, 4096, "up"},   {4096, 11008, "down"}};

// One decode token through `layers` layers of linears (batch 1): q, k, v from h; o from v
// (standing in for attention's output); gate, up from o; down from up (standing in for
// SiLU(gate) * up); down's output is the next layer's h. No norms, RoPE, attention,
// residuals, embedding or LM head.
E2eResult run_e2e_format(const FormatSpec& spec, const Options& opt,
                         const std::vector<std::vector<float>>& w,
                         const std::vector<std::vector<float>>& fisher) {
  // One encoded tensor per distinct shape (q/k/v/o, gate/up, down), uploaded once per
  // linear of every layer: separate device memory, so each token reads all the weights.
  std::vector<cuda::DeviceLinear> lin;
  E2eResult res;
  res.format = spec.label;
  res.layers = opt.e2e_layers;
  const int shape_of[7] = {0, 0, 0, 0, 1, 1, 2};
  std::vector<PackedTensor> packed(3);
  std::vector<std::vector<uint16_t>> h16(3);
  for (int s = 0; s < 3; ++s) {
    const LayerShape& sh = kLlama2Linears[s == 0 ? 0 : s == 1 ? 4 : 6];
    if (spec.format == "f16") {
      h16[s].resize(w[s].size());
      for (std::size_t i = 0; i < w[s].size(); ++i) h16[s][i] = fp32_to_fp16(w[s][i]);
    } else {
      packed[s] = encode_format(spec, w[s].data(), fisher[s].data(), sh.rows, sh.cols);
    }
  }
  for (int l = 0; l < opt.e2e_layers; ++l)
    for (int i = 0; i < 7; ++i) {
      const int s = shape_of[i];
      const LayerShape& sh = kLlama2Linears[i];
      lin.push_back(spec.format == "f16" ? cuda::DeviceLinear::upload_f16(h16[s].data(), sh.rows, sh.cols)
                                         : cuda::DeviceLinear::upload(packed[s]));
      res.weight_bytes += lin.back().weight_bytes();
    }
  cuda::DeviceBuffer h = random_device_floats(4096, 7), q(4096 * 4), k(4096 * 4), v(4096 * 4), a(4096 * 4),
                     g(11008 * 4), u(11008 * 4);
  const float* hp = static_cast<const float*>(h.data());
  float* out[7] = {static_cast<float*>(q.data()), static_cast<float*>(k.data()), static_cast<float*>(v.data()),
                   static_cast<float*>(a.data()), static_cast<float*>(g.data()), static_cast<float*>(u.data()),
                   static_cast<float*>(h.data())};
  const float* in[7] = {hp, hp, hp, out[2], out[3], out[3], out[5]};
  auto token = [&]() {
    for (int l = 0; l < opt.e2e_layers; ++l)
      for (int i = 0; i < 7; ++i) lin[static_cast<std::size_t>(l * 7 + i)].gemv(in[i], 1, out[i]);
  };
  token();  // eager warm-up: any lazy initialization (cuBLAS handles, workspaces) happens here
  cuda::synchronize();

  // Try to capture one token as a CUDA Graph on the per-thread default stream. This works
  // only when the kernels' "default stream" is that stream (gemv.cu built with
  // --default-stream per-thread); launches on the legacy default stream cannot be captured,
  // and then the token is timed eagerly (launch gaps included).
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  if (cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeGlobal) == cudaSuccess) {
    bool ok = true;
    try {
      token();
    } catch (const Error&) {
      ok = false;
    }
    const cudaError_t end = cudaStreamEndCapture(cudaStreamPerThread, &graph);
    std::size_t nodes = 0;
    ok = ok && end == cudaSuccess && graph && cudaGraphGetNodes(graph, nullptr, &nodes) == cudaSuccess &&
         nodes >= static_cast<std::size_t>(7 * opt.e2e_layers) &&
         cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
    if (!ok && exec) cudaGraphExecDestroy(exec), exec = nullptr;
  }
  if (graph) cudaGraphDestroy(graph);
  cudaGetLastError();  // clear a failed capture's error; the eager path below re-checks everything
  res.cuda_graph = exec != nullptr;
  std::vector<double> us;
  if (exec) {
    us = cuda::time_device_us(
        [&]() {
          if (cudaGraphLaunch(exec, cudaStreamPerThread) != cudaSuccess)
            throw Error(ExitCode::kInternal, "cudaGraphLaunch failed in mpq-bench --e2e");
        },
        opt.warmup, opt.reps);
    cudaGraphExecDestroy(exec);
  } else {
    us = cuda::time_device_us(token, opt.warmup, opt.reps);
  }
  res.stats = summarize_us(us);
  return res;
}

}  // namespace

Report run_cuda(const Options& opt0) {
  Options opt = opt0;
  check_options(opt);
  if (cuda::device_count() == 0)
    throw Error(ExitCode::kInput, "--device cuda: no CUDA device visible (driver missing or no GPU)");
  if (opt.shapes.empty()) opt.shapes = default_shapes();
  auto progress = [&](const std::string& s) {
    if (opt.progress) opt.progress(s);
  };
  Report rep;
  rep.device_kind = "cuda";
  rep.device_name = cuda::device_name();
  const std::vector<FormatSpec> specs = resolve_formats(opt, &rep.skipped);
  for (const auto& s : rep.skipped) progress("skipping " + s.format + ": " + s.reason);
  rep.copy_bytes = opt.rotate_bytes;
  rep.copy_gbps = cuda::device_copy_bandwidth_gbps(rep.copy_bytes, 10);
  progress("device copy bandwidth (read + write): " + std::to_string(rep.copy_gbps) + " GB/s");

  std::size_t step = 0;
  const std::size_t steps = opt.shapes.size() * specs.size();
  for (std::size_t si = 0; si < opt.shapes.size(); ++si) {
    const LayerShape& shape = opt.shapes[si];
    std::vector<float> w, fisher;
    random_weight(shape.rows, shape.cols, si + 1, &w, &fisher);
    for (const auto& spec : specs) {
      ++step;
      const std::string tag = "[" + std::to_string(step) + "/" + std::to_string(steps) + "] " +
                              std::to_string(shape.rows) + "x" + std::to_string(shape.cols) + " " + spec.label;
      const std::vector<cuda::DeviceLinear> lin = upload_copies(spec, shape, w, fisher, opt);
      progress(tag + ": " + std::to_string(lin.size()) + " copies of " + std::to_string(lin[0].weight_bytes()) +
               " bytes on the device");
      for (int batch : opt.batches) {
        cuda::DeviceBuffer x = random_device_floats(batch * shape.cols, static_cast<uint32_t>(batch));
        cuda::DeviceBuffer y(static_cast<std::size_t>(batch * shape.rows) * sizeof(float));
        std::size_t c = 0;
        const std::vector<double> us = cuda::time_device_us(
            [&]() {
              lin[c].gemv(static_cast<const float*>(x.data()), batch, static_cast<float*>(y.data()));
              c = (c + 1) % lin.size();
            },
            opt.warmup, opt.reps);
        Measurement m;
        m.shape = shape;
        m.format = spec.label;
        m.batch = batch;
        m.weight_bytes = lin[0].weight_bytes();
        m.bpw = 8.0 * static_cast<double>(m.weight_bytes) / static_cast<double>(shape.rows * shape.cols);
        m.copies = static_cast<int>(lin.size());
        m.kernel = spec.format == "f16" ? "cublas" : "cuda";
        m.stats = summarize_us(us);
        rep.results.push_back(m);
        char buf[64];
        std::snprintf(buf, sizeof buf, ": median %.2f us", m.stats.median_us);
        progress(tag + " b=" + std::to_string(batch) + buf);
      }
    }
  }

  if (opt.e2e) {
    rep.e2e_scope = "the 7 linear layers (q, k, v, o, gate, up, down) of " + std::to_string(opt.e2e_layers) +
                    " Llama-2-7B-shaped layers chained per token, batch 1; no attention, norms, RoPE, "
                    "residuals, embedding or LM head";
    std::vector<std::vector<float>> w(3), fisher(3);
    const LayerShape distinct[3] = {{4096, 4096, ""}, {11008, 4096, ""}, {4096, 11008, ""}};
    for (int s = 0; s < 3; ++s) random_weight(distinct[s].rows, distinct[s].cols, 100 + s, &w[s], &fisher[s]);
    for (const auto& spec : specs) {
      progress("e2e " + spec.label + ": encoding and uploading " + std::to_string(7 * opt.e2e_layers) + " linears");
      rep.e2e.push_back(run_e2e_format(spec, opt, w, fisher));
      char buf[96];
      std::snprintf(buf, sizeof buf, ": %.1f us/token (CUDA Graph: %s)", rep.e2e.back().stats.median_us,
                    rep.e2e.back().cuda_graph ? "yes" : "no");
      progress("e2e " + spec.label + buf);
    }
  }
  finalize(&rep);
  return rep;
}

}  // namespace mpq::bench

#endif  // MPQ_HAVE_CUDA
