#include "lib/model/llama_grad.h"

#include <cmath>
#include <type_traits>

#include "formats/hf_config.h"
#include "lib/common/error.h"
#include "lib/common/shape.h"

namespace mpq {
namespace {

template <typename S>
struct LayerCache {
  MatRM<S> x;             // layer input h [T, H]
  Vec<S> r1;              // input RMSNorm 1/rms per row [T]
  MatRM<S> n;             // normed input [T, H]
  MatRM<S> q, k, v;       // q, k after RoPE; v  [T, nh*d], [T, nkv*d]
  std::vector<MatRM<S>> P;  // attention probabilities per query head [T, T]
  MatRM<S> attn;          // concatenated head outputs [T, nh*d]
  MatRM<S> a;             // residual after attention [T, H]
  Vec<S> r2;              // post-attention RMSNorm 1/rms [T]
  MatRM<S> m;             // normed a [T, H]
  MatRM<S> gp, up, s;     // gate pre-activation, up, silu(gp) * up  [T, I]
};

template <typename S>
void rms_forward(const MatRM<S>& x, const Vec<S>& g, double eps, MatRM<S>& y, Vec<S>& r) {
  const Eigen::Index T = x.rows(), H = x.cols();
  y.resize(T, H);
  r.resize(T);
  for (Eigen::Index t = 0; t < T; ++t) {
    r[t] = static_cast<S>(1.0 / std::sqrt(static_cast<double>(x.row(t).squaredNorm()) / static_cast<double>(H) + eps));
    y.row(t) = (x.row(t) * r[t]).cwiseProduct(g.transpose());
  }
}

// dx += dL/dx and, when dg is not null, dg += dL/dg for y = g * x * r.
template <typename S>
void rms_backward(const MatRM<S>& x, const Vec<S>& r, const Vec<S>& g, const MatRM<S>& dy, MatRM<S>& dx,
                  Vec<S>* dg) {
  const Eigen::Index T = x.rows(), H = x.cols();
  for (Eigen::Index t = 0; t < T; ++t) {
    const auto u = dy.row(t).cwiseProduct(g.transpose()).eval();
    const S dot = u.dot(x.row(t));
    dx.row(t) += r[t] * u - x.row(t) * (r[t] * r[t] * r[t] * dot / static_cast<S>(H));
    if (dg) *dg += (dy.row(t).cwiseProduct(x.row(t)) * r[t]).transpose();
  }
}

template <typename S>
MatRM<S> linear_forward(const MatRM<S>& x, const MatRM<S>& w, const Vec<S>& b) {
  MatRM<S> y(x.rows(), w.rows());
  y.noalias() = x * w.transpose();
  if (b.size()) y.rowwise() += b.transpose();
  return y;
}

// y = x W^T + b: dW = dy^T x (when dw is not null), db = colsum(dy) (when db is not
// null), dx += dy W.
template <typename S>
void linear_backward(const MatRM<S>& x, const MatRM<S>& w, const MatRM<S>& dy, MatRM<S>* dw, Vec<S>* db,
                     MatRM<S>& dx) {
  if (dw) dw->noalias() = dy.transpose() * x;
  if (db && db->size()) *db = dy.colwise().sum().transpose();
  dx.noalias() += dy * w;
}

// Sink that writes every gradient into a LlamaParams (the full-gradient overload).
template <typename S>
class FullGradSink final : public LlamaGradSink<S> {
 public:
  explicit FullGradSink(LlamaParams<S>& g) : g_(g) {}
  int64_t lowest_layer() const override { return 0; }
  MatRM<S>* weight_grad(int64_t l, int i) override { return &g_.layers[static_cast<std::size_t>(l)].w[static_cast<std::size_t>(i)]; }
  Vec<S>* bias_grad(int64_t l, int i) override { return &g_.layers[static_cast<std::size_t>(l)].b[static_cast<std::size_t>(i)]; }
  Vec<S>* norm_grad(int64_t l, int which) override {
    auto& L = g_.layers[static_cast<std::size_t>(l)];
    return which == 0 ? &L.input_norm : &L.post_attn_norm;
  }
  Vec<S>* final_norm_grad() override { return &g_.final_norm; }
  MatRM<S>* embed_grad() override { return &g_.embed; }
  MatRM<S>* head_grad() override { return &g_.lm_head; }

