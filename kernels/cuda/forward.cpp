// CudaLlamaModel (kernels/cuda/forward.h): upload of a loaded LlamaModel and the per-window
// forward pass as a sequence of device steps (kernels/cuda/forward_kernels.h), DeviceLinear
// GEMVs and cuBLAS SGEMMs, all on the default stream. Compiled by g++ (Eigen), linked into
// mpq_cuda.
#include "kernels/cuda/forward.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <mutex>
#include <optional>
#include <vector>

#include "formats/packed_checkpoint.h"
#include "formats/safetensors.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/forward_kernels.h"
#include "kernels/cuda/gemv.h"
#include "lib/common/error.h"

namespace mpq::cuda {
namespace {

DeviceBuffer to_device(const float* host, int64_t n) {
  DeviceBuffer d(static_cast<std::size_t>(n) * sizeof(float));
  d.upload(host, d.bytes());
  return d;
}

// fp32 scratch of n floats.
DeviceBuffer scratch(int64_t n) { return DeviceBuffer(static_cast<std::size_t>(n) * sizeof(float)); }

float* f32(const DeviceBuffer& b) { return static_cast<float*>(b.data()); }

// One linear y = x W^T + b on the device: packed (DeviceLinear) or dense fp32 w [rows, cols].
struct CudaLinear {
  std::optional<DeviceLinear> packed;
  DeviceBuffer w;  ///< fp32 [rows, cols] when not packed
  DeviceBuffer b;  ///< fp32 [rows], or empty
  int64_t rows = 0, cols = 0;
};

struct CudaLayer {
  DeviceBuffer input_norm, post_attn_norm;  ///< [H]
  std::array<CudaLinear, 7> linear;         ///< indexed like kLinearNames
};

void check_int_dim(int64_t v, const std::string& dir, const std::string& what) {
  if (v < 0 || v > INT_MAX) throw_input(dir, what + " " + std::to_string(v) + " exceeds cuBLAS's int range");
}

// Y [T, rows] = X [T, cols] W^T, W fp32 row-major [rows, cols]. In cuBLAS's column-major
// view W is [cols, rows] (ld cols), X is [cols, T] (ld cols), Y is [rows, T] (ld rows), so
// Y = op(W)^T-as-stored * X with op = transpose.
void sgemm_xwt(cublasHandle_t blas, const float* x, int64_t T, const float* w, int64_t rows, int64_t cols, float* y) {
  const float one = 1.0f, zero = 0.0f;
  MPQ_CUBLAS_CHECK(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(rows), static_cast<int>(T),
                               static_cast<int>(cols), &one, w, static_cast<int>(cols), x, static_cast<int>(cols),
                               &zero, y, static_cast<int>(rows)));
}

}  // namespace

struct CudaLlamaModel::Impl {
  LlamaConfig config;
  std::vector<double> inv_freq;  ///< [head_dim / 2], rope_inv_freq()
  DeviceBuffer embed;            ///< [V, H]
  DeviceBuffer lm_head;          ///< [V, H]; empty when tied to embed
  DeviceBuffer final_norm;       ///< [H]
  std::vector<CudaLayer> layers;
  cublasHandle_t blas = nullptr;
  int64_t max_tokens = 0;
  mutable std::mutex mu;  ///< serializes forward()

  ~Impl() {
    if (blas) cublasDestroy(blas);  // no throw from a destructor
  }

  // y [T, l.rows] = x [T, l.cols] W^T + b.
  void linear(const CudaLinear& l, const float* x, int64_t T, float* y) const {
    if (l.packed) {
      for (int64_t t0 = 0; t0 < T; t0 += kMaxGemvBatch)
        l.packed->gemv(x + t0 * l.cols, std::min<int64_t>(kMaxGemvBatch, T - t0), y + t0 * l.rows);
    } else {
      sgemm_xwt(blas, x, T, f32(l.w), l.rows, l.cols, y);
    }
    if (l.b.data()) add_bias(y, f32(l.b), T, l.rows);
  }
};

CudaLlamaModel::CudaLlamaModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaLlamaModel::CudaLlamaModel(CudaLlamaModel&&) noexcept = default;
CudaLlamaModel& CudaLlamaModel::operator=(CudaLlamaModel&&) noexcept = default;
CudaLlamaModel::~CudaLlamaModel() = default;

const LlamaConfig& CudaLlamaModel::config() const { return impl_->config; }
int64_t CudaLlamaModel::max_tokens() const { return impl_->max_tokens; }

CudaLlamaModel CudaLlamaModel::load(const std::string& dir) { return upload(LlamaModel::load(dir), dir); }

