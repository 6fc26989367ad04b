// The test binary's main: gtest's, after the OpenBLAS kernel check every mpq tool makes
// (lib/common/blas_runtime.h), so tests run the BLAS kernels the tools run.
#include <gtest/gtest.h>

#include "lib/common/blas_runtime.h"

int main(int argc, char** argv) {
  mpq::ensure_blas_core(argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
