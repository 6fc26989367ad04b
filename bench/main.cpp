// The benchmarks' main: Google Benchmark's, after the OpenBLAS kernel check every mpq tool
// and the test binary make (lib/common/blas_runtime.h), so benchmarks time the BLAS kernels
// the tools run.
#include <benchmark/benchmark.h>

#include "lib/common/blas_runtime.h"

int main(int argc, char** argv) {
  mpq::ensure_blas_core(argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