CudaLlamaModel CudaLlamaModel::upload(const LlamaModel& model, const std::string& dir) {
  auto m = std::make_unique<Impl>();
  const LlamaConfig& c = model.config();
  const LlamaWeights& w = model.weights();
  m->config = c;
  m->inv_freq = rope_inv_freq(c);
  check_int_dim(c.vocab_size, dir, "vocab_size");
  check_int_dim(c.hidden_size, dir, "hidden_size");
  MPQ_CUBLAS_CHECK(cublasCreate(&m->blas));
  MPQ_CUBLAS_CHECK(cublasSetMathMode(m->blas, CUBLAS_PEDANTIC_MATH));
  m->max_tokens = max_attention_tokens();

  m->embed = to_device(w.embed.data(), w.embed.size());
  if (!c.tie_word_embeddings) m->lm_head = to_device(w.lm_head.data(), w.lm_head.size());
  m->final_norm = to_device(w.final_norm.data(), w.final_norm.size());
  std::optional<TensorStore> store;  // opened on the first fp8 / nvfp4 linear
  m->layers.resize(w.layers.size());
  for (std::size_t l = 0; l < w.layers.size(); ++l) {
    const LlamaLayer& L = w.layers[l];
    CudaLayer& D = m->layers[l];
    D.input_norm = to_device(L.input_norm.data(), L.input_norm.size());
    D.post_attn_norm = to_device(L.post_attn_norm.data(), L.post_attn_norm.size());
    for (std::size_t i = 0; i < 7; ++i) {
      const Linear& lin = L.linear[i];
      CudaLinear& d = D.linear[i];
      const std::string name = "model.layers." + std::to_string(l) + "." + kLinearNames[i];
      d.rows = lin.rows;
      d.cols = lin.cols;
      check_int_dim(lin.rows, dir, "module '" + name + "': rows");
      check_int_dim(lin.cols, dir, "module '" + name + "': cols");
      try {
        if (lin.packed) {
          d.packed.emplace(DeviceLinear::upload(lin.packed->tensor));
        } else if (lin.format == "fp8" || lin.format == "nvfp4") {
          if (!store) store.emplace(TensorStore::open(dir));
          d.packed.emplace(DeviceLinear::upload(read_packed(*store, name, lin.format, lin.rows, lin.cols)));
        } else {
          MPQ_ASSERT(lin.w.rows() == lin.rows && lin.w.cols() == lin.cols);
          d.w = to_device(lin.w.data(), lin.w.size());
        }
      } catch (const Error& e) {
        if (e.code() != ExitCode::kInput) throw;
        throw_input(dir, "module '" + name + "': " + e.what());
      }
      if (lin.b.size()) d.b = to_device(lin.b.data(), lin.b.size());
    }
  }
  return CudaLlamaModel(std::move(m));
}

MatrixRM CudaLlamaModel::forward(const int32_t* tokens, int64_t T) const {
  const Impl& m = *impl_;
  const LlamaConfig& c = m.config;
  if (T < 1 || T > m.max_tokens)
    throw Error(ExitCode::kUsage, "CUDA forward: window of " + std::to_string(T) + " tokens outside [1, " +
                                      std::to_string(m.max_tokens) +
                                      "] (the attention kernel keeps a window's scores in shared memory)");
  for (int64_t t = 0; t < T; ++t)
    if (tokens[t] < 0 || tokens[t] >= c.vocab_size)
      throw Error(ExitCode::kInput, "token id " + std::to_string(tokens[t]) + " at position " + std::to_string(t) +
                                        " outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
  const int64_t H = c.hidden_size, d = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads,
                I = c.intermediate_size, V = c.vocab_size, half = d / 2;
  // cos / sin tables [T, d/2]: angles in float64, rounded to fp32 (as LlamaModel::forward).
  std::vector<float> cos_t(static_cast<std::size_t>(T * half)), sin_t(cos_t.size());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double a = static_cast<double>(t) * m.inv_freq[static_cast<std::size_t>(i)];
      cos_t[static_cast<std::size_t>(t * half + i)] = static_cast<float>(std::cos(a));
      sin_t[static_cast<std::size_t>(t * half + i)] = static_cast<float>(std::sin(a));
    }
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  const int64_t window = c.sliding_window > 0 ? c.sliding_window : T;

  std::lock_guard<std::mutex> lock(m.mu);
  DeviceBuffer ids(static_cast<std::size_t>(T) * sizeof(int32_t));
  ids.upload(tokens, ids.bytes());
  const DeviceBuffer cos_d = to_device(cos_t.data(), T * half), sin_d = to_device(sin_t.data(), T * half);
  DeviceBuffer h = scratch(T * H), n = scratch(T * H), tmp = scratch(T * H);
  DeviceBuffer q = scratch(T * nh * d), k = scratch(T * nkv * d), v = scratch(T * nkv * d), attn = scratch(T * nh * d);
  DeviceBuffer gate = scratch(T * I), up = scratch(T * I), logits = scratch(T * V);

  embed_gather(static_cast<const int32_t*>(ids.data()), T, f32(m.embed), H, f32(h));
  for (const CudaLayer& L : m.layers) {
    rms_norm(f32(h), f32(L.input_norm), T, H, c.rms_norm_eps, f32(n));
    m.linear(L.linear[0], f32(n), T, f32(q));
    m.linear(L.linear[1], f32(n), T, f32(k));
    m.linear(L.linear[2], f32(n), T, f32(v));
    rope_rotate_half(f32(q), f32(cos_d), f32(sin_d), T, nh, d);
    rope_rotate_half(f32(k), f32(cos_d), f32(sin_d), T, nkv, d);
    causal_attention(f32(q), f32(k), f32(v), T, nh, nkv, d, window, scale, f32(attn));
    m.linear(L.linear[3], f32(attn), T, f32(tmp));
    add_inplace(f32(h), f32(tmp), T * H);

    rms_norm(f32(h), f32(L.post_attn_norm), T, H, c.rms_norm_eps, f32(n));
    m.linear(L.linear[4], f32(n), T, f32(gate));
    m.linear(L.linear[5], f32(n), T, f32(up));
    silu_mul(f32(gate), f32(up), T * I);
    m.linear(L.linear[6], f32(gate), T, f32(tmp));
    add_inplace(f32(h), f32(tmp), T * H);
  }
  rms_norm(f32(h), f32(m.final_norm), T, H, c.rms_norm_eps, f32(n));
  sgemm_xwt(m.blas, f32(n), T, f32(c.tie_word_embeddings ? m.embed : m.lm_head), V, H, f32(logits));
  MatrixRM out(T, V);
  logits.download(out.data(), logits.bytes());  // cudaMemcpy waits for the stream's work
  MPQ_CUDA_CHECK(cudaGetLastError());           // and any asynchronous kernel fault
  return out;
}

}  // namespace mpq::cuda
