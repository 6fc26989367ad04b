#!/usr/bin/env bash
# Installs the Debian packages mpq builds with (only those missing), then configures and
# builds it (Release) into ./build. Usage: scripts/setup.sh [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(cmake make g++ pkg-config libeigen3-dev libcli11-dev nlohmann-json3-dev libsentencepiece-dev
      libgtest-dev libgmock-dev libbenchmark-dev libssl-dev libopenblas-openmp-dev libglpk-dev python3
      python3-numpy slurm-wlm munge)
# python3-numpy: the independent engine-export reader (tests/interop); slurm-wlm, munge:
# examples/slurm/test-local.sh (a single-node SLURM in the tests).
# MPQ_SETUP_FUZZ=1: also Clang 14 with its sanitizer and libFuzzer runtimes, LLVM's OpenMP and
# llvm-symbolizer, for scripts/run-sanitized-tests.sh and scripts/fuzz.sh (which set it).
[ "${MPQ_SETUP_FUZZ:-0}" = 1 ] && PKGS+=(clang libclang-rt-14-dev libomp-14-dev llvm-14)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# MPQ_SETUP_DEPS_ONLY=1: install, do not build ./build.
[ "${MPQ_SETUP_DEPS_ONLY:-0}" = 1 ] && exit 0
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j"$(nproc)"
