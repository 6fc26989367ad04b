#!/usr/bin/env bash
# Command 2: install what is missing, build, run the whole test suite (ctest).
# Real-model tests read ../shared/data (or $MPQ_DATA) and skip with a message when absent;
# GPU tests skip without a CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ctest --test-dir build --output-on-failure -j"$(nproc)"
