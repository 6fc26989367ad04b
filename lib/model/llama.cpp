#include "lib/model/llama.h"

#include <omp.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>

#include "formats/packed_checkpoint.h"
#include "formats/safetensors.h"
#include "lib/common/error.h"
#include "lib/quant/fgmp.h"
#include "lib/quant/squeezellm.h"

namespace mpq {
namespace {

Eigen::VectorXf load_vector(const TensorStore& store, const std::string& name, int64_t n) {
  const TensorView& t = store.get(name);
  if (t.shape != std::vector<int64_t>{n})
    throw_input(t.file, "tensor '" + name + "': shape " + shape_str(t.shape) +
                            " disagrees with config.json " + shape_str({n}));
  const std::vector<float> v = to_f32(t);
  return Eigen::Map<const Eigen::VectorXf>(v.data(), n);
}

MatrixRM load_matrix(const TensorStore& store, const std::string& name, int64_t rows,
                     int64_t cols) {
  const TensorView& t = store.get(name);
  if (t.shape != std::vector<int64_t>{rows, cols})
    throw_input(t.file, "tensor '" + name + "': shape " + shape_str(t.shape) +
                            " disagrees with config.json " + shape_str({rows, cols}));
  const std::vector<float> v = to_f32(t);
  return Eigen::Map<const MatrixRM>(v.data(), rows, cols);
}

// Element-wise work on more values than this runs on all threads (when not nested in a
// caller's parallel region, e.g. mpq-eval's parallel windows of small models).
constexpr int64_t kParallelElementwise = int64_t{1} << 16;

inline bool par_elementwise(int64_t n) { return n >= kParallelElementwise && !omp_in_parallel(); }

// RMSNorm of every row of x: x / sqrt(mean(x^2) + eps) * g.
MatrixRM rms_norm(const MatrixRM& x, const Eigen::VectorXf& g, double eps) {
  MatrixRM y(x.rows(), x.cols());
#pragma omp parallel for schedule(static) if (par_elementwise(x.size()))
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    const double ms = x.row(t).cast<double>().squaredNorm() / static_cast<double>(x.cols());
    const float inv = static_cast<float>(1.0 / std::sqrt(ms + eps));
    y.row(t) = (x.row(t) * inv).cwiseProduct(g.transpose());
  }
  return y;
}

// Reads "<name>.input_act_fisher" F32 [cols] and "<name>.input_fgmp_threshold" F32 []
// (FGMP activation calibration) into l when the checkpoint has them; both or neither.
void load_act_calibration(const TensorStore& store, const std::string& name, Linear& l) {
  const std::string fn = name + ".input_act_fisher", tn = name + ".input_fgmp_threshold";
  if (!store.has(fn) && !store.has(tn)) return;
  const TensorView& f = store.get(fn);  // throws "missing tensor" when only one is there
  const TensorView& t = store.get(tn);
  if (f.dtype != DType::F32 || f.shape != std::vector<int64_t>{l.cols})
    throw_input(f.file, "tensor '" + fn + "': " + dtype_name(f.dtype) + " " + shape_str(f.shape) + ", expected F32 " +
                            shape_str({l.cols}));
  if (t.dtype != DType::F32 || t.numel() != 1 || t.shape.size() > 1)
    throw_input(t.file, "tensor '" + tn + "': " + dtype_name(t.dtype) + " " + shape_str(t.shape) +
                            ", expected F32 [] (or [1])");
  l.input_act_fisher = to_f32(f);
  for (std::size_t c = 0; c < l.input_act_fisher.size(); ++c)
    if (!std::isfinite(l.input_act_fisher[c]) || l.input_act_fisher[c] < 0.0f)
      throw_input(f.file, "tensor '" + fn + "': value " + std::to_string(l.input_act_fisher[c]) + " at [" +
                              std::to_string(c) + "], expected finite and >= 0");
  l.input_fgmp_threshold = to_f32(t)[0];
  if (std::isnan(l.input_fgmp_threshold)) throw_input(t.file, "tensor '" + tn + "': NaN");
}

// y = x W^T + b: the runtime kernel (cpu_kernels loads), Eigen (BLAS) on the fp32 w, or the
// LUT / FGMP kernel straight from the packed form. x is row-major [T, cols], so it is
// lut_gemm's X as is. With an activation mode, x is fake-quantized first (a copy) and its
// blocks added to `counts`.
MatrixRM apply_linear(const MatrixRM& x_in, const Linear& l, ActQuantMode act_mode, KernelMode mode,
                      ActBlockCounts& counts) {
  // kDeclared: this linear's declared scheme. The checkpoint's static input scale is used
  // when the mode is the one it was calibrated for (and is not per-token dynamic).
  const ActQuantMode act = act_mode == ActQuantMode::kDeclared ? l.declared_act : act_mode;
  const bool use_static = act == l.declared_act && act != ActQuantMode::kFgmp && !l.input_dynamic;
  MatrixRM xq;
  if (act != ActQuantMode::kNone) {
    xq = x_in;
    counts += quantize_activations(xq.data(), xq.rows(), xq.cols(), act, l.input_act_fisher.data(),
                                   l.input_fgmp_threshold,
                                   use_static ? l.input_scale : std::numeric_limits<float>::quiet_NaN());
  }
  const MatrixRM& x = act != ActQuantMode::kNone ? xq : x_in;
  MatrixRM y;
  if (l.kernel) {
    MPQ_ASSERT(x.cols() == l.cols);
    y.resize(x.rows(), l.rows);
    l.kernel->matmul(x.data(), x.rows(), y.data(), mode);
  } else if (l.packed) {
    MPQ_ASSERT(x.cols() == l.cols);
    y.resize(x.rows(), l.rows);
    if (l.packed->is_fgmp())
      fgmp_gemm(l.packed->fgmp, x.data(), x.rows(), y.data());
    else
      lut_gemm(l.packed->view, x.data(), x.rows(), y.data());
  } else {
    y.resize(x.rows(), l.w.rows());
    y.noalias() = x * l.w.transpose();
  }
  if (l.b.size()) y.rowwise() += l.b.transpose();
  return y;
}

// The bias of `name` when the config has one (load_vector), else empty.
bool has_bias(const LlamaConfig& c, int i) { return (i < 3 && c.qkv_bias) || (i == 3 && c.o_bias); }

// A dense [rows, cols] tensor in place as a CpuLinear, its shape checked against the config.
std::shared_ptr<const CpuLinear> dense_kernel(const std::shared_ptr<const TensorStore>& store, const std::string& name,
                                              int64_t rows, int64_t cols, bool copy) {
  const TensorView& t = store->get(name);
  if (t.shape != std::vector<int64_t>{rows, cols})
    throw_input(t.file, "tensor '" + name + "': shape " + shape_str(t.shape) + " disagrees with config.json " +
                            shape_str({rows, cols}));
  return make_dense_cpu_linear(t, store, copy);
}

// Rotate-half RoPE on every head of x [T, n_heads * d], in place.
void apply_rope(MatrixRM& x, int64_t n_heads, int64_t d, const std::vector<float>& cos_t,
                const std::vector<float>& sin_t) {
  const int64_t half = d / 2;
#pragma omp parallel for schedule(static) if (par_elementwise(x.size()))
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    const float* c = &cos_t[static_cast<std::size_t>(t * half)];
    const float* s = &sin_t[static_cast<std::size_t>(t * half)];
    float* row = x.row(t).data();
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = row + h * d;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
  }
}

}  // namespace

