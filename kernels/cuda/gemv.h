// CUDA matrix-vector and small-batch products y = x W^T straight from mpq's packed weight
// layouts (host API; compiled only when MPQ_HAVE_CUDA). Layouts: lib/quant/fp8.h,
// lib/quant/nvfp4.h (ModelOpt), lib/quant/squeezellm.h (LUT + CSR), kernels/cpu/fgmp_gemv.h
// (FGMP); the baseline is dense fp16 through cuBLAS. Every CUDA call and launch is checked;
// failures throw mpq::Error(kInternal) naming the call and file:line.
//
// Batch-1 decode is bound by memory bandwidth: a format's speed limit is its bytes, so the
// kernels read every weight byte once per call (coalesced, 16-byte loads where the layout
// allows) and keep x in shared memory / registers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lib/quant/quantizer.h"

namespace mpq::cuda {

/// Largest batch (rows of X) the small-batch kernels take; larger windows go through
/// dequantize + cuBLAS GEMM.
constexpr int kMaxGemvBatch = 16;

/// Device memory of `bytes` bytes (RAII, move-only; a moved-from buffer is empty, data()
/// nullptr). Throws Error(kInternal) on a CUDA error; upload()/download() copy synchronously
/// and throw Error(kUsage) when [offset, offset + bytes) leaves the buffer.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return ptr_; }
  std::size_t bytes() const { return bytes_; }
  void upload(const void* host, std::size_t bytes, std::size_t offset = 0);
  void download(void* host, std::size_t bytes, std::size_t offset = 0) const;

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

/// One linear layer's weights in device memory, in their packed form, for y = x W^T.
/// Formats: "f16" (dense IEEE fp16 [rows, cols], the cuBLAS baseline), "fp8", "nvfp4",
/// "squeezellm" (2/3/4-bit LUT, optional CSR part), "fgmp".
class DeviceLinear {
 public:
  /// Uploads a packed tensor (as read_packed() / Quantizer::encode() give it). Throws
  /// Error(kUsage) for an unsupported format, Error(kInput) for a malformed tensor (the
  /// checks of the format's decode(): part dtypes/shapes/sizes, the squeezellm CSR structure
  /// and finite LUT / sparse values, fgmp_check()), and also for a scalar scale (fp8
  /// weight_scale, nvfp4 weight_scale_2, fgmp weight_fp4_scale_2 / weight_fp8_scale) that is
  /// not finite or exceeds 1e30 in magnitude. All checks run on the host before any device
  /// call. Rows of the FP8 / NVFP4 / LUT streams are zero-padded on the device to the
  /// kernels' 16-byte (LUT: 4b-byte) units; weight_bytes() counts that padding.
  static DeviceLinear upload(const PackedTensor& p);
  /// Uploads dense fp16 weights (IEEE binary16 bit patterns, row-major [rows, cols]).
  /// Throws Error(kInput) for a negative shape or one beyond cuBLAS's int dimensions.
  static DeviceLinear upload_f16(const uint16_t* w, int64_t rows, int64_t cols);

  DeviceLinear(DeviceLinear&&) noexcept;
  DeviceLinear& operator=(DeviceLinear&&) noexcept;
  ~DeviceLinear();

  const std::string& format() const;
  int64_t rows() const;
  int64_t cols() const;
  /// Bytes of the weights on the device (what one product must read).
  std::size_t weight_bytes() const;

  /// Y[b, :] = X[b, :] W^T for b < batch, 1 <= batch <= kMaxGemvBatch. X: device fp32
  /// [batch, cols] row-major; Y: device fp32 [batch, rows]. Asynchronous on the default
  /// stream. Throws Error(kUsage) for a batch out of range or a null pointer. "f16" converts
  /// X to fp16 into a scratch buffer of this object, so one DeviceLinear must not run gemv
  /// from several host threads at once.
  void gemv(const float* x_dev, int64_t batch, float* y_dev) const;

  struct Impl;

 private:
  explicit DeviceLinear(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Waits for all device work.
void synchronize();

/// Times `fn` (which enqueues device work) with CUDA events: warm-up calls, then `reps`
/// timed calls; returns each call's time in microseconds. Throws Error(kUsage) for
/// warmup < 0 or reps < 1.
std::vector<double> time_device_us(const std::function<void()>& fn, int warmup, int reps);

/// Device-to-device cudaMemcpy bandwidth over `bytes` (read + write counted once each:
/// 2 * bytes / time), GB/s, median of `reps`.
double device_copy_bandwidth_gbps(std::size_t bytes, int reps);

}  // namespace mpq::cuda
