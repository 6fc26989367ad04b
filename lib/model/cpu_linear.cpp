// CPU runtime linears (lib/model/cpu_linear.h): one subclass per stored format.
#include "lib/model/cpu_linear.h"

#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>  // std::call_once (FgmpLinear)
#include <vector>

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/dense_gemv.h"
#include "kernels/cpu/fgmp_gemv.h"
#include "kernels/cpu/int_gemv.h"
#include "kernels/cpu/lut_vnni.h"
#include "kernels/cpu/nvfp4_gemv.h"
#include "kernels/cpu/panel_gemm.h"
#include "lib/common/error.h"
#include "lib/common/huge_pages.h"
#include "lib/numeric/codecs.h"
#include "lib/quant/fgmp.h"
#include "lib/quant/intg.h"
#include "lib/quant/squeezellm.h"

namespace mpq {
namespace {

using MatRM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Stride = Eigen::OuterStride<>;
using MapRM = Eigen::Map<MatRM, 0, Stride>;
using ConstMapRM = Eigen::Map<const MatRM, 0, Stride>;

constexpr int64_t kParallelMinWeights = int64_t{1} << 16;
constexpr int64_t kExactBlockBytes = int64_t{4} << 20;  // fp32 rows decoded per GEMM block
constexpr int64_t kGemvBlockRows = 64;

float part_scalar(const PackedTensor& p, const std::string& suffix) {
  const PackedPart& s = p.part(suffix);
  MPQ_ASSERT(s.bytes.size() == 4);
  float v;
  std::memcpy(&v, s.bytes.data(), 4);
  return v;
}

// Part `suffix` of p moved into huge-page memory (lib/common/huge_pages.h: the kernels read
// 4 KiB-paged buffers up to 10-30 % slower); its vector in p is freed. Throws naming a missing part.
HugeVector<uint8_t> take_part_huge(PackedTensor& p, const std::string& suffix) {
  for (PackedPart& part : p.parts)
    if (part.suffix == suffix) {
      HugeVector<uint8_t> out(part.bytes.begin(), part.bytes.end());
      std::vector<uint8_t>().swap(part.bytes);
      return out;
    }
  p.part(suffix);  // throws naming the missing part
  return {};
}

// ---------------------------------------------------------------- formats -------------

class Nvfp4Linear final : public CpuLinear {
 public:
  explicit Nvfp4Linear(const PackedTensor& p) : CpuLinear("nvfp4", p.rows, p.cols) {
    Nvfp4WeightView v;
    v.rows = p.rows;
    v.cols = p.cols;
    v.weight = p.part("weight").bytes.data();
    v.weight_scale = p.part("weight_scale").bytes.data();
    v.scale_2 = part_scalar(p, "weight_scale_2");
    w_ = nvfp4_repack(v);
  }
  std::size_t weight_bytes() const override { return w_.bytes(); }
  void decode_rows(int64_t r0, int64_t n, float* out, int64_t ld) const override {
    nvfp4_decode_rows(w_, r0, n, out, ld);
  }

 protected:
  void gemv_fast(const float* x, float* y) const override { nvfp4_gemv(w_, x, y); }
  std::string gemv_fast_name() const override { return std::string("int8-") + cpu_isa_name(std::min(cpu_isa(), CpuIsa::kAvx512)); }
  void decode_panel(int64_t r0, int64_t n, int64_t kp, uint16_t* panel) const override {
    nvfp4_decode_panel(w_, r0, n, kp, panel);
  }
  float panel_scale() const override { return w_.scale_2; }

 private:
  Nvfp4Packed w_;
};

class LutLinear final : public CpuLinear {
 public:
  explicit LutLinear(const PackedTensor& p) : CpuLinear("squeezellm", p.rows, p.cols), w_(lut_repack(squeezellm_weight_view(p))) {}
  std::size_t weight_bytes() const override { return w_.bytes(); }
  void decode_rows(int64_t r0, int64_t n, float* out, int64_t ld) const override { lut_decode_rows(w_, r0, n, out, ld); }

 protected:
  void gemv_fast(const float* x, float* y) const override { lut_q8_gemv(w_, x, y); }
  std::string gemv_fast_name() const override { return std::string("int8-") + cpu_isa_name(std::min(cpu_isa(), CpuIsa::kAvx512)); }

