// Shared by the kernels/cpu sources that use intrinsics: the intrinsics header and the
// function target attributes of each path (cpu_features.h says when each may run).
//
// GCC 12 reports false -Wuninitialized / -Wmaybe-uninitialized warnings inside its AVX-512
// headers (the self-initialized __Y of _mm512_undefined_*, GCC bug 105593): silenced for the
// headers only.
#pragma once

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

/// CpuIsa::kAvx2: AVX2 + FMA + F16C.
#define MPQ_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
/// CpuIsa::kAvx512: AVX-512 F/BW/VL/VBMI/VNNI (+ AVX2, FMA, F16C).
#define MPQ_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni,avx2,fma,f16c")))
/// CpuIsa::kAvx512Bf16: the above + AVX512_BF16.
#define MPQ_TARGET_AVX512BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni,avx512bf16,avx2,fma,f16c")))
/// CpuIsa::kAmx: the above + AMX-TILE + AMX-BF16.
#define MPQ_TARGET_AMX \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni,avx512bf16,amx-tile,amx-bf16,avx2,fma,f16c")))

namespace mpq {

/// Software prefetch of the cache line at p into L2 only (prefetcht1), for GEMV kernels that
/// stream their packed weights once from DRAM (int_gemv: the same bytes of the next rows;
/// fgmp_fp8_gemv_add: its FP8 stream 4 KiB ahead). Never faults, so p may point past the
/// buffer. Measured on this project's 2-vCPU Xeon, 11008 x 4096 int4-g128, 2 threads:
/// prefetcht1 and prefetcht0 there ran alike (docs/results.md section 11); for the dense
/// bf16 GEMV prefetcht1 was slower than its prefetcht0 1 KiB ahead, so the kernels that have
/// one keep it.
inline void prefetch_l2(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1); }

}  // namespace mpq
