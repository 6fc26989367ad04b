// Run-time CPU feature tests that every supported compiler can build: GCC's
// __builtin_cpu_supports("f16c") has no Clang 14 counterpart (Debian 12's clang, used for the
// fuzz and sanitizer builds), so F16C is read from CPUID directly.
// Source: Intel SDM vol. 2A, CPUID leaf 1, ECX bit 29 (F16C).
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace mpq {

/// True when the CPU executes F16C (VCVTPH2PS / VCVTPS2PH).
inline bool cpu_has_f16c() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  return (ecx & bit_F16C) != 0;
#else
  return false;
#endif
}

}  // namespace mpq