 private:
  LutPacked w_;
};

// fp8, bf16, f16: kernels/cpu/dense_gemv.h on the stored bytes (owned, or a mapping).
class DenseLinear final : public CpuLinear {
 public:
  DenseLinear(std::string format, DenseWeightView v, HugeVector<uint8_t> owned, std::shared_ptr<const void> keepalive)
      : CpuLinear(std::move(format), v.rows, v.cols), owned_(std::move(owned)), keepalive_(std::move(keepalive)), v_(v) {
    if (!owned_.empty()) v_.data = owned_.data();
  }
  std::size_t weight_bytes() const override {
    return static_cast<std::size_t>(rows() * cols()) * (v_.kind == DenseKind::kFp8 ? 1 : 2) +
           (v_.kind == DenseKind::kFp8 ? sizeof(float) : 0);
  }
  void decode_rows(int64_t r0, int64_t n, float* out, int64_t ld) const override {
    dense_decode_rows(v_, r0, n, out, ld, true);
  }

 protected:
  // fp8: bf16 activations where AVX512_BF16 is there (the exact fp32 path is compute-bound
  // on small core counts); bf16 / f16 weights: fp32, already exact.
  void gemv_fast(const float* x, float* y) const override {
    if (fp8_bf16_) return dense_gemv_fp8_bf16(v_, x, y);
    dense_gemv(v_, x, y);
  }
  void gemv_exact(const float* x, float* y) const override { dense_gemv(v_, x, y); }
  std::string gemv_fast_name() const override {
    if (fp8_bf16_) return "bf16act-avx512bf16";
    return std::string("fp32-") + cpu_isa_name(std::min(cpu_isa(), CpuIsa::kAvx512));
  }
  // fp8: e4m3 codes are exact in bf16; the tensor scale goes to the output.
  void decode_panel(int64_t r0, int64_t n, int64_t kp, uint16_t* panel) const override {
    thread_local std::vector<float> buf;
    const int64_t nv = std::max<int64_t>(0, std::min(n, rows() - r0));
    buf.resize(static_cast<std::size_t>(std::max<int64_t>(nv, 1) * kp));
    if (nv > 0) dense_decode_rows(v_, r0, nv, buf.data(), kp, false);
    panel_from_rows(buf.data(), nv, kp, n, kp, panel);
  }
  float panel_scale() const override { return v_.kind == DenseKind::kFp8 ? v_.scale : 1.0f; }

 private:
  HugeVector<uint8_t> owned_;
  std::shared_ptr<const void> keepalive_;
  DenseWeightView v_;
  bool fp8_bf16_ = v_.kind == DenseKind::kFp8 && dense_gemv_fp8_bf16_available();
};

class FgmpLinear final : public CpuLinear {
 public:
  // decode_layout: build the single-token path's NVFP4 repack now (else at the first
  // gemv_fast call), see make_cpu_linear.
  FgmpLinear(PackedTensor p, bool decode_layout) : CpuLinear("fgmp", p.rows, p.cols), p_(std::move(p)) {
    v_ = fgmp_weight_view(p_);
    bytes_ = p_.bytes();
    fp4_ = take_part_huge(p_, "weight_fp4");
    fp8_ = take_part_huge(p_, "weight_fp8");
    v_.fp4 = fp4_.data();
    v_.fp8 = fp8_.data();
    fgmp_check_layout(v_, "fgmp tensor [" + std::to_string(p_.rows) + " x " + std::to_string(p_.cols) + "]");
    if (decode_layout) q8_part();
  }
  // The stored bytes (the format's cost), not the 0.5625 + FP8 bytes per weight the
  // single-token path reads: its fraction of the bandwidth bound is against the format.
  std::size_t weight_bytes() const override { return bytes_; }
  void decode_rows(int64_t r0, int64_t n, float* out, int64_t ld) const override {
    MPQ_ASSERT(r0 >= 0 && n >= 0 && r0 + n <= rows() && ld >= cols());
    const int64_t padded = (cols() + 15) / 16 * 16;
    thread_local std::vector<float> row;
    row.resize(static_cast<std::size_t>(padded));
    const CpuIsa isa = cpu_isa();
    for (int64_t j = 0; j < n; ++j) {
      float* o = out + j * ld;
      float* dst = ld >= padded ? o : row.data();
      if (isa >= CpuIsa::kAvx512)
        fgmp_decode_row_avx512(v_, r0 + j, dst);
      else if (isa >= CpuIsa::kAvx2)
        fgmp_decode_row_avx2(v_, r0 + j, dst);
      else
        fgmp_decode_row_scalar(v_, r0 + j, dst);
      if (dst != o) std::memcpy(o, dst, static_cast<std::size_t>(cols()) * sizeof(float));
      std::fill(o + cols(), o + ld, 0.0f);
    }
  }

