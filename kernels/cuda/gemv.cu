// CUDA matrix-vector and small-batch kernels y = x W^T straight from mpq's packed layouts
// (contract: kernels/cuda/gemv.h). Formats: FP8 (lib/quant/fp8.h), NVFP4 (lib/quant/nvfp4.h),
// SqueezeLLM LUT + CSR (lib/quant/squeezellm.h), FGMP (kernels/cpu/fgmp_gemv.h); dense fp16
// goes through cuBLAS (cublasGemmEx, fp32 compute) as the baseline.
//
// Work split (every packed format, one kernel template `gemv_kernel<Format, BMAX>`):
//
//   block = 8 warps, warp w of block k owns output row r = 8k + w (all of its columns)
//     | the row is cut into "units" of F::kCols columns (FP8: 16 = 16 bytes; NVFP4: 32 = 16
//     | bytes + 2 scale bytes; LUT: 32 = 4b bytes; FGMP: one 16-column block)
//     | round i: lane l takes unit 32i + l, so a warp reads 32 consecutive units of the row
//     |   (coalesced 16-byte loads where the unit is 16 bytes); the next round's unit is
//     |   loaded before this one is used (two loads in flight per lane)
//     |   decode the unit to F::kCols fp32 weights in registers, then for each batch row b:
//     |   acc[b] += sum_n w[n] * x[b, c0 + n]   (x through the read-only cache; float4 loads
//     |   when rows of x are 16-byte aligned; columns >= cols read as 0)
//     | LUT only: lanes stride over the row's CSR entries, acc[b] += val * x[b, col]
//     | acc[b] summed over the warp by shuffles; lane 0 writes y[b, r] = sum * row scale
//
// Weights are read with __ldcs (streamed once; they must not evict x from L1/L2). BMAX is a
// compile-time batch bound in {1, 2, 4, 8, 16}; rows of the bound beyond `batch` are skipped.
//
// Device layout (DeviceLinear::upload repacks on the host, Marlin's "repack into the
// kernel's order" in its mildest form): each row of the FP8 / NVFP4 / LUT index stream is
// zero-padded to a whole number of units, so every unit load is aligned; a padding code
// decodes to a finite value (0, or the LUT's entry 0) that multiplies x = 0. NVFP4 block
// scales are padded the same way (scale 0). FGMP parts are uploaded as they are.
//
// Decoding: E2M1 without FP4 instructions by placing the code's bits into an fp16
// (kernels/cuda/gemv_decode.h, tested exhaustively on the host); E4M3 (FP8 weights, NVFP4 and
// FGMP block scales) by the cvt.rn.f16x2.e4m3x2 conversion instruction (__nv_cvt_fp8x2_to_
// halfraw2, cuda_fp8.h), exact and NaN-preserving; LUT entries fp16 -> fp32 into a per-warp
// 16-entry shared-memory table.
#include "kernels/cuda/gemv.h"

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/check.h"  // MPQ_CUDA_CHECK, MPQ_CUBLAS_CHECK
#include "kernels/cuda/gemv_decode.h"
#include "lib/common/error.h"
#include "lib/numeric/codecs.h"
#include "lib/quant/fgmp.h"
#include "lib/quant/quant_common.h"
#include "lib/quant/squeezellm.h"

namespace mpq::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = 32 * kWarpsPerBlock;
constexpr unsigned kFullMask = 0xFFFFFFFFu;
/// Largest accepted magnitude of a tensor scale (fp8 scale, NVFP4 / FGMP global scales): the
/// kernels fold 2^14 and an E4M3 block scale (<= 448) into it without overflowing fp32.
constexpr float kMaxTensorScale = 1e30f;

// ---------------------------------------------------------------------------------------
// Device helpers
// ---------------------------------------------------------------------------------------

__device__ __forceinline__ float half_bits_to_float(uint32_t h) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(h & 0xFFFFu)));
}

// One E4M3 byte -> fp32 through the conversion instruction (exact; NaN stays NaN).
__device__ __forceinline__ float e4m3_to_float(uint32_t b) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(b & 0xFFu), __NV_E4M3);
  return half_bits_to_float(h.x);
}

// 16 E4M3 bytes (4 little-endian words, byte j of word k = element 4k + j) -> fp32 * scale.
__device__ __forceinline__ void decode_e4m3x16(const uint32_t (&q)[4], float scale, float* w) {
#pragma unroll
  for (int k = 0; k < 4; ++k)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const __half2_raw p =
          __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>((q[k] >> (16 * h)) & 0xFFFFu), __NV_E4M3);
      w[4 * k + 2 * h] = half_bits_to_float(p.x) * scale;
      w[4 * k + 2 * h + 1] = half_bits_to_float(p.y) * scale;
    }
}

