#include "lib/common/blas_runtime.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernels/cpu/cpu_features.h"

#ifdef EIGEN_USE_BLAS
extern "C" char* openblas_get_corename(void);  // OpenBLAS's cblas.h; declared here to avoid
                                                // its prototypes clashing with Eigen's.
#endif

namespace mpq {

std::string blas_core_name() {
#ifdef EIGEN_USE_BLAS
  const char* n = openblas_get_corename();
  return n ? n : "";
#else
  return "";
#endif
}

namespace {

// 2: AVX-512 kernels, 1: AVX2 kernels (AMD Zen runs Haswell's), 0: older or unknown.
int core_rank(const std::string& core) {
  static const char* const k512[] = {"SkylakeX", "Cooperlake", "SapphireRapids"};
  static const char* const k256[] = {"Haswell", "Zen", "Excavator", "Steamroller"};
  for (const char* c : k512)
    if (core == c) return 2;
  for (const char* c : k256)
    if (core == c) return 1;
  return 0;
}

}  // namespace

std::string blas_core_override(const std::string& current, bool avx512, bool avx2) {
  if (current.empty()) return "";
  const int want = avx512 ? 2 : avx2 ? 1 : 0;
  if (want <= core_rank(current)) return "";
  return want == 2 ? "SkylakeX" : "Haswell";
}

void ensure_blas_core(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("MPQ_NO_BLAS_CORETYPE")) return;
  const CpuFeatures& f = cpu_features();
  const std::string core = blas_core_override(blas_core_name(), f.avx512, f.avx2);
  if (core.empty()) return;
  setenv("OPENBLAS_CORETYPE", core.c_str(), 1);
  std::fflush(nullptr);
  execv("/proc/self/exe", argv);
  std::fprintf(stderr,
               "mpq: warning: OpenBLAS runs its %s kernels and re-executing with OPENBLAS_CORETYPE=%s failed "
               "(%s); BLAS products will be slow\n",
               blas_core_name().c_str(), core.c_str(), std::strerror(errno));
}

}  // namespace mpq