int window_threads(int64_t params) {
  constexpr int64_t kWindowParallelMaxParams = int64_t{64} << 20;
  return params <= kWindowParallelMaxParams ? omp_get_max_threads() : 1;
}

std::array<int64_t, 2> linear_shape(const LlamaConfig& c, int index) {
  const int64_t H = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim,
                I = c.intermediate_size;
  switch (index) {
    case 0: return {q, H};
    case 1: return {kv, H};
    case 2: return {kv, H};
    case 3: return {H, q};
    case 4: return {I, H};
    case 5: return {I, H};
    case 6: return {H, I};
    default: MPQ_ASSERT(false && "linear index out of range");
  }
  return {0, 0};
}

std::vector<std::pair<std::string, std::vector<int64_t>>> llama_tensor_shapes(const LlamaConfig& c) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> t;
  const int64_t H = c.hidden_size;
  t.push_back({"model.embed_tokens.weight", {c.vocab_size, H}});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.push_back({p + "input_layernorm.weight", {H}});
    t.push_back({p + "post_attention_layernorm.weight", {H}});
    for (int i = 0; i < 7; ++i) {
      const auto [rows, cols] = linear_shape(c, i);
      t.push_back({p + kLinearNames[i] + ".weight", {rows, cols}});
      if ((i < 3 && c.qkv_bias) || (i == 3 && c.o_bias)) t.push_back({p + kLinearNames[i] + ".bias", {rows}});
    }
  }
  t.push_back({"model.norm.weight", {H}});
  if (!c.tie_word_embeddings) t.push_back({"lm_head.weight", {c.vocab_size, H}});
  return t;
}

