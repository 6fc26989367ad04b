// CUDA dequantization kernels for NVFP4 and FP8 E4M3 weights (see dequant.h).
// Hopper has no FP4 arithmetic: E2M1 codes decode through a 16-entry table; E4M3 bytes
// decode by bit manipulation identical to the CPU reference in lib/numeric/codecs.cpp.
#include "kernels/cuda/dequant.h"

#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "lib/common/error.h"

#define MPQ_CUDA_CHECK(expr)                                                                \
  do {                                                                                      \
    const cudaError_t err_ = (expr);                                                        \
    if (err_ != cudaSuccess)                                                                \
      throw ::mpq::Error(::mpq::ExitCode::kInternal, std::string(__FILE__) + ":" +          \
                                                         std::to_string(__LINE__) + ": " + \
                                                         #expr + ": " + cudaGetErrorString(err_)); \
  } while (0)

namespace mpq::cuda {
namespace {

__constant__ float kE2M1Table[16] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
                                     -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// OCP E4M3: bias 7, subnormals, 0x7F/0xFF NaN, no infinities.
__device__ __forceinline__ float e4m3_to_float(uint8_t b) {
  const int sign = b >> 7, exp = (b >> 3) & 0xF, man = b & 0x7;
  float v;
  if (exp == 0xF && man == 0x7) v = __int_as_float(0x7FC00000);
  else if (exp == 0) v = ldexpf(static_cast<float>(man), -9);  // man/8 * 2^-6
  else v = ldexpf(1.0f + static_cast<float>(man) / 8.0f, exp - 7);
  return sign ? -v : v;
}

// One thread per logical element; the row stride of the padded layout is ceil(cols/16)*16.
__global__ void nvfp4_dequant_kernel(const uint8_t* __restrict__ packed, const uint8_t* __restrict__ scales,
                                     float tensor_scale, int64_t rows, int64_t cols, float* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, c = i % cols;
  const int64_t blocks = (cols + 15) / 16;
  const uint8_t byte = packed[r * blocks * 8 + c / 2];
  const uint8_t code = (c & 1) ? (byte >> 4) : (byte & 0xF);
  out[i] = kE2M1Table[code] * e4m3_to_float(scales[r * blocks + c / 16]) * tensor_scale;
}

__global__ void fp8_dequant_kernel(const uint8_t* __restrict__ q, float scale, int64_t n, float* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = e4m3_to_float(q[i]) * scale;
}

// Device buffer freed on scope exit.
template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  explicit DeviceBuffer(std::size_t n) { MPQ_CUDA_CHECK(cudaMalloc(&ptr, n * sizeof(T))); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

unsigned grid_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

std::string device_name() {
  if (device_count() == 0) return "";
  cudaDeviceProp p{};
  MPQ_CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
  return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ")";
}

void nvfp4_dequantize(const uint8_t* packed, const uint8_t* block_scales, float tensor_scale, int64_t rows,
                      int64_t cols, float* out) {
  const int64_t blocks = (cols + 15) / 16, n = rows * cols;
  DeviceBuffer<uint8_t> d_packed(static_cast<std::size_t>(rows * blocks * 8));
  DeviceBuffer<uint8_t> d_scales(static_cast<std::size_t>(rows * blocks));
  DeviceBuffer<float> d_out(static_cast<std::size_t>(n));
  MPQ_CUDA_CHECK(cudaMemcpy(d_packed.ptr, packed, rows * blocks * 8, cudaMemcpyHostToDevice));
  MPQ_CUDA_CHECK(cudaMemcpy(d_scales.ptr, block_scales, rows * blocks, cudaMemcpyHostToDevice));
  nvfp4_dequant_kernel<<<grid_for(n, 256), 256>>>(d_packed.ptr, d_scales.ptr, tensor_scale, rows, cols, d_out.ptr);
  MPQ_CUDA_CHECK(cudaGetLastError());
  MPQ_CUDA_CHECK(cudaMemcpy(out, d_out.ptr, n * sizeof(float), cudaMemcpyDeviceToHost));
}

void fp8_dequantize(const uint8_t* q, float scale, int64_t n, float* out) {
  DeviceBuffer<uint8_t> d_q(static_cast<std::size_t>(n));
  DeviceBuffer<float> d_out(static_cast<std::size_t>(n));
  MPQ_CUDA_CHECK(cudaMemcpy(d_q.ptr, q, n, cudaMemcpyHostToDevice));
  fp8_dequant_kernel<<<grid_for(n, 256), 256>>>(d_q.ptr, scale, n, d_out.ptr);
  MPQ_CUDA_CHECK(cudaGetLastError());
  MPQ_CUDA_CHECK(cudaMemcpy(out, d_out.ptr, n * sizeof(float), cudaMemcpyDeviceToHost));
}

}  // namespace mpq::cuda
