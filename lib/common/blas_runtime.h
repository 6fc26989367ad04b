// OpenBLAS kernel selection at start-up.
//
// Debian's OpenBLAS (0.3.21, DYNAMIC_ARCH) picks its GEMM kernels from the CPUID family and
// model number. CPUs newer than the library are not in its table and fall back to the SSE3
// "Prescott" kernels: on the Emerald Rapids machines of docs/results.md (family 6, model 207)
// every Eigen product mpq sends to OpenBLAS (fp32 windows in mpq-eval, the Fisher and Hessian
// passes, GPTQ) ran about 4x slower than with the AVX-512 kernels the CPU executes.
// OpenBLAS reads its override, the environment variable OPENBLAS_CORETYPE, once, in its
// library constructor (driver/others/dynamic.c, force_coretype), before main(): the only
// portable way to change the choice from inside a program is to set the variable and
// re-execute it, which ensure_blas_core() does once per process tree.
#pragma once

#include <string>

namespace mpq {

/// The kernel set OpenBLAS runs ("SkylakeX", "Haswell", "Prescott", ...), or "" when mpq is
/// built without OpenBLAS.
std::string blas_core_name();

/// The OPENBLAS_CORETYPE value ensure_blas_core() sets for a library that chose `current`
/// on a CPU with the given features: "SkylakeX" (AVX-512 F/BW/VL) or "Haswell" (AVX2 + FMA)
/// when that is a better kernel set than `current`, "" to leave OpenBLAS's choice. Pure.
std::string blas_core_override(const std::string& current, bool avx512, bool avx2);

/// Call first in main(). When OpenBLAS chose a weaker kernel set than this CPU executes
/// (blas_core_override) and neither OPENBLAS_CORETYPE nor MPQ_NO_BLAS_CORETYPE is set, sets
/// OPENBLAS_CORETYPE and re-executes /proc/self/exe with the same argv (the variable is then
/// set, so this happens at most once). Returns when nothing is to be done, or when the
/// re-exec fails (then one warning line on stderr, and the program runs with the slow kernels).
void ensure_blas_core(char** argv);

}  // namespace mpq
