// The CPU runtime form of one weight matrix: the stored (or repacked) weight and the kernels
// that multiply it, behind one interface, so the model's forward pass treats every format
// alike. make_cpu_linear() is the one place that maps a format to its kernels (the hook of
// the format table): a new format adds a CpuLinear subclass (a fast GEMV, an exact fp32 row
// decoder, optionally a bf16 panel decoder) and one case there.
//
// Paths of matmul(X [T, cols]) -> Y [T, rows] (KernelMode; docs/cli.md, mpq-eval --kernels):
//   kFast, T <  kPanelMinTokens: the format's GEMV per token (nvfp4 and squeezellm: int8
//                                activations, kernels/cpu/nvfp4_gemv.h, lut_vnni.h; fp8,
//                                fgmp, bf16, f16: fp32-exact kernels)
//   kFast, T >= kPanelMinTokens: bf16 panel GEMM (kernels/cpu/panel_gemm.h; AMX or
//                                AVX512_BF16), else as kExact
//   kExact:                      fp32 products of the exactly decoded weights and fp32
//                                activations (rows decoded in blocks, Eigen GEMV / GEMM)
//   f32 weights:                 always Eigen (OpenBLAS) on the fp32 weights
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "formats/safetensors.h"   // TensorView
#include "lib/quant/quantizer.h"   // PackedTensor

namespace mpq {

/// How CpuLinear::matmul computes (file comment).
enum class KernelMode { kFast, kExact };

/// "fast" or "exact".
const char* kernel_mode_name(KernelMode m);
/// Parses kernel_mode_name(); throws Error(kUsage) naming the known values.
KernelMode parse_kernel_mode(const std::string& name);

/// Tokens from which a fast matmul runs the panel GEMM instead of one GEMV per token
/// (measured: below it the per-call decode of every weight costs more than the GEMVs).
constexpr int64_t kPanelMinTokens = 16;

/// One weight matrix W [rows, cols] (out x in) in its CPU runtime form. Immutable after
/// construction; matmul is safe to call from several threads at once.
class CpuLinear {
 public:
  CpuLinear(std::string format, int64_t rows, int64_t cols) : format_(std::move(format)), rows_(rows), cols_(cols) {}
  virtual ~CpuLinear() = default;
  CpuLinear(const CpuLinear&) = delete;
  CpuLinear& operator=(const CpuLinear&) = delete;

  /// The stored format: "f32", "f16", "bf16", "fp8", "nvfp4", "fgmp", "squeezellm".
  const std::string& format() const { return format_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  /// Bytes one product reads from memory: the kernel layout's weights, scales, tables and
  /// sparse part (for bandwidth bounds).
  virtual std::size_t weight_bytes() const = 0;

  /// Y [T, rows] = X [T, cols] W^T, fp32 row-major, T >= 0 (paths: file comment).
  virtual void matmul(const float* X, int64_t T, float* Y, KernelMode mode) const;
  /// The path matmul takes for T tokens: e.g. "nvfp4-int8-avx512", "amx-bf16", "exact".
  virtual std::string path(int64_t T, KernelMode mode) const;

  /// Rows [r0, r0 + n) of W in fp32, exactly the format's reference decoder: out [n, ld],
  /// columns [cols, ld) set to 0. Requires 0 <= r0, r0 + n <= rows, ld >= cols.
  virtual void decode_rows(int64_t r0, int64_t n, float* out, int64_t ld) const = 0;

 protected:
  /// y [rows] = W x on the fast path (see the subclass for its rounding).
  virtual void gemv_fast(const float* x, float* y) const = 0;
  /// The fast GEMV's name for path().
  virtual std::string gemv_fast_name() const = 0;
  /// y = W x with fp32 x and exactly decoded W (default: rows decoded in blocks).
  virtual void gemv_exact(const float* x, float* y) const;
  /// Y = X W^T, exact (default: row blocks decoded, one Eigen GEMM each).
  virtual void matmul_exact(const float* X, int64_t T, float* Y) const;
  /// Rows [r0, r0 + n) (n a multiple of 16, rows past rows() 0) as a bf16 panel of kp
  /// columns (kernels/cpu/panel_gemm.h), in units of panel_scale(). Default: decode_rows,
  /// bf16 round to nearest even, scale 1.
  virtual void decode_panel(int64_t r0, int64_t n, int64_t kp, uint16_t* panel) const;
  virtual float panel_scale() const { return 1.0f; }

 private:
  std::string format_;
  int64_t rows_ = 0, cols_ = 0;
};

/// The runtime form of a packed tensor (read_packed() validated its parts): "nvfp4" and
/// "squeezellm" are repacked for their int8 kernels, "fp8" and "fgmp" kept as stored. Takes
/// ownership of p's bytes (or repacks and frees them). Throws Error(kInput) for contents
/// the kernels reject (E4M3 NaN codes, non-finite scales or table entries, a bad FGMP
/// layout), Error(kUsage) for another format. decode_layout: build now what only the
/// single-token path reads (fgmp: its NVFP4 repack, fgmp_repack_fp4, 0.5625 bytes per weight
/// more), as LoadOptions::copy_dense does for decode; otherwise it is built at the first
/// single-token product.
std::shared_ptr<const CpuLinear> make_cpu_linear(PackedTensor p, bool decode_layout = false);

/// The runtime form of a dense F32 / F16 / BF16 matrix `t` [rows, cols] in its stored dtype.
/// copy = false: read in place, `keepalive` owns the mapping t.data points into (a misaligned
/// F32 matrix is still copied). copy = true: copied once into huge-page memory
/// (lib/common/huge_pages.h), which the GEMVs read faster than a mapped file's page cache
/// (docs/results.md section 11, "Huge pages"); keepalive is then released. Throws
/// Error(kInput) for another dtype or a tensor that is not 2-D.
std::shared_ptr<const CpuLinear> make_dense_cpu_linear(const TensorView& t, std::shared_ptr<const void> keepalive,
                                                       bool copy = false);

}  // namespace mpq