LlamaConfig llama_config(int64_t hidden, int64_t intermediate, int64_t layers, int64_t heads, int64_t kv_heads,
                         int64_t vocab) {
  LlamaConfig c;
  c.architecture = "LlamaForCausalLM";
  c.hidden_size = hidden;
  c.intermediate_size = intermediate;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.vocab_size = vocab;
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-5;
  return c;
}

LlamaWeights random_llama_weights(const LlamaConfig& c, uint64_t seed, float std) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, std);
  auto matrix = [&](int64_t r, int64_t k) {
    MatrixRM m(r, k);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
    return m;
  };
  LlamaWeights w;
  w.embed = matrix(c.vocab_size, c.hidden_size);
  w.layers.resize(static_cast<std::size_t>(c.num_layers));
  for (auto& L : w.layers) {
    L.input_norm = Eigen::VectorXf::Ones(c.hidden_size);
    L.post_attn_norm = Eigen::VectorXf::Ones(c.hidden_size);
    for (int i = 0; i < 7; ++i) {
      const auto [rows, cols] = linear_shape(c, i);
      L.linear[static_cast<std::size_t>(i)].w = matrix(rows, cols);
      L.linear[static_cast<std::size_t>(i)].rows = rows;
      L.linear[static_cast<std::size_t>(i)].cols = cols;
      L.linear[static_cast<std::size_t>(i)].stored_bytes = static_cast<std::size_t>(rows * cols * 4);
      if ((i < 3 && c.qkv_bias) || (i == 3 && c.o_bias)) L.linear[static_cast<std::size_t>(i)].b = Eigen::VectorXf::Zero(rows);
    }
  }
  w.final_norm = Eigen::VectorXf::Ones(c.hidden_size);
  if (!c.tie_word_embeddings) w.lm_head = matrix(c.vocab_size, c.hidden_size);
  return w;
}

