// CPU feature detection (kernels/cpu/cpu_features.h).
#include "kernels/cpu/cpu_features.h"

#include <algorithm>

#include <cpuid.h>          // __get_cpuid_count
#include <sys/syscall.h>    // SYS_arch_prctl
#include <unistd.h>         // syscall

#include <cstdint>
#include <cstdio>
#include <cstdlib>  // std::getenv
#include <cstring>

namespace mpq {
namespace {

uint64_t xgetbv0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t{hi} << 32) | lo;
}

// Linux: ask for the AMX tile data state (arch/x86/include/uapi/asm/prctl.h).
bool request_amx_permission() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(1, 0, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!osxsave) return f;
  const uint64_t xcr0 = xgetbv0();
  const bool ymm_state = (xcr0 & 0x6) == 0x6;
  const bool zmm_state = (xcr0 & 0xE6) == 0xE6;                 // SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
  const bool tile_state = (xcr0 & (3ull << 17)) == (3ull << 17);  // XTILECFG, XTILEDATA
  unsigned a7 = 0, b7 = 0, c7 = 0, d7 = 0;
  if (!__get_cpuid_count(7, 0, &a7, &b7, &c7, &d7)) return f;
  const bool avx2 = b7 & (1u << 5);
  const bool avx512f = b7 & (1u << 16), avx512bw = b7 & (1u << 30), avx512vl = b7 & (1u << 31);
  const bool vbmi = c7 & (1u << 1), vnni = c7 & (1u << 11);
  const bool amx_bf16 = d7 & (1u << 22), amx_tile = d7 & (1u << 24);
  unsigned a71 = 0, b71 = 0, c71 = 0, d71 = 0;
  const bool bf16 = __get_cpuid_count(7, 1, &a71, &b71, &c71, &d71) && (a71 & (1u << 5));
  f.avx2 = avx2 && fma && f16c && ymm_state;
  f.avx512 = f.avx2 && avx512f && avx512bw && avx512vl && vbmi && vnni && zmm_state;
  f.avx512_bf16 = f.avx512 && bf16;
  f.amx = f.avx512_bf16 && amx_tile && amx_bf16 && tile_state && request_amx_permission();
  unsigned a0 = 0, vendor[3] = {0, 0, 0};
  __get_cpuid(0, &a0, &vendor[0], &vendor[2], &vendor[1]);  // "AuthenticAMD": ebx, edx, ecx
  f.bf16_dot_fast = f.avx512_bf16 && std::memcmp(vendor, "AuthenticAMD", 12) == 0;
  return f;
}

CpuIsa highest(const CpuFeatures& f) {
  if (f.amx) return CpuIsa::kAmx;
  if (f.avx512_bf16) return CpuIsa::kAvx512Bf16;
  if (f.avx512) return CpuIsa::kAvx512;
  if (f.avx2) return CpuIsa::kAvx2;
  return CpuIsa::kScalar;
}

CpuIsa env_cap() {
  const char* env = std::getenv("MPQ_CPU_ISA");
  if (!env || !*env) return CpuIsa::kAmx;
  for (int i = 0; i <= static_cast<int>(CpuIsa::kAmx); ++i) {
    const CpuIsa isa = static_cast<CpuIsa>(i);
    if (std::strcmp(env, cpu_isa_name(isa)) == 0) return isa;
  }
  std::fprintf(stderr, "mpq: warning: MPQ_CPU_ISA=%s unknown (scalar, avx2, avx512, avx512bf16, amx); ignored\n", env);
  return CpuIsa::kAmx;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

CpuIsa cpu_isa_cap() {
  static const CpuIsa cap = env_cap();
  return cap;
}

CpuIsa kernel_isa_capped(bool has_avx512, bool has_avx2) {
  if (has_avx512 && cpu_isa_cap() >= CpuIsa::kAvx512) return CpuIsa::kAvx512;
  if (has_avx2 && cpu_isa_cap() >= CpuIsa::kAvx2) return CpuIsa::kAvx2;
  return CpuIsa::kScalar;
}

CpuIsa cpu_isa() {
  static const CpuIsa isa = std::min(highest(cpu_features()), cpu_isa_cap());
  return isa;
}

bool cpu_isa_forced(CpuIsa isa) {
  const char* env = std::getenv("MPQ_CPU_ISA");
  return env && std::strcmp(env, cpu_isa_name(isa)) == 0 && cpu_isa() == isa;
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return "scalar";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx512Bf16: return "avx512bf16";
    case CpuIsa::kAmx: return "amx";
  }
  return "scalar";
}

}  // namespace mpq
