#!/usr/bin/env bash
# The whole test suite (ctest: unit tests and the tools they run) built with Clang and
# -DMPQ_SANITIZE=address,undefined (AddressSanitizer with LeakSanitizer, UndefinedBehavior-
# Sanitizer, no recovery) in $MPQ_SANITIZE_BUILD (default ./build-sanitize), which also
# holds the fuzz targets (-DMPQ_FUZZ=ON) that scripts/fuzz.sh runs. CUDA is left out (nvcc
# takes no sanitizer flags) and Eigen runs without OpenBLAS (OpenBLAS's libgomp and Clang's
# libomp in one process are not a supported mix).
#   scripts/run-sanitized-tests.sh [--configure-only | --build-only]
# Exit 1 when a test fails or any sanitizer report was written: reports also go to files
# ($B/sanitizer-logs/), so one inside a tool whose non-zero exit a test expected still fails.
set -euo pipefail
cd "$(dirname "$0")/.."
B="${MPQ_SANITIZE_BUILD:-build-sanitize}"
MPQ_SETUP_FUZZ=1 MPQ_SETUP_DEPS_ONLY=1 bash scripts/setup.sh
if [ ! -f "$B/CMakeCache.txt" ]; then
  cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ \
    -DMPQ_SANITIZE=address,undefined -DMPQ_FUZZ=ON -DMPQ_BLAS=OFF -DMPQ_BUILD_BENCH=OFF >/dev/null
fi
[ "${1:-}" = "--configure-only" ] && exit 0
cmake --build "$B" -j"$(nproc)"
[ "${1:-}" = "--build-only" ] && exit 0

logs="$(pwd)/$B/sanitizer-logs"
rm -rf "$logs" && mkdir -p "$logs"
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:log_path=$logs/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan"
rc=0
ctest --test-dir "$B" --output-on-failure -j"$(nproc)" || rc=$?
if compgen -G "$logs/*" >/dev/null; then
  echo "run-sanitized-tests: sanitizer reports:" >&2
  for f in "$logs"/*; do echo "== $f" >&2; head -n 40 "$f" >&2; done
  rc=1
fi
[ "$rc" -eq 0 ] && echo "run-sanitized-tests: no sanitizer report" >&2
exit "$rc"
