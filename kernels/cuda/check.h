// Checks of CUDA runtime and cuBLAS calls for mpq's CUDA code (host side; compiled only when
// MPQ_HAVE_CUDA). Every call and kernel launch goes through MPQ_CUDA_CHECK / MPQ_CUBLAS_CHECK
// (launches: MPQ_CUDA_CHECK(cudaGetLastError()) right after); a failure throws
// mpq::Error(ExitCode::kInternal) "<file>:<line>: <call>: <CUDA error string or cuBLAS status>".
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "lib/common/error.h"

#define MPQ_CUDA_CHECK(expr) ::mpq::cuda::check_cuda((expr), #expr, __FILE__, __LINE__)
#define MPQ_CUBLAS_CHECK(expr) ::mpq::cuda::check_cublas((expr), #expr, __FILE__, __LINE__)

namespace mpq::cuda {

/// Throws Error(kInternal) naming `expr` and file:line unless err == cudaSuccess.
inline void check_cuda(cudaError_t err, const char* expr, const char* file, int line) {
  if (err != cudaSuccess)
    throw Error(ExitCode::kInternal, std::string(file) + ":" + std::to_string(line) + ": " + expr + ": " +
                                         cudaGetErrorString(err));
}

/// Throws Error(kInternal) naming `expr`, file:line and the status unless st is SUCCESS.
inline void check_cublas(cublasStatus_t st, const char* expr, const char* file, int line) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw Error(ExitCode::kInternal, std::string(file) + ":" + std::to_string(line) + ": " + expr +
                                         ": cuBLAS status " + std::to_string(static_cast<int>(st)));
}

}  // namespace mpq::cuda