 protected:
  // NVFP4 blocks on int8 activations, FP8 blocks in fp32 (fgmp_gemv_q8).
  void gemv_fast(const float* x, float* y) const override { fgmp_gemv_q8(v_, q8_part(), x, y); }
  void gemv_exact(const float* x, float* y) const override { fgmp_gemv(v_, x, y); }
  void matmul_exact(const float* X, int64_t T, float* Y) const override { fgmp_gemm(v_, X, T, Y); }
  std::string gemv_fast_name() const override { return "int8-nvfp4"; }

 private:
  const Nvfp4Packed& q8_part() const {
    std::call_once(q8_once_, [this] { q8_ = fgmp_repack_fp4(v_); });
    return q8_;
  }

  PackedTensor p_;
  mutable std::once_flag q8_once_;
  mutable Nvfp4Packed q8_;  // fgmp_repack_fp4(v_), built once (q8_part)
  HugeVector<uint8_t> fp4_, fp8_;  // the code parts, moved out of p_
  std::size_t bytes_ = 0;          // all parts, as stored
  FgmpWeightView v_;
};

// int<b>[-g<G>]: products from the packed codes (kernels/cpu/int_gemv.h); window products
// decode rows (exactly) into the panel path.
class IntLinear final : public CpuLinear {
 public:
  explicit IntLinear(PackedTensor p) : CpuLinear("int", p.rows, p.cols), p_(std::move(p)) {
    v_ = int_weight_view(p_);  // throws Error(kInput) for a malformed tensor
    qweight_ = take_part_huge(p_, "qweight");
    v_.qweight = qweight_.data();
    const int bits = v_.bits;
    const std::string what = "int tensor [" + std::to_string(p_.rows) + " x " + std::to_string(p_.cols) + "]";
    for (int64_t i = 0; i < v_.rows * v_.groups; ++i) {  // the decoder's checks, without decoding
      if (!std::isfinite(fp16_to_fp32(v_.scales[i])))
        throw Error(ExitCode::kInput, what + ": part 'scales' holds a non-finite value at flat index " + std::to_string(i));
      if (v_.zeros[i] > (1 << bits) - 1)
        throw Error(ExitCode::kInput, what + ": part 'zeros' holds " + std::to_string(v_.zeros[i]) + " at flat index " +
                                          std::to_string(i) + ", above 2^" + std::to_string(bits) + " - 1");
    }
  }
  std::size_t weight_bytes() const override { return v_.bytes(); }
  void decode_rows(int64_t r0, int64_t n, float* out, int64_t ld) const override {
    MPQ_ASSERT(r0 >= 0 && n >= 0 && r0 + n <= rows() && ld >= cols());
    int_decode_rows(v_, r0, n, out, ld);
  }

 protected:
  // int8 activations on AVX-512 VNNI (kernels/cpu/int_gemv.h); the fp32 loop elsewhere.
  void gemv_fast(const float* x, float* y) const override {
    if (int_q8_gemv_available())
      int_q8_gemv(v_, x, y);
    else
      int_gemv(v_, x, y);
  }
  std::string gemv_fast_name() const override { return int_q8_gemv_available() ? "int8act-avx512vnni" : "int-fp32"; }

 private:
  PackedTensor p_;
  HugeVector<uint8_t> qweight_;  // moved out of p_
  IntWeightView v_;
};

// fp32 weights: Eigen (OpenBLAS) in every mode.
class F32Linear final : public CpuLinear {
 public:
  F32Linear(const float* w, int64_t rows, int64_t cols, std::shared_ptr<const void> keepalive)
      : CpuLinear("f32", rows, cols), w_(w), keepalive_(std::move(keepalive)) {}
  std::size_t weight_bytes() const override { return static_cast<std::size_t>(rows() * cols()) * sizeof(float); }
  void decode_rows(int64_t r0, int64_t n, float* out, int64_t ld) const override {
    MPQ_ASSERT(r0 >= 0 && n >= 0 && r0 + n <= rows() && ld >= cols());
    for (int64_t j = 0; j < n; ++j) {
      std::memcpy(out + j * ld, w_ + (r0 + j) * cols(), static_cast<std::size_t>(cols()) * sizeof(float));
      std::fill(out + j * ld + cols(), out + (j + 1) * ld, 0.0f);
    }
  }
  void matmul(const float* X, int64_t T, float* Y, KernelMode) const override {
    if (T == 0 || rows() == 0) return;
    MapRM(Y, T, rows(), Stride(rows())).noalias() =
        ConstMapRM(X, T, cols(), Stride(cols())) * ConstMapRM(w_, rows(), cols(), Stride(cols())).transpose();
  }
  std::string path(int64_t, KernelMode) const override { return "eigen-fp32"; }