std::vector<double> rope_inv_freq(const LlamaConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<double> f(static_cast<std::size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    f[i] = 1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / static_cast<double>(c.head_dim));
  const RopeScaling& r = c.rope_scaling;
  if (r.type == RopeScaling::Type::kLinear) {
    for (double& v : f) v /= r.factor;
  } else if (r.type == RopeScaling::Type::kLlama3) {
    const double old_len = static_cast<double>(r.original_max_position_embeddings);
    const double low_wavelen = old_len / r.low_freq_factor;
    const double high_wavelen = old_len / r.high_freq_factor;
    for (double& v : f) {
      const double wavelen = 2.0 * M_PI / v;
      if (wavelen > low_wavelen) {
        v /= r.factor;  // low frequencies: fully scaled
      } else if (wavelen >= high_wavelen) {
        const double smooth =
            (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
        v = (1.0 - smooth) * v / r.factor + smooth * v;
      }  // high frequencies: unchanged
    }
  }
  return f;
}

PackedLinear::PackedLinear(PackedTensor t) : tensor(std::move(t)) {
  if (is_fgmp()) {
    fgmp = fgmp_weight_view(tensor);
    fgmp_check_layout(fgmp, "fgmp tensor [" + std::to_string(tensor.rows) + " x " + std::to_string(tensor.cols) + "]");
  } else {
    view = squeezellm_weight_view(tensor);
  }
}

std::shared_ptr<const PackedLinear> make_packed_linear(PackedTensor t) {
  return std::make_shared<const PackedLinear>(std::move(t));
}

LlamaModel::LlamaModel(LlamaConfig config, LlamaWeights weights)
    : config_(std::move(config)), weights_(std::move(weights)), inv_freq_(rope_inv_freq(config_)) {
  MPQ_ASSERT(static_cast<int64_t>(weights_.layers.size()) == config_.num_layers);
  // Weights built by hand (tests, random models) may leave the logical shape unset.
  for (auto& L : weights_.layers)
    for (Linear& lin : L.linear)
      if (!lin.packed && lin.rows == 0 && lin.cols == 0) {
        lin.rows = lin.w.rows();
        lin.cols = lin.w.cols();
      }
}

LlamaModel LlamaModel::load(const std::string& dir, const LoadOptions& opt) {
  LlamaConfig c = load_llama_config(dir);
  const auto store = std::make_shared<const TensorStore>(TensorStore::open(dir));
  check_config_against_tensors(c, *store);  // before anything is allocated by the config's sizes
  const bool kernels = opt.cpu_kernels && !opt.expand_packed;
  const int64_t H = c.hidden_size, V = c.vocab_size;
  LlamaWeights w;
  const auto is_dense = [](const std::string& fmt) { return fmt == "f32" || fmt == "f16" || fmt == "bf16"; };
  // A packed module's kernel-construction error, naming the file of its main part.
  const auto module_error = [&](const std::string& name, const std::string& fmt, const Error& e) {
    const std::string part = name + (fmt == "fgmp" ? ".weight_block_map" : fmt == "squeezellm" ? ".qweight" : ".weight");
    throw_input(store->get(part).file, "module '" + name + "': " + e.what());
  };
  // The embedding is read a row per token: in place, unless it is also the (tied) head.
  if (kernels)
    w.embed_kernel = dense_kernel(store, "model.embed_tokens.weight", V, H, opt.copy_dense && c.tie_word_embeddings);
  else
    w.embed = load_matrix(*store, "model.embed_tokens.weight", V, H);
  w.layers.resize(static_cast<std::size_t>(c.num_layers));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LlamaLayer& L = w.layers[static_cast<std::size_t>(l)];
    L.input_norm = load_vector(*store, p + "input_layernorm.weight", H);
    L.post_attn_norm = load_vector(*store, p + "post_attention_layernorm.weight", H);
    for (int i = 0; i < 7; ++i) {
      const auto [rows, cols] = linear_shape(c, i);
      const std::string name = p + kLinearNames[i];
      Linear& lin = L.linear[i];
      lin.rows = rows;
      lin.cols = cols;
      const std::string fmt = opt.expand_packed ? "" : detect_linear_format(*store, name);
      if (kernels && is_dense(fmt)) {
        // In its stored dtype: in place, or copied into huge pages (LoadOptions::copy_dense).
        lin.format = fmt;
        lin.kernel = dense_kernel(store, name + ".weight", rows, cols, opt.copy_dense);
        lin.stored_bytes = store->get(name + ".weight").nbytes;
      } else if (kernels || fmt == "squeezellm" || fmt == "fgmp") {
        // Packed: the CPU runtime form (kernels) or the LUT / FGMP kernels' view; w stays empty.
        lin.format = fmt;
        PackedTensor pt = read_packed(*store, name, lin.format, rows, cols);
        lin.stored_bytes = pt.bytes();
        try {
          if (kernels)
            lin.kernel = make_cpu_linear(std::move(pt), opt.copy_dense);
          else
            lin.packed = make_packed_linear(std::move(pt));
        } catch (const Error& e) {
          module_error(name, fmt, e);
        }
      } else {
        const std::vector<float> v =
            read_linear_f32(*store, name, rows, cols, &lin.format, &lin.stored_bytes);
        lin.w = Eigen::Map<const MatrixRM>(v.data(), rows, cols);
      }
      if (has_bias(c, i)) lin.b = load_vector(*store, name + ".bias", rows);
      load_act_calibration(*store, name, lin);
      lin.input_scale = read_input_scale(*store, name);
      lin.declared_act = declared_activation(c.quantization_config, name, dir + "/config.json", &lin.input_dynamic);
    }
  }
  w.final_norm = load_vector(*store, "model.norm.weight", H);
  // lm_head: dense as stored, or packed by mpq-pack --lm-head (any format of the table):
  // the CPU kernel of its format, or fp32 decoded exactly as the layers' linears are.
  const std::string head_fmt = c.tie_word_embeddings ? "" : detect_linear_format(*store, "lm_head");
  if (c.tie_word_embeddings) {
    if (kernels) w.lm_head_kernel = w.embed_kernel;
  } else if (is_dense(head_fmt)) {
    if (kernels)
      w.lm_head_kernel = dense_kernel(store, "lm_head.weight", V, H, opt.copy_dense);
    else
      w.lm_head = load_matrix(*store, "lm_head.weight", V, H);
  } else if (kernels) {
    PackedTensor pt = read_packed(*store, "lm_head", head_fmt, V, H);
    try {
      w.lm_head_kernel = make_cpu_linear(std::move(pt), opt.copy_dense);
    } catch (const Error& e) {
      module_error("lm_head", head_fmt, e);
    }
  } else {
    const std::vector<float> v = read_linear_f32(*store, "lm_head", V, H);
    w.lm_head = Eigen::Map<const MatrixRM>(v.data(), V, H);
  }
  return LlamaModel(std::move(c), std::move(w));
}