// 8 E2M1 codes (one little-endian word, element j in bits [4j, 4j + 4)) -> fp32 * scale,
// where `scale` already carries the 2^14 of e2m1x2_to_half2_bits.
__device__ __forceinline__ void decode_e2m1x8(uint32_t q, float scale, float* w) {
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    const uint32_t h = e2m1x2_to_half2_bits(q >> (4 * s));  // elements s and s + 4
    w[s] = half_bits_to_float(h) * scale;
    w[s + 4] = half_bits_to_float(h >> 16) * scale;
  }
}

// sum_n w[n] * xb[c0 + n] over one row xb of X; columns >= cols count as 0. vec: the rows of X
// are 16-byte aligned (cols % 4 == 0 and X aligned) so whole units use float4 loads.
template <int N>
__device__ __forceinline__ float dot_x(const float (&w)[N], const float* __restrict__ xb, int64_t c0,
                                       int64_t cols, bool vec) {
  float s = 0.0f;
  if (vec && c0 + N <= cols) {
    const float4* xv = reinterpret_cast<const float4*>(xb + c0);
#pragma unroll
    for (int k = 0; k < N / 4; ++k) {
      const float4 v = __ldg(xv + k);
      s = fmaf(w[4 * k], v.x, s);
      s = fmaf(w[4 * k + 1], v.y, s);
      s = fmaf(w[4 * k + 2], v.z, s);
      s = fmaf(w[4 * k + 3], v.w, s);
    }
  } else {
#pragma unroll
    for (int n = 0; n < N; ++n)
      if (c0 + n < cols) s = fmaf(w[n], __ldg(xb + c0 + n), s);
  }
  return s;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// ---------------------------------------------------------------------------------------
// Formats. Each gives: kCols (columns per unit), units (per row), row_scale (applied to the
// row's sum), Ctx (per-row state), Raw (one unit's loaded bytes) and
//   begin(row, lane, warp_smem[16]) -> Ctx      (may fill the warp's 16-float table)
//   load(ctx, u, valid, lane) -> Raw             (called by all 32 lanes in step; no memory
//                                                 access when !valid)
//   decode(ctx, raw, w[kCols])                   (fp32 weights before row_scale)
//   finish<BMAX>(ctx, lane, x, batch, acc)       (extra terms: the LUT's CSR part)
// ---------------------------------------------------------------------------------------

// FP8 E4M3 with one per-tensor scale. Device: q [rows, units * 16] (row zero-padded).
struct Fp8Format {
  static constexpr int kCols = 16;
  int64_t rows = 0, cols = 0, units = 0;
  float row_scale = 1.0f;  // the fp8 tensor scale
  const uint8_t* q = nullptr;

  struct Ctx { const uint4* q; };
  struct Raw { uint4 v; };
  __device__ Ctx begin(int64_t r, int, float*) const {
    return {reinterpret_cast<const uint4*>(q + r * units * 16)};
  }
  __device__ Raw load(Ctx& c, int64_t u, bool valid, int) const {
    Raw r{make_uint4(0, 0, 0, 0)};
    if (valid) r.v = __ldcs(c.q + u);
    return r;
  }
  __device__ void decode(const Ctx&, const Raw& r, float (&w)[kCols]) const {
    const uint32_t q4[4] = {r.v.x, r.v.y, r.v.z, r.v.w};
    decode_e4m3x16(q4, 1.0f, w);
  }
  template <int BMAX>
  __device__ void finish(const Ctx&, int, const float*, int, float (&)[BMAX]) const {}
};

// NVFP4 (ModelOpt). Device: q [rows, units * 16] (2 blocks of 8 bytes per unit), scales
// [rows, units * 2] E4M3 (padded with 0), row_scale = weight_scale_2.
struct Nvfp4Format {
  static constexpr int kCols = 32;
  int64_t rows = 0, cols = 0, units = 0;
  float row_scale = 1.0f;
  const uint8_t* q = nullptr;
  const uint8_t* scales = nullptr;

  struct Ctx { const uint4* q; const unsigned short* s; };
  struct Raw { uint4 v; uint32_t s; };
  __device__ Ctx begin(int64_t r, int, float*) const {
    return {reinterpret_cast<const uint4*>(q + r * units * 16),
            reinterpret_cast<const unsigned short*>(scales + r * units * 2)};
  }
  __device__ Raw load(Ctx& c, int64_t u, bool valid, int) const {
    Raw r{make_uint4(0, 0, 0, 0), 0u};
    if (valid) {
      r.v = __ldcs(c.q + u);
      r.s = __ldcs(c.s + u);
    }
    return r;
  }
  __device__ void decode(const Ctx&, const Raw& r, float (&w)[kCols]) const {
    // Block 2u: words x, y (elements 0..15); block 2u + 1: words z, w (elements 16..31).
    const float s0 = e4m3_to_float(r.s) * 16384.0f, s1 = e4m3_to_float(r.s >> 8) * 16384.0f;
    decode_e2m1x8(r.v.x, s0, w);
    decode_e2m1x8(r.v.y, s0, w + 8);
    decode_e2m1x8(r.v.z, s1, w + 16);
    decode_e2m1x8(r.v.w, s1, w + 24);
  }
  template <int BMAX>
  __device__ void finish(const Ctx&, int, const float*, int, float (&)[BMAX]) const {}
};

// SqueezeLLM b-bit LUT + optional CSR. Device: q [rows, units * BITS] little-endian words
// (32 indices per unit, row zero-padded), lut [rows, 2^BITS] fp16, CSR as on disk.
template <int BITS>
struct LutFormat {
  static constexpr int kCols = 32;
  static constexpr int kEntries = 1 << BITS;
  int64_t rows = 0, cols = 0, units = 0;
  float row_scale = 1.0f;
  const uint32_t* q = nullptr;
  const uint16_t* lut = nullptr;
  const int32_t* rowptr = nullptr;  // nullptr: no sparse part
  const void* col = nullptr;
  bool col_is_i16 = true;
  const uint16_t* val = nullptr;

  struct Ctx { int64_t row; const uint32_t* q; const float* table; };
  struct Raw { uint32_t w[BITS]; };
  __device__ Ctx begin(int64_t r, int lane, float* smem) const {
    if (lane < kEntries) smem[lane] = half_bits_to_float(lut[r * kEntries + lane]);
    __syncwarp();
    return {r, q + r * units * BITS, smem};
  }
  __device__ Raw load(Ctx& c, int64_t u, bool valid, int) const {
    Raw r{};
    if (!valid) return r;
    const uint32_t* p = c.q + u * BITS;
    if constexpr (BITS == 4) {
      const uint4 v = __ldcs(reinterpret_cast<const uint4*>(p));
      r.w[0] = v.x, r.w[1] = v.y, r.w[2] = v.z, r.w[3] = v.w;
    } else if constexpr (BITS == 2) {
      const uint2 v = __ldcs(reinterpret_cast<const uint2*>(p));
      r.w[0] = v.x, r.w[1] = v.y;
    } else {
#pragma unroll
      for (int i = 0; i < BITS; ++i) r.w[i] = __ldcs(p + i);
    }
    return r;
  }
  __device__ void decode(const Ctx& c, const Raw& r, float (&w)[kCols]) const {
#pragma unroll
    for (int j = 0; j < kCols; ++j) w[j] = c.table[lut_group_index(r.w, j, BITS)];
  }
  template <int BMAX>
  __device__ void finish(const Ctx& c, int lane, const float* __restrict__ x, int batch,
                         float (&acc)[BMAX]) const {
    if (rowptr == nullptr) return;
    const int32_t end = rowptr[c.row + 1];
    for (int32_t e = rowptr[c.row] + lane; e < end; e += 32) {
      const int64_t cc = col_is_i16 ? static_cast<const int16_t*>(col)[e] : static_cast<const int32_t*>(col)[e];
      const float v = half_bits_to_float(val[e]);
#pragma unroll
      for (int b = 0; b < BMAX; ++b)
        if (b < batch) acc[b] = fmaf(v, __ldg(x + b * cols + cc), acc[b]);
    }
  }
};

// FGMP: per 16-column block NVFP4 or FP8 (layout in kernels/cpu/fgmp_gemv.h). A lane finds
// its block's position in the NVFP4 or FP8 stream from the warp's ballot of map bits: the
// blocks of one round of 32 are consecutive, so rank = set bits of lower lanes plus the
// blocks of earlier rounds (no prefix scan of the map).
struct FgmpFormat {
  static constexpr int kCols = 16;
  int64_t rows = 0, cols = 0, units = 0;  // units = NB blocks per row
  float row_scale = 1.0f;
  int64_t map_bytes = 0;  // MB per row
  const uint8_t* map = nullptr;
  const int32_t* row_offset = nullptr;
  const uint8_t* fp4 = nullptr;
  const uint8_t* fp4_scale = nullptr;
  const uint8_t* fp8 = nullptr;
  float fp4_scale_2 = 0.0f, fp8_scale = 0.0f;

  struct Ctx { const uint8_t* map; int64_t next8, next4; };
  struct Raw { uint4 v; uint32_t scale; bool is8; };
  __device__ Ctx begin(int64_t r, int, float*) const {
    const int64_t off = row_offset[r];
    return {map + r * map_bytes, off, r * units - off};
  }
  __device__ Raw load(Ctx& c, int64_t u, bool valid, int lane) const {
    const bool is8 = valid && ((c.map[u >> 3] >> (u & 7)) & 1u);
    const unsigned m8 = __ballot_sync(kFullMask, is8);
    const unsigned m4 = __ballot_sync(kFullMask, valid && !is8);
    const unsigned below = (1u << lane) - 1u;
    Raw r{make_uint4(0, 0, 0, 0), 0u, is8};
    if (is8) {
      r.v = __ldcs(reinterpret_cast<const uint4*>(fp8) + c.next8 + __popc(m8 & below));
    } else if (valid) {
      const int64_t i = c.next4 + __popc(m4 & below);
      const uint2 v = __ldcs(reinterpret_cast<const uint2*>(fp4) + i);
      r.v.x = v.x, r.v.y = v.y;
      r.scale = __ldcs(fp4_scale + i);
    }
    c.next8 += __popc(m8);
    c.next4 += __popc(m4);
    return r;
  }
  __device__ void decode(const Ctx&, const Raw& r, float (&w)[kCols]) const {
    if (r.is8) {
      const uint32_t q4[4] = {r.v.x, r.v.y, r.v.z, r.v.w};
      decode_e4m3x16(q4, fp8_scale, w);
    } else {
      const float s = e4m3_to_float(r.scale) * 16384.0f * fp4_scale_2;
      decode_e2m1x8(r.v.x, s, w);
      decode_e2m1x8(r.v.y, s, w + 8);
    }
  }
  template <int BMAX>
  __device__ void finish(const Ctx&, int, const float*, int, float (&)[BMAX]) const {}
};

// ---------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------

// Y[b, r] = X[b, :] W[r, :]^T for b < batch <= BMAX (X fp32 [batch, cols], Y fp32 [batch, rows]).
template <class F, int BMAX>
__global__ void __launch_bounds__(kThreads) gemv_kernel(const F f, const float* __restrict__ x, int batch,
                                                        bool vec_x, float* __restrict__ y) {
  __shared__ float table[kWarpsPerBlock][16];
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (row >= f.rows) return;  // the whole warp: nothing below synchronizes beyond it
  typename F::Ctx ctx = f.begin(row, lane, table[warp]);
  float acc[BMAX];
#pragma unroll
  for (int b = 0; b < BMAX; ++b) acc[b] = 0.0f;
  typename F::Raw cur = f.load(ctx, lane, lane < f.units, lane);
  for (int64_t base = 0; base < f.units; base += 32) {  // same trip count on every lane
    const int64_t u = base + lane;
    const typename F::Raw next = f.load(ctx, u + 32, u + 32 < f.units, lane);
    if (u < f.units) {
      float w[F::kCols];
      f.decode(ctx, cur, w);
      const int64_t c0 = u * F::kCols;
#pragma unroll
      for (int b = 0; b < BMAX; ++b)
        if (b < batch) acc[b] += dot_x<F::kCols>(w, x + b * f.cols, c0, f.cols, vec_x);
    }
    cur = next;
  }
  f.template finish<BMAX>(ctx, lane, x, batch, acc);
#pragma unroll
  for (int b = 0; b < BMAX; ++b) {
    const float s = warp_sum(acc[b]);
    if (lane == 0 && b < batch) y[b * f.rows + row] = s * f.row_scale;
  }
}

// fp32 -> fp16 (round to nearest even), n elements: the cuBLAS baseline's x.
__global__ void to_half_kernel(const float* __restrict__ x, int64_t n, __half* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __float2half_rn(x[i]);
}

template <class F>
void launch_gemv(const F& f, const float* x, int64_t batch, bool vec_x, float* y) {
  const int64_t blocks = (f.rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 0x7FFFFFFF) throw Error(ExitCode::kUsage, "cuda gemv: " + std::to_string(f.rows) + " rows exceed the grid");
  const dim3 grid(static_cast<unsigned>(blocks)), block(kThreads);
  const int bt = static_cast<int>(batch);
  if (batch <= 1) gemv_kernel<F, 1><<<grid, block>>>(f, x, bt, vec_x, y);
  else if (batch <= 2) gemv_kernel<F, 2><<<grid, block>>>(f, x, bt, vec_x, y);
  else if (batch <= 4) gemv_kernel<F, 4><<<grid, block>>>(f, x, bt, vec_x, y);
  else if (batch <= 8) gemv_kernel<F, 8><<<grid, block>>>(f, x, bt, vec_x, y);
  else gemv_kernel<F, 16><<<grid, block>>>(f, x, bt, vec_x, y);
  MPQ_CUDA_CHECK(cudaGetLastError());
}

// One cuBLAS handle for the process (created on first use, on the default stream).
cublasHandle_t cublas_handle() {
  static cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    MPQ_CUBLAS_CHECK(cublasCreate(&h));
    return h;
  }();
  return handle;
}