 protected:
  void gemv_fast(const float* x, float* y) const override { matmul(x, 1, y, KernelMode::kExact); }
  std::string gemv_fast_name() const override { return "eigen-fp32"; }

 private:
  const float* w_;
  std::shared_ptr<const void> keepalive_;
};

}  // namespace

// ---------------------------------------------------------------- CpuLinear -----------

const char* kernel_mode_name(KernelMode m) { return m == KernelMode::kExact ? "exact" : "fast"; }

KernelMode parse_kernel_mode(const std::string& name) {
  if (name == "fast") return KernelMode::kFast;
  if (name == "exact") return KernelMode::kExact;
  throw Error(ExitCode::kUsage, "kernel mode '" + name + "' unknown (fast, exact)");
}

void CpuLinear::matmul(const float* X, int64_t T, float* Y, KernelMode mode) const {
  if (T <= 0 || rows() == 0) return;
  if (cols() == 0) {
    std::fill(Y, Y + T * rows(), 0.0f);
    return;
  }
  if (mode == KernelMode::kExact) {
    if (T == 1)
      gemv_exact(X, Y);
    else
      matmul_exact(X, T, Y);
    return;
  }
  const PanelKernel pk = panel_kernel();
  if (T >= kPanelMinTokens && pk != PanelKernel::kNone) {
    panel_gemm(
        rows(), cols(),
        [this](int64_t r0, int64_t n, int64_t kp, uint16_t* panel) { decode_panel(r0, n, kp, panel); },
        panel_scale(), X, T, Y, pk);
  } else if (T >= kPanelMinTokens) {
    matmul_exact(X, T, Y);
  } else {
    for (int64_t t = 0; t < T; ++t) gemv_fast(X + t * cols(), Y + t * rows());
  }
}

std::string CpuLinear::path(int64_t T, KernelMode mode) const {
  if (mode == KernelMode::kExact) return "exact-fp32";
  if (T >= kPanelMinTokens) return panel_kernel() != PanelKernel::kNone ? panel_kernel_name(panel_kernel()) : "exact-fp32";
  return format() + "-" + gemv_fast_name();
}

void CpuLinear::gemv_exact(const float* x, float* y) const {
  const int64_t R = rows(), C = cols();
  const int64_t nblk = (R + kGemvBlockRows - 1) / kGemvBlockRows;
  const bool par = R * C >= kParallelMinWeights && nblk > 1 && !omp_in_parallel();
  const Eigen::Map<const Eigen::VectorXf> xv(x, C);
#pragma omp parallel if (par)
  {
    std::vector<float> buf(static_cast<std::size_t>(std::min(kGemvBlockRows, R) * C));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblk; ++b) {
      const int64_t r0 = b * kGemvBlockRows, n = std::min(kGemvBlockRows, R - r0);
      decode_rows(r0, n, buf.data(), C);
      Eigen::Map<Eigen::VectorXf>(y + r0, n).noalias() = ConstMapRM(buf.data(), n, C, Stride(C)) * xv;
    }
  }
}

void CpuLinear::matmul_exact(const float* X, int64_t T, float* Y) const {
  const int64_t R = rows(), C = cols();
  const bool big = R * C * T >= (int64_t{1} << 24) && !omp_in_parallel();
  const int64_t threads = big ? omp_get_max_threads() : 1;
  const int64_t rb = std::max<int64_t>(1, std::min(kExactBlockBytes / (4 * C), (R + threads - 1) / threads));
  const int64_t nblk = (R + rb - 1) / rb;
#pragma omp parallel if (big && nblk > 1)
  {
    std::vector<float> buf(static_cast<std::size_t>(std::min(rb, R) * C));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblk; ++b) {
      const int64_t r0 = b * rb, n = std::min(rb, R - r0);
      decode_rows(r0, n, buf.data(), C);
      MapRM(Y + r0, T, n, Stride(R)).noalias() =
          ConstMapRM(X, T, C, Stride(C)) * ConstMapRM(buf.data(), n, C, Stride(C)).transpose();
    }
  }
}