 private:
  LlamaParams<S>& g_;
};

// Fills `out` (resized to [rows, cols]) with rows [r0, r0 + rows) of a checked 2-D tensor.
void convert_rows(const TensorView& t, int64_t r0, int64_t rows, int64_t cols, MatRM<float>& out) {
  out.resize(rows, cols);
  to_f32_into(t, out.data(), r0 * cols, rows * cols);
}

void convert_vec(const TensorView& t, Vec<float>& out) {
  out.resize(t.numel());
  to_f32_into(t, out.data());
}

// Layer l of a checked checkpoint, in fp32.
void convert_layer(const LlamaConfig& c, const TensorStore& store, int64_t l, LlamaParams<float>::Layer& L) {
  const std::string p = "model.layers." + std::to_string(l) + ".";
  convert_vec(store.get(p + "input_layernorm.weight"), L.input_norm);
  convert_vec(store.get(p + "post_attention_layernorm.weight"), L.post_attn_norm);
  for (int i = 0; i < 7; ++i) {
    const auto [rows, cols] = linear_shape(c, i);
    convert_rows(store.get(p + kLinearNames[i] + ".weight"), 0, rows, cols, L.w[static_cast<std::size_t>(i)]);
    if ((i < 3 && c.qkv_bias) || (i == 3 && c.o_bias))
      convert_vec(store.get(p + kLinearNames[i] + ".bias"), L.b[static_cast<std::size_t>(i)]);
    else
      L.b[static_cast<std::size_t>(i)].resize(0);
  }
}

// Rotate-half RoPE of every head in place; `sign` -1 applies the inverse rotation.
template <typename S>
void rope(MatRM<S>& x, int64_t heads, int64_t d, const MatRM<S>& cos_t, const MatRM<S>& sin_t, S sign) {
  const int64_t half = d / 2;
  for (Eigen::Index t = 0; t < x.rows(); ++t)
    for (int64_t h = 0; h < heads; ++h) {
      S* v = x.row(t).data() + h * d;
      for (int64_t i = 0; i < half; ++i) {
        const S c = cos_t(t, i), s = sign * sin_t(t, i), a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
      }
    }
}

template <typename S>
S silu(S x) {
  return x / (S(1) + std::exp(-x));
}

// Forward hooks: edit (float64 passes only), then observe.
template <typename S>
void notify(LinearInputObserver* obs, int64_t layer, int group, MatRM<S>& x) {
  if (!obs) return;
  if constexpr (std::is_same_v<S, float>) {
    obs->on_linear_input(layer, group, x);
  } else {
    obs->edit_linear_input(layer, group, x);
    obs->on_linear_input(layer, group, x.template cast<float>());
  }
}

template <typename S>
void notify_grad(LinearInputObserver* obs, int64_t layer, int group, const MatRM<S>& dx) {
  if (!obs) return;
  if constexpr (std::is_same_v<S, float>) obs->on_linear_input_grad(layer, group, dx);
  else obs->on_linear_input_grad(layer, group, dx.template cast<float>());
}

}  // namespace

int linear_input_group(int i) {
  static const int groups[7] = {0, 0, 0, 1, 2, 2, 3};
  MPQ_ASSERT(i >= 0 && i < 7);
  return groups[i];
}

template <typename S>
LlamaParams<S> LlamaParams<S>::zeros_like() const {
  LlamaParams<S> z = *this;
  z.for_each([](const std::string&, S* d, Eigen::Index n) { std::fill(d, d + n, S(0)); });
  return z;
}

// Gradients need fp32 w: a squeezellm linear kept packed (LlamaModel::load without
// expand_packed) has none.
static void require_dense(const Linear& l) {
  if (l.packed)
    throw Error(ExitCode::kUsage, "linear in format " + l.format +
                                      " is kept packed; load the model with expand_packed for gradients");
}

template <typename S>
LlamaParams<S> to_params(const LlamaWeights& w) {
  LlamaParams<S> p;
  p.embed = w.embed.cast<S>();
  for (const auto& L : w.layers) {
    typename LlamaParams<S>::Layer l;
    l.input_norm = L.input_norm.cast<S>();
    l.post_attn_norm = L.post_attn_norm.cast<S>();
    for (int i = 0; i < 7; ++i) {
      require_dense(L.linear[i]);
      l.w[i] = L.linear[i].w.cast<S>();
      l.b[i] = L.linear[i].b.cast<S>();
    }
    p.layers.push_back(std::move(l));
  }
  p.final_norm = w.final_norm.cast<S>();
  p.lm_head = w.lm_head.cast<S>();
  return p;
}

LlamaParams<float> to_params(LlamaWeights&& w) {
  LlamaParams<float> p;
  p.embed = std::move(w.embed);
  for (auto& L : w.layers) {
    LlamaParams<float>::Layer l;
    l.input_norm = std::move(L.input_norm);
    l.post_attn_norm = std::move(L.post_attn_norm);
    for (std::size_t i = 0; i < 7; ++i) {
      require_dense(L.linear[i]);
      l.w[i] = std::move(L.linear[i].w);
      l.b[i] = std::move(L.linear[i].b);
    }
    p.layers.push_back(std::move(l));
  }
  p.final_norm = std::move(w.final_norm);
  p.lm_head = std::move(w.lm_head);
  w = LlamaWeights();
  return p;
}

template <typename S>
void InMemoryParams<S>::embed_row(int32_t token, S* out) {
  const auto row = p_.embed.row(token);
  for (Eigen::Index j = 0; j < row.size(); ++j) out[j] = row[j];
}

StreamedParams::StreamedParams(const LlamaConfig& c, const TensorStore& store) : c_(c), store_(store) {
  convert_vec(store_.get("model.norm.weight"), final_norm_);
  // 2^24 head weights per chunk (64 MiB in fp32); one chunk when the whole head fits.
  head_rows_ = std::min<int64_t>(c_.vocab_size, std::max<int64_t>(1, (int64_t{1} << 24) / c_.hidden_size));
}

const LlamaParams<float>::Layer& StreamedParams::layer(int64_t l) {
  if (l != layer_index_) {
    convert_layer(c_, store_, l, layer_);
    layer_index_ = l;
  }
  return layer_;
}

void StreamedParams::embed_row(int32_t token, float* out) {
  to_f32_into(store_.get("model.embed_tokens.weight"), out, static_cast<int64_t>(token) * c_.hidden_size,
              c_.hidden_size);
}

const MatRM<float>& StreamedParams::head_chunk(int64_t k) {
  if (k != head_index_) {
    const TensorView& t = store_.get(c_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
    const int64_t r0 = k * head_rows_;
    convert_rows(t, r0, std::min(head_rows_, c_.vocab_size - r0), c_.hidden_size, head_);
    head_index_ = k;
  }
  return head_;
}

void check_llama_checkpoint(const LlamaConfig& c, const TensorStore& store) {
  check_config_against_tensors(c, store);  // config sizes vs the tensors present, before any list is built from them
  for (const auto& [name, shape] : llama_tensor_shapes(c)) {
    const TensorView& t = store.get(name);
    if (t.shape != shape)
      throw_input(t.file, "tensor '" + name + "': shape " + shape_str(t.shape) + " disagrees with config.json " +
                              shape_str(shape));
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      throw_input(t.file, "tensor '" + name + "': dtype " + dtype_name(t.dtype) +
                              " is not a dense float (want F32, F16 or BF16)");
  }
}

LlamaParams<float> load_llama_params(const LlamaConfig& c, const TensorStore& store) {
  LlamaParams<float> p;
  convert_rows(store.get("model.embed_tokens.weight"), 0, c.vocab_size, c.hidden_size, p.embed);
  p.layers.resize(static_cast<std::size_t>(c.num_layers));
  for (int64_t l = 0; l < c.num_layers; ++l) convert_layer(c, store, l, p.layers[static_cast<std::size_t>(l)]);
  convert_vec(store.get("model.norm.weight"), p.final_norm);
  if (!c.tie_word_embeddings) convert_rows(store.get("lm_head.weight"), 0, c.vocab_size, c.hidden_size, p.lm_head);
  return p;
}

template <typename S>
S llama_loss_and_grad(const LlamaConfig& c, const LlamaParams<S>& p, const int32_t* tokens, int64_t T,
                      LlamaParams<S>* grad, LinearInputObserver* observer) {
  InMemoryParams<S> src(c, p);
  if (!grad) return llama_loss_and_grad<S>(c, src, tokens, T, nullptr, observer);
  LlamaParams<S>& g = *grad;
  if (g.layers.size() != p.layers.size()) g = p.zeros_like();
  // Weight gradients and lm_head are assigned by their GEMMs; only what is accumulated
  // (embedding rows, norm gains) starts from zero.
  g.embed.setZero();
  g.final_norm.setZero();
  for (auto& L : g.layers) {
    L.input_norm.setZero();
    L.post_attn_norm.setZero();
  }
  FullGradSink<S> sink(g);
  return llama_loss_and_grad<S>(c, src, tokens, T, &sink, observer);
}

namespace {

// One layer's forward from C.x into C's other fields; *h_out = the layer's output. cos_t /
// sin_t: RoPE tables [T, head_dim / 2] of positions 0..T-1.
template <typename S>
void layer_forward_impl(const LlamaConfig& c, const MatRM<S>& cos_t, const MatRM<S>& sin_t, int64_t l,
                        const typename LlamaParams<S>::Layer& L, LayerCache<S>& C, LinearInputObserver* obs,
                        MatRM<S>* h_out) {
  const int64_t T = C.x.rows(), d = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t group = nh / nkv;
  const int64_t window = c.sliding_window > 0 ? c.sliding_window : T;
  const S scale = static_cast<S>(1.0 / std::sqrt(static_cast<double>(d)));
  rms_forward(C.x, L.input_norm, c.rms_norm_eps, C.n, C.r1);
  notify(obs, l, 0, C.n);
  C.q = linear_forward(C.n, L.w[0], L.b[0]);
  C.k = linear_forward(C.n, L.w[1], L.b[1]);
  C.v = linear_forward(C.n, L.w[2], L.b[2]);
  rope(C.q, nh, d, cos_t, sin_t, S(1));
  rope(C.k, nkv, d, cos_t, sin_t, S(1));
  C.P.assign(static_cast<std::size_t>(nh), MatRM<S>());
  C.attn.resize(T, nh * d);
#pragma omp parallel for schedule(static) if (T * T * d * nh >= kParallelAttentionWork)
  for (int64_t hd = 0; hd < nh; ++hd) {
    const int64_t g = hd / group;
    MatRM<S>& P = C.P[static_cast<std::size_t>(hd)];
    P.noalias() = (C.q.middleCols(hd * d, d) * scale) * C.k.middleCols(g * d, d).transpose();
    for (int64_t i = 0; i < T; ++i) {
      const int64_t lo = std::max<int64_t>(0, i - window + 1);
      auto vis = P.row(i).segment(lo, i - lo + 1).array();
      vis = (vis - vis.maxCoeff()).exp();
      vis /= vis.sum();
      P.row(i).head(lo).setZero();
      P.row(i).tail(T - i - 1).setZero();
    }
    C.attn.middleCols(hd * d, d).noalias() = P * C.v.middleCols(g * d, d);
  }
  notify(obs, l, 1, C.attn);
  C.a = C.x + linear_forward(C.attn, L.w[3], L.b[3]);
  rms_forward(C.a, L.post_attn_norm, c.rms_norm_eps, C.m, C.r2);
  notify(obs, l, 2, C.m);
  C.gp = linear_forward(C.m, L.w[4], L.b[4]);
  C.up = linear_forward(C.m, L.w[5], L.b[5]);
  C.s = C.gp.unaryExpr([](S x) { return silu(x); }).cwiseProduct(C.up);
  notify(obs, l, 3, C.s);
  if (h_out) *h_out = C.a + linear_forward(C.s, L.w[6], L.b[6]);
}

template <typename S>
void rope_tables(const LlamaConfig& c, int64_t T, MatRM<S>& cos_t, MatRM<S>& sin_t) {
  const std::vector<double> inv_freq = rope_inv_freq(c);
  const int64_t half = c.head_dim / 2;
  cos_t.resize(T, half);
  sin_t.resize(T, half);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double a = static_cast<double>(t) * inv_freq[static_cast<std::size_t>(i)];
      cos_t(t, i) = static_cast<S>(std::cos(a));
      sin_t(t, i) = static_cast<S>(std::sin(a));
    }
}

}  // namespace

template <typename S>
MatRM<S> llama_layer_forward(const LlamaConfig& c, const typename LlamaParams<S>::Layer& L, int64_t l,
                             const MatRM<S>& x, LinearInputObserver* observer) {
  MPQ_ASSERT(x.cols() == c.hidden_size && x.rows() >= 1);
  MatRM<S> cos_t, sin_t;
  rope_tables<S>(c, x.rows(), cos_t, sin_t);
  LayerCache<S> C;
  C.x = x;
  MatRM<S> out;
  layer_forward_impl<S>(c, cos_t, sin_t, l, L, C, observer, &out);
  return out;
}
template MatRM<float> llama_layer_forward<float>(const LlamaConfig&, const LlamaParams<float>::Layer&, int64_t,
                                                 const MatRM<float>&, LinearInputObserver*);
template MatRM<double> llama_layer_forward<double>(const LlamaConfig&, const LlamaParams<double>::Layer&, int64_t,
                                                   const MatRM<double>&, LinearInputObserver*);

template <typename S>
S llama_loss_and_grad(const LlamaConfig& c, LlamaParamSource<S>& src, const int32_t* tokens, int64_t T,
                      LlamaGradSink<S>* sink, LinearInputObserver* observer) {
  MPQ_ASSERT(T >= 2);
  const int64_t H = c.hidden_size, d = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads, V = c.vocab_size;
  const int64_t NL = c.num_layers;
  const int64_t group = nh / nkv;
  const S scale = static_cast<S>(1.0 / std::sqrt(static_cast<double>(d)));
  for (int64_t t = 0; t < T; ++t)
    if (tokens[t] < 0 || tokens[t] >= V)
      throw Error(ExitCode::kInput, "token id " + std::to_string(tokens[t]) + " at position " + std::to_string(t) +
                                        " outside the vocabulary [0, " + std::to_string(V) + ")");
  const int64_t lowest = sink ? std::max<int64_t>(0, sink->lowest_layer()) : NL;
  const bool backward = sink && lowest < NL;

  // RoPE tables [T, d/2], angles in float64.
  MatRM<S> cos_t, sin_t;
  rope_tables<S>(c, T, cos_t, sin_t);

  // ---- forward, caching what the backward pass needs (layers >= lowest only) ----
  MatRM<S> h(T, H);
  for (int64_t t = 0; t < T; ++t) src.embed_row(tokens[t], h.row(t).data());
  std::vector<LayerCache<S>> cache(backward ? static_cast<std::size_t>(NL - lowest) : 0);
  LayerCache<S> scratch;  // layers that need no cache
  const bool recompute = backward && sink->keep_only_layer_inputs();
  const auto layer_forward = [&](int64_t l, const typename LlamaParams<S>::Layer& L, LayerCache<S>& C,
                                 LinearInputObserver* obs, MatRM<S>* h_out) {
    layer_forward_impl<S>(c, cos_t, sin_t, l, L, C, obs, h_out);
  };
  for (int64_t l = 0; l < NL; ++l) {
    const auto& L = src.layer(l);
    const bool cached = backward && l >= lowest;
    LayerCache<S>& C = cached && !recompute ? cache[static_cast<std::size_t>(l - lowest)] : scratch;
    C.x = h;
    layer_forward(l, L, C, observer, &h);
    if (cached && recompute) cache[static_cast<std::size_t>(l - lowest)].x = C.x;  // only the input is kept
  }
  scratch = LayerCache<S>();
  MatRM<S> nf;
  Vec<S> rf;
  const Vec<S>& final_norm = src.final_norm();
  rms_forward(h, final_norm, c.rms_norm_eps, nf, rf);
  const int64_t R = src.head_chunk_rows();
  const int64_t chunks = (V + R - 1) / R;
  MatRM<S> dlogits(T, V);
  if (chunks == 1) {
    dlogits.noalias() = nf * src.head_chunk(0).transpose();
  } else {
    for (int64_t k = 0; k < chunks; ++k) {
      const MatRM<S>& hc = src.head_chunk(k);
      dlogits.middleCols(k * R, hc.rows()).noalias() = nf * hc.transpose();
    }
  }

  // Loss and dL/dlogits (softmax - onehot) / (T - 1), row T-1 unscored.
  const S inv_n = S(1) / static_cast<S>(T - 1);
  double loss = 0;
  dlogits.row(T - 1).setZero();
#pragma omp parallel for reduction(+ : loss) schedule(static) if (T * V >= (int64_t{1} << 20))
  for (int64_t t = 0; t < T - 1; ++t) {
    auto row = dlogits.row(t);
    const S mx = row.maxCoeff();
    const int32_t y = tokens[t + 1];
    const double shifted_y = static_cast<double>(row[y]) - static_cast<double>(mx);
    row.array() = (row.array() - mx).exp();
    const S z = row.sum();
    loss += std::log(static_cast<double>(z)) - shifted_y;
    row *= inv_n / z;
    row[y] -= inv_n;
  }
  loss /= static_cast<double>(T - 1);
  if (!backward) return static_cast<S>(loss);

  // ---- backward, from the head down to layer `lowest` ----
  MatRM<S>* dembed = lowest == 0 ? sink->embed_grad() : nullptr;
  MatRM<S>* dhead_out = c.tie_word_embeddings ? dembed : sink->head_grad();
  MatRM<S> dnf(T, H);
  if (chunks == 1) {
    const MatRM<S>& head = src.head_chunk(0);
    if (dhead_out) {
      MatRM<S> dhead(V, H);
      dhead.noalias() = dlogits.transpose() * nf;
      if (c.tie_word_embeddings) *dhead_out += dhead;
      else *dhead_out = dhead;
    }
    dnf.noalias() = dlogits * head;
  } else {
    if (dhead_out && !c.tie_word_embeddings) dhead_out->resize(V, H);
    dnf.setZero();
    for (int64_t k = 0; k < chunks; ++k) {
      const MatRM<S>& hc = src.head_chunk(k);
      const auto dl = dlogits.middleCols(k * R, hc.rows());
      if (dhead_out) {
        MatRM<S> dhead(hc.rows(), H);
        dhead.noalias() = dl.transpose() * nf;
        if (c.tie_word_embeddings) dhead_out->middleRows(k * R, hc.rows()) += dhead;
        else dhead_out->middleRows(k * R, hc.rows()) = dhead;
      }
      dnf.noalias() += dl * hc;
    }
  }
  MatRM<S> dh = MatRM<S>::Zero(T, H);
  rms_backward(h, rf, final_norm, dnf, dh, sink->final_norm_grad());

  // Weight gradient of linear i of layer l: computed only when the sink wants it, handed
  // over as soon as it is.
  const auto backward_linear = [&](int64_t l, int i, const MatRM<S>& x, const MatRM<S>& w, const MatRM<S>& dy,
                                   MatRM<S>& dx) {
    MatRM<S>* dw = sink->weight_grad(l, i);
    linear_backward(x, w, dy, dw, sink->bias_grad(l, i), dx);
    if (dw) sink->weight_grad_ready(l, i);
  };
  for (int64_t li = NL; li-- > lowest;) {
    const auto& L = src.layer(li);
    LayerCache<S>& C = cache[static_cast<std::size_t>(li - lowest)];
    // Activations dropped in the forward pass are rebuilt from the layer's input (the same
    // operations on the same values: the same numbers), without the observer.
    if (recompute) layer_forward(li, L, C, nullptr, nullptr);
    // h_out = a + down(s)
    MatRM<S> ds = MatRM<S>::Zero(T, C.s.cols());
    backward_linear(li, 6, C.s, L.w[6], dh, ds);
    notify_grad(observer, li, 3, ds);
    MatRM<S> dgp(T, C.gp.cols()), dup(T, C.up.cols());
    for (Eigen::Index t = 0; t < T; ++t)
      for (Eigen::Index j = 0; j < C.gp.cols(); ++j) {
        const S x = C.gp(t, j), sg = S(1) / (S(1) + std::exp(-x));
        dup(t, j) = ds(t, j) * x * sg;
        dgp(t, j) = ds(t, j) * C.up(t, j) * sg * (S(1) + x * (S(1) - sg));
      }
    MatRM<S> dm = MatRM<S>::Zero(T, H);
    backward_linear(li, 4, C.m, L.w[4], dgp, dm);
    backward_linear(li, 5, C.m, L.w[5], dup, dm);
    notify_grad(observer, li, 2, dm);
    MatRM<S> da = dh;  // residual
    rms_backward(C.a, C.r2, L.post_attn_norm, dm, da, sink->norm_grad(li, 1));
    // a = x + o(attn)
    MatRM<S> dattn = MatRM<S>::Zero(T, nh * d);
    backward_linear(li, 3, C.attn, L.w[3], da, dattn);
    notify_grad(observer, li, 1, dattn);
    MatRM<S> dq(T, nh * d), dk = MatRM<S>::Zero(T, nkv * d), dv = MatRM<S>::Zero(T, nkv * d);
    // One KV group per iteration: its query heads accumulate into the same dk/dv columns.
#pragma omp parallel for schedule(static) if (T * T * d * nh >= kParallelAttentionWork)
    for (int64_t gi = 0; gi < nkv; ++gi) {
      for (int64_t hd = gi * group; hd < (gi + 1) * group; ++hd) {
        const MatRM<S>& P = C.P[static_cast<std::size_t>(hd)];
        const auto dO = dattn.middleCols(hd * d, d);
        MatRM<S> dP(T, T);
        dP.noalias() = dO * C.v.middleCols(gi * d, d).transpose();
        dv.middleCols(gi * d, d).noalias() += P.transpose() * dO;
        const Vec<S> rowdot = (dP.cwiseProduct(P)).rowwise().sum();
        MatRM<S> dS = P.cwiseProduct(dP.colwise() - rowdot) * scale;
        dq.middleCols(hd * d, d).noalias() = dS * C.k.middleCols(gi * d, d);
        dk.middleCols(gi * d, d).noalias() += dS.transpose() * C.q.middleCols(hd * d, d);
      }
    }
    rope(dq, nh, d, cos_t, sin_t, S(-1));
    rope(dk, nkv, d, cos_t, sin_t, S(-1));
    MatRM<S> dn = MatRM<S>::Zero(T, H);
    backward_linear(li, 0, C.n, L.w[0], dq, dn);
    backward_linear(li, 1, C.n, L.w[1], dk, dn);
    backward_linear(li, 2, C.n, L.w[2], dv, dn);
    notify_grad(observer, li, 0, dn);
    dh = da;  // residual
    rms_backward(C.x, C.r1, L.input_norm, dn, dh, sink->norm_grad(li, 0));
    C = LayerCache<S>();  // this layer's activations are no longer needed
  }
  if (dembed)
    for (int64_t t = 0; t < T; ++t) dembed->row(tokens[t]) += dh.row(t);
  return static_cast<S>(loss);
}

template struct LlamaParams<float>;
template struct LlamaParams<double>;
template LlamaParams<float> to_params<float>(const LlamaWeights&);
template LlamaParams<double> to_params<double>(const LlamaWeights&);
template float llama_loss_and_grad<float>(const LlamaConfig&, const LlamaParams<float>&, const int32_t*, int64_t,
                                          LlamaParams<float>*, LinearInputObserver*);
template float llama_loss_and_grad<float>(const LlamaConfig&, LlamaParamSource<float>&, const int32_t*, int64_t,
                                          LlamaGradSink<float>*, LinearInputObserver*);
template double llama_loss_and_grad<double>(const LlamaConfig&, LlamaParamSource<double>&, const int32_t*, int64_t,
                                            LlamaGradSink<double>*, LinearInputObserver*);
template class InMemoryParams<float>;
template class InMemoryParams<double>;
template double llama_loss_and_grad<double>(const LlamaConfig&, const LlamaParams<double>&, const int32_t*,
                                            int64_t, LlamaParams<double>*, LinearInputObserver*);

}  // namespace mpq
