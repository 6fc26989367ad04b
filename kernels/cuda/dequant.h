// CUDA dequantization of mpq's packed weight layouts (host API; compiled only when
// MPQ_HAVE_CUDA). Layouts: lib/quant/nvfp4.h and lib/quant/fp8.h (ModelOpt).
// Every CUDA call and launch is checked; failures throw mpq::Error(kInternal) with file:line.
#pragma once

#include <cstdint>
#include <string>

namespace mpq::cuda {

/// Number of visible CUDA devices; 0 when there is no driver or device (never throws).
int device_count();

/// "NVIDIA H100 80GB HBM3 (sm_90)" for device 0, or "" when none.
std::string device_name();

/// NVFP4 -> fp32 on the GPU. Host pointers: `packed` U8 [rows, ceil(cols/16)*8],
/// `block_scales` E4M3 bytes [rows, ceil(cols/16)], `tensor_scale` the fp32 second-level
/// scale; `out` fp32 [rows, cols]. Copies in, runs one thread per element, copies out.
void nvfp4_dequantize(const uint8_t* packed, const uint8_t* block_scales, float tensor_scale,
                      int64_t rows, int64_t cols, float* out);

/// FP8 E4M3 -> fp32 on the GPU: out[i] = e4m3(q[i]) * scale, n elements (host pointers).
void fp8_dequantize(const uint8_t* q, float scale, int64_t n, float* out);

}  // namespace mpq::cuda
