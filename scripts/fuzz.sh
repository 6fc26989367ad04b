#!/usr/bin/env bash
# Runs every libFuzzer target of tests/fuzz for SECONDS each (default 60), one after the
# other, on the sanitizer build (Clang, -DMPQ_SANITIZE=address,undefined -DMPQ_FUZZ=ON) that
# scripts/run-sanitized-tests.sh makes in $MPQ_SANITIZE_BUILD (default ./build-sanitize).
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# Seeds are generated at fuzz time from ../shared/data ($MPQ_DATA) by tests/fuzz/make_seeds.py,
# plus a sensitivity file, a plan and packed checkpoints that the tools of that build write
# for stories260K, plus the small hand-written seeds in tests/fuzz/seeds/<target>/. The
# corpus grows in $MPQ_SANITIZE_BUILD/fuzz/corpus/<target> (kept between runs); crash inputs go
# to $MPQ_SANITIZE_BUILD/fuzz/artifacts/. Exit 1 when any target found a crash (a sanitizer
# report, an internal error, a leak, a timeout, an allocation over 1 GiB, 2 GiB RSS); the
# table of executions and corpus sizes is printed and written to fuzz/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-60}"
shift || true
B="${MPQ_SANITIZE_BUILD:-build-sanitize}"
DATA="${MPQ_DATA:-../shared/data}"
ALL=(fuzz_safetensors fuzz_safetensors_index fuzz_config fuzz_tokenizer fuzz_plan fuzz_sensitivity fuzz_tokens)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")

# Configured by scripts/run-sanitized-tests.sh (the same build); only what fuzzing needs is built.
[ -f "$B/CMakeCache.txt" ] || MPQ_SANITIZE_BUILD="$B" bash scripts/run-sanitized-tests.sh --configure-only
cmake --build "$B" -j"$(nproc)" --target fuzz_targets mpq-sensitivity mpq-search mpq-pack >/dev/null

W="$B/fuzz"
mkdir -p "$W/corpus" "$W/artifacts"
rm -rf "$W/seeds" "$W/gen" && mkdir -p "$W/seeds" "$W/gen"
export OMP_NUM_THREADS=1
# Leaks are reported by libFuzzer itself (-detect_leaks); ASan aborts on the first report.
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

# Files the tools write for stories260K, as seeds of the plan and sensitivity readers.
extra=()
M="$DATA/models/stories260K-hf"
if [ -f "$M/config.json" ] && [ -f "$DATA/text/tinystories_valid_calib.txt" ]; then
  T="$B/tools"
  "$T/mpq-sensitivity" --model "$M" --calib "$DATA/text/tinystories_valid_calib.txt" --samples 4 --seq-len 64 \
    --kind fisher,hessian,hutchinson,act-fisher --hutchinson-iters 2 --out "$W/gen/sens-full.safetensors" -q >/dev/null 2>&1
  "$T/mpq-sensitivity" --model "$M" --calib "$DATA/text/tinystories_valid_calib.txt" --samples 2 --seq-len 32 \
    --kind hessian,hutchinson --hutchinson-iters 2 --out "$W/gen/sens-small.safetensors" -q >/dev/null 2>&1
  "$T/mpq-search" --model "$M" --sensitivity "$W/gen/sens-full.safetensors" --formats nvfp4,fp8,fgmp-30,source \
    --target-bpw 6 --out "$W/gen/plan.json" -q >/dev/null 2>&1
  for f in fp8 nvfp4 fgmp; do
    "$T/mpq-pack" --model "$M" --format "$f" --out "$W/gen/$f" -q >/dev/null 2>&1
    cp "$W/gen/$f/model.safetensors" "$W/gen/packed-$f.safetensors"
  done
  extra=("$W/gen/sens-full.safetensors" "$W/gen/sens-small.safetensors" "$W/gen/plan.json"
         "$W/gen"/packed-*.safetensors)
else
  echo "fuzz: no stories260K under $DATA: seeds from tests/fuzz/seeds only" >&2
fi
python3 tests/fuzz/make_seeds.py "$DATA" "$W/seeds" "${extra[@]}"

dict_of() {
  case "$1" in
    fuzz_safetensors|fuzz_safetensors_index) echo safetensors ;;
    fuzz_config|fuzz_tokenizer) echo config ;;
    fuzz_plan) echo plan ;;
    fuzz_sensitivity) echo sensitivity ;;
    *) echo "" ;;
  esac
}

failed=()
summary="target,seconds,executions,exec_per_s,new_units,corpus_files,corpus_bytes,peak_rss_mb,result"
for t in "${TARGETS[@]}"; do
  c="$W/corpus/$t"
  mkdir -p "$c" "$W/seeds/$t"
  dirs=("$c" "$W/seeds/$t")
  [ -d "tests/fuzz/seeds/$t" ] && dirs+=("tests/fuzz/seeds/$t")
  d=$(dict_of "$t")
  args=(-max_total_time="$SECS" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=30 -print_final_stats=1
        -artifact_prefix="$W/artifacts/$t-")
  if [ -n "$d" ]; then
    cat tests/fuzz/dict/json.dict "tests/fuzz/dict/$d.dict" > "$W/$t.dict"
    args+=(-dict="$W/$t.dict")
  fi
  log="$W/$t.log"
  echo "fuzz: $t for ${SECS}s" >&2
  rc=0
  "$B/tests/fuzz/$t" "${args[@]}" "${dirs[@]}" >"$log" 2>&1 || rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  eps=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  newu=$(grep -o 'stat::new_units_added: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  files=$(find "$c" -type f | wc -l)
  bytes=$(find "$c" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
  result=ok
  if [ "$rc" -ne 0 ]; then
    result="CRASH (exit $rc, log $log)"
    failed+=("$t")
    grep -E "ERROR|fuzz: |runtime error|SUMMARY|Test unit written" "$log" | head -n 8 >&2 || true
  fi
  summary+=$'\n'"$t,$SECS,$execs,$eps,$newu,$files,$bytes,$rss,$result"
done
echo "$summary" > "$W/summary.txt"
column -s, -t < "$W/summary.txt" 2>/dev/null || cat "$W/summary.txt"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]} (inputs in $W/artifacts/)" >&2
  exit 1
fi