KvCache::KvCache(const LlamaConfig& c, int64_t capacity) : cap_(capacity) {
  if (capacity < 1) throw Error(ExitCode::kUsage, "KV cache capacity " + std::to_string(capacity) + " < 1");
  const int64_t kv = c.num_kv_heads * c.head_dim;
  k_.assign(static_cast<std::size_t>(c.num_layers), MatrixRM(capacity, kv));
  v_.assign(static_cast<std::size_t>(c.num_layers), MatrixRM(capacity, kv));
}

int64_t LlamaModel::parameter_count() const {
  const LlamaConfig& c = config_;
  int64_t n = c.vocab_size * c.hidden_size * (c.tie_word_embeddings ? 1 : 2);
  for (const LlamaLayer& L : weights_.layers)
    for (const Linear& l : L.linear) n += l.numel();
  return n;
}

std::size_t LlamaModel::decode_weight_bytes() const {
  const LlamaConfig& c = config_;
  std::size_t n = 0;
  for (const LlamaLayer& L : weights_.layers)
    for (const Linear& l : L.linear)
      n += l.kernel ? l.kernel->weight_bytes() : l.packed ? l.stored_bytes : static_cast<std::size_t>(l.numel()) * 4;
  if (weights_.lm_head_kernel)
    n += weights_.lm_head_kernel->weight_bytes();
  else
    n += static_cast<std::size_t>(c.vocab_size * c.hidden_size) * 4;
  return n;
}

void LlamaModel::set_act_quant(ActQuantMode mode, const std::string& source) {
  // Declared static schemes need their scale: vLLM would read an uninitialized one.
  if (mode == ActQuantMode::kDeclared)
    for (std::size_t l = 0; l < weights_.layers.size(); ++l)
      for (int i = 0; i < 7; ++i) {
        const Linear& lin = weights_.layers[l].linear[static_cast<std::size_t>(i)];
        if (lin.declared_act != ActQuantMode::kNone && !lin.input_dynamic && std::isnan(lin.input_scale))
          throw_input(source, "tensor 'model.layers." + std::to_string(l) + "." + kLinearNames[i] +
                                  ".input_scale' missing: config.json's quantization_config declares static " +
                                  act_mode_name(lin.declared_act) + " activations for it");
      }
  if (mode == ActQuantMode::kFgmp)
    for (std::size_t l = 0; l < weights_.layers.size(); ++l)
      for (int i = 0; i < 7; ++i) {
        const Linear& lin = weights_.layers[l].linear[static_cast<std::size_t>(i)];
        if (static_cast<int64_t>(lin.input_act_fisher.size()) != lin.cols || std::isnan(lin.input_fgmp_threshold))
          throw_input(source, "tensor 'model.layers." + std::to_string(l) + "." + kLinearNames[i] +
                                  ".input_fgmp_threshold' missing: --act fgmp needs activation thresholds "
                                  "(pack with mpq-pack --act-calib)");
      }
  act_mode_ = mode;
  act_counts_.reset();
}

MatrixRM LlamaModel::forward(const int32_t* tokens, int64_t T) const { return forward_impl(tokens, T, nullptr, false); }