// ---------------------------------------------------------------------------------------
// Host-side checks and repacking
// ---------------------------------------------------------------------------------------

std::string tensor_what(const PackedTensor& p) {
  return "cuda upload: " + p.format + " tensor [" + std::to_string(p.rows) + " x " + std::to_string(p.cols) + "]";
}

// A scalar fp32 scale part, finite with |s| <= kMaxTensorScale, else Error(kInput).
float checked_scale(const PackedTensor& p, const PackedPart& part) {
  const float s = quant_detail::load_f32_le(part.bytes.data());
  if (!std::isfinite(s) || std::fabs(s) > kMaxTensorScale)
    throw Error(ExitCode::kInput, tensor_what(p) + ": part '" + part.suffix + "' is " + std::to_string(s) +
                                      ", expected a finite scale of magnitude <= 1e30");
  return s;
}

// Rows of src_stride bytes copied into rows of dst_stride >= src_stride bytes, zero-padded.
std::vector<uint8_t> pad_rows(const std::vector<uint8_t>& src, int64_t rows, int64_t src_stride,
                              int64_t dst_stride) {
  std::vector<uint8_t> out(static_cast<std::size_t>(rows * dst_stride), 0);
  for (int64_t r = 0; r < rows; ++r)
    if (src_stride > 0) std::memcpy(out.data() + r * dst_stride, src.data() + r * src_stride, static_cast<std::size_t>(src_stride));
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// DeviceBuffer
// ---------------------------------------------------------------------------------------

DeviceBuffer::DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
  if (bytes > 0) MPQ_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);  // no throw from a destructor; a failed free leaks at worst
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::upload(const void* host, std::size_t bytes, std::size_t offset) {
  if (offset > bytes_ || bytes > bytes_ - offset)
    throw Error(ExitCode::kUsage, "DeviceBuffer::upload: " + std::to_string(bytes) + " bytes at offset " +
                                      std::to_string(offset) + " exceed the buffer's " + std::to_string(bytes_));
  if (bytes > 0) MPQ_CUDA_CHECK(cudaMemcpy(static_cast<char*>(ptr_) + offset, host, bytes, cudaMemcpyHostToDevice));
}

