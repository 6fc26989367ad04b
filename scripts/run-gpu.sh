#!/usr/bin/env bash
# The one command for a GPU machine (H100 / sm_90): builds mpq with the CUDA kernels into
# build-gpu, runs every CUDA test (mpq_tests --gtest_filter='Cuda*': the GEMV kernels of all
# packed formats against the CPU references, dequantization, decoders, errors), then the GPU
# benchmark `mpq-bench --device cuda` when that tool exists, writing its JSON to
# $OUT/bench_cuda.json ($OUT defaults to build-gpu/out) and printing it. With the real data,
# also mpq-eval --device cpu / cuda on stories260K-hf into $OUT/eval_{cpu,cuda}.json.
# Needs the Debian packages of scripts/setup.sh and nvcc (/usr/local/cuda or on PATH).
# Usage: scripts/run-gpu.sh            Exit status: non-zero if the build or a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-build-gpu/out}"
mkdir -p "$OUT"
JOBS="$(nproc)"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "run-gpu.sh: warning: no GPU visible (nvidia-smi); the CUDA tests will skip" >&2
else
  nvidia-smi -L
fi

cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DMPQ_CUDA=ON
cmake --build build-gpu -j"$JOBS" --target mpq_tests 2>&1 | tee "$OUT/build.log"
if grep -q "warning" "$OUT/build.log"; then echo "run-gpu.sh: the build printed warnings (see $OUT/build.log)" >&2; fi

# The CUDA tests; a skipped test on a GPU machine means no device was visible.
set +e
build-gpu/tests/mpq_tests --gtest_filter='Cuda*' --gtest_output="json:$OUT/cuda_tests.json" 2>&1 |
  tee "$OUT/cuda_tests.log"
test_status=${PIPESTATUS[0]}
set -e

# mpq-eval --device cuda vs --device cpu on stories260K-hf (fp32), when the real data is there.
MODEL="${MPQ_DATA:-../shared/data}/models/stories260K-hf"
TEXT="${MPQ_DATA:-../shared/data}/text/tinystories_valid_eval.txt"
if [ -d "$MODEL" ] && [ -f "$TEXT" ]; then
  for dev in cpu cuda; do
    build-gpu/tools/mpq-eval --model "$MODEL" --text "$TEXT" --max-tokens 20480 -q --device "$dev" \
      --json "$OUT/eval_$dev.json" 2>&1 | tee "$OUT/eval_$dev.log" || test_status=1
  done
fi

# The benchmark (tools/mpq-bench, its own target), when the checkout has it.
if [ -d tools/mpq-bench ]; then
  cmake --build build-gpu -j"$JOBS" --target mpq-bench
  build-gpu/tools/mpq-bench --device cuda --json "$OUT/bench_cuda.json" \
    --latency-table "$OUT/latency_cuda.json" 2>&1 | tee "$OUT/bench_cuda.log"
  # End to end: a Llama-2-7B-shaped stack of linear layers per token (see docs/cli.md).
  build-gpu/tools/mpq-bench --device cuda --e2e --batches 1 --json "$OUT/bench_cuda_e2e.json" 2>&1 |
    tee "$OUT/bench_cuda_e2e.log"
  echo "== results: $OUT/bench_cuda.json, $OUT/bench_cuda_e2e.json, $OUT/latency_cuda.json"
else
  echo "run-gpu.sh: tools/mpq-bench not in this checkout; benchmark skipped"
fi

exit "$test_status"