MatrixRM LlamaModel::forward(const int32_t* tokens, int64_t T, KvCache& cache, bool last_only) const {
  return forward_impl(tokens, T, &cache, last_only);
}

MatrixRM LlamaModel::forward_impl(const int32_t* tokens, int64_t T, KvCache* cache, bool last_only) const {
  const LlamaConfig& c = config_;
  const int64_t H = c.hidden_size, d = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t group = nh / nkv, half = d / 2;
  const int64_t p0 = cache ? cache->len_ : 0;  // position of tokens[0]
  if (cache) {
    if (static_cast<int64_t>(cache->k_.size()) != c.num_layers || cache->k_[0].cols() != nkv * d)
      throw Error(ExitCode::kUsage, "KV cache shape does not match the model");
    if (p0 + T > cache->cap_)
      throw Error(ExitCode::kUsage, "KV cache full: " + std::to_string(p0) + " + " + std::to_string(T) +
                                        " positions exceed its capacity " + std::to_string(cache->cap_));
  }
  MatrixRM h(T, H);
  for (int64_t t = 0; t < T; ++t) {
    if (tokens[t] < 0 || tokens[t] >= c.vocab_size)
      throw Error(ExitCode::kInput, "token id " + std::to_string(tokens[t]) + " at position " +
                                        std::to_string(t) + " outside the vocabulary [0, " +
                                        std::to_string(c.vocab_size) + ")");
    if (weights_.embed_kernel)
      weights_.embed_kernel->decode_rows(tokens[t], 1, h.row(t).data(), H);
    else
      h.row(t) = weights_.embed.row(tokens[t]);
  }
  // cos/sin tables [T, d/2] of positions p0 .. p0+T-1, angles computed in float64 then rounded.
  std::vector<float> cos_t(static_cast<std::size_t>(T * half)), sin_t(cos_t.size());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double a = static_cast<double>(p0 + t) * inv_freq_[static_cast<std::size_t>(i)];
      cos_t[static_cast<std::size_t>(t * half + i)] = static_cast<float>(std::cos(a));
      sin_t[static_cast<std::size_t>(t * half + i)] = static_cast<float>(std::sin(a));
    }
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  const int64_t S = p0 + T;  // keys visible to the last query
  const int64_t window = c.sliding_window > 0 ? c.sliding_window : S;
  ActBlockCounts counts;
  auto apply_linear = [&](const MatrixRM& x, const Linear& l) {
    return mpq::apply_linear(x, l, act_mode_, kernel_mode_, counts);
  };

  for (std::size_t li = 0; li < weights_.layers.size(); ++li) {
    const LlamaLayer& L = weights_.layers[li];
    const MatrixRM n = rms_norm(h, L.input_norm, c.rms_norm_eps);
    MatrixRM q = apply_linear(n, L.linear[0]);
    MatrixRM k = apply_linear(n, L.linear[1]);
    MatrixRM v = apply_linear(n, L.linear[2]);
    apply_rope(q, nh, d, cos_t, sin_t);
    apply_rope(k, nkv, d, cos_t, sin_t);
    // Keys / values of positions [0, S): the cache's rows (after appending), or this call's.
    if (cache) {
      cache->k_[li].middleRows(p0, T) = k;
      cache->v_[li].middleRows(p0, T) = v;
    }
    const auto K = cache ? cache->k_[li].topRows(S) : k.topRows(S);
    const auto Vv = cache ? cache->v_[li].topRows(S) : v.topRows(S);
    MatrixRM attn(T, nh * d);
    constexpr int64_t kChunk = 64, kFewQueries = 4;
    if (T <= kFewQueries) {
      // Decode (a few queries): per head, scores as dot products of contiguous key rows and
      // the output as a sum of contiguous value rows, not matrix products: Eigen's lazy
      // products walk V by columns, and through BLAS OpenBLAS's OpenMP build forks its own
      // threads for every [1, d] x [d, S] GEMV once S * d > 9216 (gemv.c's threshold).
      const bool par = T * S * d * nh >= kParallelDecodeAttentionWork && !omp_in_parallel();
#pragma omp parallel for schedule(static) if (par)
      for (int64_t hd = 0; hd < nh; ++hd) {
        const int64_t g = hd / group;
        std::vector<float> p(static_cast<std::size_t>(S));
        for (int64_t i = 0; i < T; ++i) {
          const int64_t lo = std::max<int64_t>(0, p0 + i - window + 1), hi = p0 + i + 1;  // visible keys [lo, hi)
          const auto qi = q.row(i).segment(hd * d, d);
          float mx = -std::numeric_limits<float>::infinity();
          for (int64_t j = lo; j < hi; ++j) {
            const float sc = qi.dot(K.row(j).segment(g * d, d)) * scale;
            p[static_cast<std::size_t>(j)] = sc;
            mx = std::max(mx, sc);
          }
          float sum = 0.0f;
          for (int64_t j = lo; j < hi; ++j) {
            float& pj = p[static_cast<std::size_t>(j)];
            pj = std::exp(pj - mx);
            sum += pj;
          }
          auto out = attn.row(i).segment(hd * d, d);
          out.setZero();
          const float inv = 1.0f / sum;
          for (int64_t j = lo; j < hi; ++j) out += (p[static_cast<std::size_t>(j)] * inv) * Vv.row(j).segment(g * d, d);
        }
      }
    } else {
      // Causal attention in query chunks: chunk [a, b) (positions p0 + a .. p0 + b - 1) only
      // sees keys [lo(a), p0 + b), so the masked upper triangle is never computed.
      const int64_t chunks = (T + kChunk - 1) / kChunk;
      // Threads only pay off with enough work per fork (tiny models run windows in parallel).
      const bool par_heads = T * S * d * nh >= kParallelAttentionWork;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (par_heads)
      for (int64_t hd = 0; hd < nh; ++hd) {
        for (int64_t ch = 0; ch < chunks; ++ch) {
          const int64_t g = hd / group, a = ch * kChunk, b = std::min(T, a + kChunk);
          const int64_t k0 = std::max<int64_t>(0, p0 + a - window + 1), nk = p0 + b - k0;
          MatrixRM s(b - a, nk);
          s.noalias() = (q.block(a, hd * d, b - a, d) * scale) * K.block(k0, g * d, nk, d).transpose();
          for (int64_t i = a; i < b; ++i) {
            // Visible keys of query i (position p0 + i): [max(k0, p0 + i - window + 1), p0 + i].
            const int64_t lo = std::max(k0, p0 + i - window + 1) - k0, hi = p0 + i - k0 + 1;
            auto row = s.row(i - a);
            auto vis = row.segment(lo, hi - lo).array();
            vis = (vis - vis.maxCoeff()).exp();
            vis /= vis.sum();
            row.head(lo).setZero();
            row.tail(nk - hi).setZero();
          }
          attn.block(a, hd * d, b - a, d).noalias() = s * Vv.block(k0, g * d, nk, d);
        }
      }
    }
    h += apply_linear(attn, L.linear[3]);

    const MatrixRM m = rms_norm(h, L.post_attn_norm, c.rms_norm_eps);
    MatrixRM gate = apply_linear(m, L.linear[4]);
    const MatrixRM up = apply_linear(m, L.linear[5]);
    // SwiGLU: silu(gate) * up, row by row.
#pragma omp parallel for schedule(static) if (par_elementwise(gate.size()))
    for (Eigen::Index t = 0; t < gate.rows(); ++t)
      gate.row(t) = gate.row(t).unaryExpr([](float x) { return x / (1.0f + std::exp(-x)); }).cwiseProduct(up.row(t));
    h += apply_linear(gate, L.linear[6]);
  }
  if (cache) cache->len_ = S;
  const MatrixRM hl = last_only ? MatrixRM(h.bottomRows(1)) : MatrixRM();
  const MatrixRM n = rms_norm(last_only ? hl : h, weights_.final_norm, c.rms_norm_eps);
  MatrixRM logits(n.rows(), c.vocab_size);
  if (weights_.lm_head_kernel) {
    weights_.lm_head_kernel->matmul(n.data(), n.rows(), logits.data(), kernel_mode_);
  } else {
    const MatrixRM& head = c.tie_word_embeddings ? weights_.embed : weights_.lm_head;
    logits.noalias() = n * head.transpose();
  }
  if (act_mode_ != ActQuantMode::kNone) act_counts_.add(counts);
  return logits;
}

}  // namespace mpq