void DeviceBuffer::download(void* host, std::size_t bytes, std::size_t offset) const {
  if (offset > bytes_ || bytes > bytes_ - offset)
    throw Error(ExitCode::kUsage, "DeviceBuffer::download: " + std::to_string(bytes) + " bytes at offset " +
                                      std::to_string(offset) + " exceed the buffer's " + std::to_string(bytes_));
  if (bytes > 0) MPQ_CUDA_CHECK(cudaMemcpy(host, static_cast<const char*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost));
}

// ---------------------------------------------------------------------------------------
// DeviceLinear
// ---------------------------------------------------------------------------------------

struct DeviceLinear::Impl {
  std::string format;
  int64_t rows = 0, cols = 0;
  int bits = 0;                     // squeezellm index bits
  std::vector<DeviceBuffer> parts;  // the weights on the device
  std::size_t weight_bytes = 0;
  const uint16_t* w_f16 = nullptr;  // "f16"
  DeviceBuffer x_half;              // "f16": x converted for cuBLAS, [kMaxGemvBatch, cols]
  Fp8Format fp8;
  Nvfp4Format nvfp4;
  LutFormat<2> lut2;
  LutFormat<3> lut3;
  LutFormat<4> lut4;
  FgmpFormat fgmp;

  // Uploads `bytes` host bytes as one weight part; nullptr for an empty part.
  const void* put(const void* host, std::size_t bytes) {
    if (bytes == 0) return nullptr;
    DeviceBuffer b(bytes);
    b.upload(host, bytes);
    parts.push_back(std::move(b));
    weight_bytes += bytes;
    return parts.back().data();
  }
  const void* put(const std::vector<uint8_t>& v) { return put(v.data(), v.size()); }
};