void CpuLinear::decode_panel(int64_t r0, int64_t n, int64_t kp, uint16_t* panel) const {
  thread_local std::vector<float> buf;
  const int64_t nv = std::max<int64_t>(0, std::min(n, rows() - r0));
  buf.resize(static_cast<std::size_t>(std::max<int64_t>(nv, 1) * kp));
  if (nv > 0) decode_rows(r0, nv, buf.data(), kp);
  panel_from_rows(buf.data(), nv, kp, n, kp, panel);
}

// ---------------------------------------------------------------- factories -----------

namespace {

// fp8: the E4M3 codes as stored (moved out of p) behind the dense kernels.
std::shared_ptr<const CpuLinear> make_fp8_linear(PackedTensor p) {
  DenseWeightView v;
  v.kind = DenseKind::kFp8;
  v.rows = p.rows;
  v.cols = p.cols;
  v.scale = part_scalar(p, "weight_scale");
  HugeVector<uint8_t> bytes = take_part_huge(p, "weight");
  v.data = bytes.data();
  dense_check(v, "fp8 tensor [" + std::to_string(p.rows) + " x " + std::to_string(p.cols) + "]");
  return std::make_shared<const DenseLinear>("fp8", v, std::move(bytes), nullptr);
}

}  // namespace

std::shared_ptr<const CpuLinear> make_cpu_linear(PackedTensor p, bool decode_layout) {
  // Dispatch on the format table's layout family (lib/quant/quantizer.h): one case per
  // on-disk layout; a format sharing a layout (uniform = squeezellm's) shares its kernels.
  const FormatInfo* info = find_format(p.format);
  if (!info) throw Error(ExitCode::kUsage, "no CPU kernel for packed format '" + p.format + "'");
  switch (info->layout) {
    case FormatId::kNvfp4: return std::make_shared<const Nvfp4Linear>(p);
    case FormatId::kSqueezeLLM: return std::make_shared<const LutLinear>(p);
    case FormatId::kFgmp: return std::make_shared<const FgmpLinear>(std::move(p), decode_layout);
    case FormatId::kFp8: return make_fp8_linear(std::move(p));
    case FormatId::kInt: return std::make_shared<const IntLinear>(std::move(p));
  }
  throw Error(ExitCode::kUsage, "no CPU kernel for packed format '" + p.format + "'");
}

std::shared_ptr<const CpuLinear> make_dense_cpu_linear(const TensorView& t, std::shared_ptr<const void> keepalive,
                                                       bool copy) {
  if (t.shape.size() != 2)
    throw_input(t.file, "tensor '" + t.name + "': " + std::to_string(t.shape.size()) + "-D, expected a matrix");
  const int64_t rows = t.shape[0], cols = t.shape[1];
  // copy: every dtype into huge pages. Else in place, but safetensors does not align tensor
  // data (a packed folder's f32 tensor may follow an odd number of U8 bytes): a misaligned
  // f32 matrix (Eigen reads it through float*) is copied once into aligned memory; bf16 /
  // f16 are read at any address (the dense kernels load them unaligned).
  if (t.dtype == DType::F32) {
    if (!copy && reinterpret_cast<std::uintptr_t>(t.data) % alignof(float) == 0)
      return std::make_shared<const F32Linear>(reinterpret_cast<const float*>(t.data), rows, cols, std::move(keepalive));
    auto owned = std::make_shared<HugeVector<float>>(static_cast<std::size_t>(rows * cols));
    std::memcpy(owned->data(), t.data, owned->size() * sizeof(float));
    const float* w = owned->data();
    return std::make_shared<const F32Linear>(w, rows, cols, std::move(owned));
  }
  if (t.dtype != DType::BF16 && t.dtype != DType::F16)
    throw_input(t.file, "tensor '" + t.name + "': dtype " + dtype_name(t.dtype) + ", expected F32, F16 or BF16");
  DenseWeightView v;
  v.kind = t.dtype == DType::BF16 ? DenseKind::kBf16 : DenseKind::kF16;
  v.rows = rows;
  v.cols = cols;
  v.data = t.data;
  HugeVector<uint8_t> owned;
  if (copy) {  // into huge pages; the mapping is not kept alive for this matrix
    const uint8_t* b = static_cast<const uint8_t*>(t.data);
    owned.assign(b, b + t.nbytes);
    keepalive.reset();
  }
  return std::make_shared<const DenseLinear>(t.dtype == DType::BF16 ? "bf16" : "f16", v, std::move(owned),
                                             std::move(keepalive));
}

}  // namespace mpq