DeviceLinear::DeviceLinear(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceLinear::DeviceLinear(DeviceLinear&&) noexcept = default;
DeviceLinear& DeviceLinear::operator=(DeviceLinear&&) noexcept = default;
DeviceLinear::~DeviceLinear() = default;

const std::string& DeviceLinear::format() const { return impl_->format; }
int64_t DeviceLinear::rows() const { return impl_->rows; }
int64_t DeviceLinear::cols() const { return impl_->cols; }
std::size_t DeviceLinear::weight_bytes() const { return impl_->weight_bytes; }

DeviceLinear DeviceLinear::upload_f16(const uint16_t* w, int64_t rows, int64_t cols) {
  quant_detail::check_shape("cuda upload_f16", rows, cols);
  if (rows > 0x7FFFFFFF || cols > 0x7FFFFFFF)
    throw Error(ExitCode::kInput, "cuda upload_f16: shape [" + std::to_string(rows) + ", " + std::to_string(cols) +
                                      "] exceeds cuBLAS's int dimensions");
  if (w == nullptr && rows * cols > 0) throw Error(ExitCode::kUsage, "cuda upload_f16: null weights");
  auto m = std::make_unique<Impl>();
  m->format = "f16";
  m->rows = rows;
  m->cols = cols;
  m->w_f16 = static_cast<const uint16_t*>(m->put(w, static_cast<std::size_t>(rows * cols) * 2));
  m->x_half = DeviceBuffer(static_cast<std::size_t>(kMaxGemvBatch * cols) * 2);
  return DeviceLinear(std::move(m));
}

DeviceLinear DeviceLinear::upload(const PackedTensor& p) {
  using quant_detail::checked_part;
  const std::string& fmt = p.format;
  if (fmt != "fp8" && fmt != "nvfp4" && fmt != "squeezellm" && fmt != "fgmp")
    throw Error(ExitCode::kUsage, "cuda upload: format '" + fmt +
                                      "' has no GPU kernel (supported: fp8, nvfp4, squeezellm, fgmp; dense f16 "
                                      "through upload_f16)");
  quant_detail::check_shape(tensor_what(p), p.rows, p.cols);
  const int64_t rows = p.rows, cols = p.cols;
  auto m = std::make_unique<Impl>();
  m->format = fmt;
  m->rows = rows;
  m->cols = cols;
  const std::string what = tensor_what(p);

  if (fmt == "fp8") {
    // checked_parts: dtype, shape and size of every part against Fp8Quantizer::layout().
    const std::vector<const PackedPart*> parts = quant_detail::checked_parts(quantizer_for(fmt), p);
    Fp8Format& f = m->fp8;
    f.rows = rows, f.cols = cols, f.units = (cols + 15) / 16;
    f.row_scale = checked_scale(p, *parts[1]);
    f.q = static_cast<const uint8_t*>(m->put(pad_rows(parts[0]->bytes, rows, cols, f.units * 16)));
  } else if (fmt == "nvfp4") {
    const std::vector<const PackedPart*> parts = quant_detail::checked_parts(quantizer_for(fmt), p);
    Nvfp4Format& f = m->nvfp4;
    const int64_t nb = (cols + 15) / 16;
    f.rows = rows, f.cols = cols, f.units = (cols + 31) / 32;
    f.row_scale = checked_scale(p, *parts[2]);
    f.q = static_cast<const uint8_t*>(m->put(pad_rows(parts[0]->bytes, rows, nb * 8, f.units * 16)));
    f.scales = static_cast<const uint8_t*>(m->put(pad_rows(parts[1]->bytes, rows, nb, f.units * 2)));
  } else if (fmt == "squeezellm") {
    // The checks of SqueezeLLMQuantizer::decode(): the kernels trust all of them.
    const PackedPart& lt0 = p.part("lookup_table");
    const int bits = lt0.shape.size() == 2 ? squeezellm_bits_for_lut(lt0.shape[1]) : 0;
    if (bits == 0)
      throw Error(ExitCode::kInput, what + ": part 'lookup_table' has shape " + shape_str(lt0.shape) +
                                        ", expected [" + std::to_string(rows) + ", 4|8|16]");
    const std::vector<PackedPart> lay = SqueezeLLMQuantizer(bits, 0.0, 0.0).layout(rows, cols);
    const PackedPart& qw = checked_part("squeezellm", p, lay[0]);
    const PackedPart& lt = checked_part("squeezellm", p, lay[1]);
    const PackedPart& rp = checked_part("squeezellm", p, lay[2]);
    int32_t nnz32;
    std::memcpy(&nnz32, rp.bytes.data() + 4 * rows, 4);
    const int64_t nnz = nnz32;
    if (nnz < 0 || nnz > rows * cols)
      throw Error(ExitCode::kInput, what + ": part 'sparse_rowptr' ends at nnz " + std::to_string(nnz) +
                                        ", outside [0, " + std::to_string(rows * cols) + "]");
    const std::vector<PackedPart> sl = squeezellm_sparse_layout(cols, nnz);
    const PackedPart& sc = checked_part("squeezellm", p, sl[0]);
    const PackedPart& sv = checked_part("squeezellm", p, sl[1]);
    std::string field;
    const std::string msg = squeezellm_check_sparse(rows, cols, rp.bytes.data(), sc.bytes.data(), sc.dtype, nnz, &field);
    if (!msg.empty()) throw Error(ExitCode::kInput, what + ": part '" + field + "': " + msg);
    for (std::size_t i = 0; i < lt.bytes.size() / 2; ++i)
      if (!std::isfinite(fp16_to_fp32(load_u16_le(lt.bytes.data() + 2 * i))))
        throw Error(ExitCode::kInput, what + ": part 'lookup_table' holds a non-finite entry at flat index " + std::to_string(i));
    for (std::size_t i = 0; i < sv.bytes.size() / 2; ++i)
      if (!std::isfinite(fp16_to_fp32(load_u16_le(sv.bytes.data() + 2 * i))))
        throw Error(ExitCode::kInput, what + ": part 'sparse_val' holds a non-finite value at entry " + std::to_string(i));
    m->bits = bits;
    const int64_t units = (cols + 31) / 32;
    const auto* q = static_cast<const uint32_t*>(m->put(pad_rows(qw.bytes, rows, qw.shape[1], units * 4 * bits)));
    const auto* lut = static_cast<const uint16_t*>(m->put(lt.bytes));
    const bool sparse = nnz > 0;
    const auto* rowptr = sparse ? static_cast<const int32_t*>(m->put(rp.bytes)) : nullptr;
    const void* col = sparse ? m->put(sc.bytes) : nullptr;
    const auto* val = sparse ? static_cast<const uint16_t*>(m->put(sv.bytes)) : nullptr;
    auto fill = [&](auto& f) {
      f.rows = rows, f.cols = cols, f.units = units;
      f.q = q, f.lut = lut, f.rowptr = rowptr, f.col = col, f.val = val;
      f.col_is_i16 = sc.dtype == DType::I16;
    };
    if (bits == 2) fill(m->lut2);
    else if (bits == 3) fill(m->lut3);
    else fill(m->lut4);
  } else {  // fgmp
    const int64_t n8 = fgmp_fp8_blocks(p);
    for (const PackedPart& e : fgmp_layout(rows, cols, n8)) checked_part("fgmp", p, e);
    std::string field;
    const std::string msg = fgmp_check(p, &field);
    if (!msg.empty()) throw Error(ExitCode::kInput, what + ": part '" + field + "': " + msg);
    FgmpFormat& f = m->fgmp;
    f.rows = rows, f.cols = cols, f.units = (cols + 15) / 16, f.map_bytes = (f.units + 7) / 8;
    f.fp4_scale_2 = checked_scale(p, p.part("weight_fp4_scale_2"));
    f.fp8_scale = checked_scale(p, p.part("weight_fp8_scale"));
    f.map = static_cast<const uint8_t*>(m->put(p.part("weight_block_map").bytes));
    f.row_offset = static_cast<const int32_t*>(m->put(p.part("weight_fp8_row_offset").bytes));
    f.fp4 = static_cast<const uint8_t*>(m->put(p.part("weight_fp4").bytes));
    f.fp4_scale = static_cast<const uint8_t*>(m->put(p.part("weight_fp4_scale").bytes));
    f.fp8 = static_cast<const uint8_t*>(m->put(p.part("weight_fp8").bytes));
  }
  return DeviceLinear(std::move(m));
}

void DeviceLinear::gemv(const float* x_dev, int64_t batch, float* y_dev) const {
  Impl& m = *impl_;
  if (batch < 1 || batch > kMaxGemvBatch)
    throw Error(ExitCode::kUsage, "cuda gemv: batch " + std::to_string(batch) + " outside [1, " +
                                      std::to_string(kMaxGemvBatch) + "]");
  if (m.rows == 0) return;
  if (x_dev == nullptr || y_dev == nullptr) throw Error(ExitCode::kUsage, "cuda gemv: null x or y");
  if (m.cols == 0) {
    MPQ_CUDA_CHECK(cudaMemsetAsync(y_dev, 0, static_cast<std::size_t>(batch * m.rows) * sizeof(float)));
    return;
  }
  if (m.format == "f16") {
    const int64_t n = batch * m.cols;
    to_half_kernel<<<static_cast<unsigned>((n + 255) / 256), 256>>>(x_dev, n, static_cast<__half*>(m.x_half.data()));
    MPQ_CUDA_CHECK(cudaGetLastError());
    // Column-major view: W is W^T [cols, rows] (ld cols), X is X^T [cols, batch], Y^T [rows, batch].
    const float alpha = 1.0f, beta = 0.0f;
    MPQ_CUBLAS_CHECK(cublasGemmEx(cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(m.rows),
                                  static_cast<int>(batch), static_cast<int>(m.cols), &alpha, m.w_f16, CUDA_R_16F,
                                  static_cast<int>(m.cols), m.x_half.data(), CUDA_R_16F, static_cast<int>(m.cols),
                                  &beta, y_dev, CUDA_R_32F, static_cast<int>(m.rows), CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
    return;
  }
  const bool vec_x = m.cols % 4 == 0 && reinterpret_cast<uintptr_t>(x_dev) % 16 == 0;
  if (m.format == "fp8") launch_gemv(m.fp8, x_dev, batch, vec_x, y_dev);
  else if (m.format == "nvfp4") launch_gemv(m.nvfp4, x_dev, batch, vec_x, y_dev);
  else if (m.format == "fgmp") launch_gemv(m.fgmp, x_dev, batch, vec_x, y_dev);
  else if (m.bits == 2) launch_gemv(m.lut2, x_dev, batch, vec_x, y_dev);
  else if (m.bits == 3) launch_gemv(m.lut3, x_dev, batch, vec_x, y_dev);
  else launch_gemv(m.lut4, x_dev, batch, vec_x, y_dev);
}

// ---------------------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------------------

void synchronize() { MPQ_CUDA_CHECK(cudaDeviceSynchronize()); }

namespace {
// Two CUDA events, destroyed on scope exit.
struct EventPair {
  cudaEvent_t start = nullptr, stop = nullptr;
  EventPair() {
    MPQ_CUDA_CHECK(cudaEventCreate(&start));
    MPQ_CUDA_CHECK(cudaEventCreate(&stop));
  }
  ~EventPair() {
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
  }
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;
  // Milliseconds between the two events once `stop` has completed.
  double elapsed_ms() const {
    MPQ_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    MPQ_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    return ms;
  }
};
}  // namespace

std::vector<double> time_device_us(const std::function<void()>& fn, int warmup, int reps) {
  if (warmup < 0 || reps < 1)
    throw Error(ExitCode::kUsage, "time_device_us: warmup " + std::to_string(warmup) + " and reps " +
                                      std::to_string(reps) + ", expected >= 0 and >= 1");
  for (int i = 0; i < warmup; ++i) fn();
  synchronize();
  EventPair ev;
  std::vector<double> us;
  us.reserve(static_cast<std::size_t>(reps));
  for (int i = 0; i < reps; ++i) {
    MPQ_CUDA_CHECK(cudaEventRecord(ev.start));
    fn();
    MPQ_CUDA_CHECK(cudaEventRecord(ev.stop));
    us.push_back(ev.elapsed_ms() * 1000.0);
  }
  return us;
}

double device_copy_bandwidth_gbps(std::size_t bytes, int reps) {
  if (bytes == 0 || reps < 1)
    throw Error(ExitCode::kUsage, "device_copy_bandwidth_gbps: bytes " + std::to_string(bytes) + " and reps " +
                                      std::to_string(reps) + ", expected >= 1 each");
  DeviceBuffer src(bytes), dst(bytes);
  MPQ_CUDA_CHECK(cudaMemset(src.data(), 1, bytes));
  std::vector<double> us = time_device_us(
      [&] { MPQ_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice)); }, 2, reps);
  std::sort(us.begin(), us.end());
  const double median_us = us[us.size() / 2];
  return 2.0 * static_cast<double>(bytes) / (median_us * 1e-6) / 1e9;
}

}  // namespace mpq::cuda
