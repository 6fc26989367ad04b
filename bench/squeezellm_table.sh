#!/usr/bin/env bash
# SqueezeLLM ablation on stories260K: uniform RTN grid vs unweighted k-means vs
# Fisher-weighted k-means vs Fisher + dense-and-sparse (0.45% |w| outliers + 0.05% Fisher),
# at 3 and 4 bits. Perplexity on TinyStories valid (and WikiText-2 test when present) and the
# linear bpw mpq-eval reports (all metadata and the sparse part counted).
#
# Usage (from anywhere):  bench/squeezellm_table.sh
# Environment overrides:
#   MODEL   model folder          (default ../shared/data/models/stories260K-hf, from the repo root)
#   DATA    text folder           (default ../shared/data/text)
#   BUILD   mpq build folder      (default build)
#   WORK    scratch folder        (default /tmp/sq)
#   BITS    bit widths            (default "3 4")
# The table (markdown) goes to stdout; per-run JSON stays in $WORK.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${MODEL:-../shared/data/models/stories260K-hf}"
DATA="${DATA:-../shared/data/text}"
BUILD="${BUILD:-build}"
WORK="${WORK:-/tmp/sq}"
BITS="${BITS:-3 4}"
T="$BUILD/tools"
mkdir -p "$WORK"

SENS="$WORK/sens.safetensors"
if [[ ! -f "$SENS" ]]; then
  "$T/mpq-sensitivity" -q --model "$MODEL" --calib "$DATA/tinystories_valid_calib.txt" --samples 128 \
    --seq-len 256 --kind fisher --out "$SENS" >&2
fi

TEXTS=(tinystories_valid_eval.txt wikitext2_test_joined.txt)

eval_ppl() {  # dir text -> "ppl bpw" or "n/a n/a"
  local dir="$1" text="$2" js="$WORK/$(basename "$1")-${2%.txt}.json"
  if [[ ! -f "$DATA/$text" ]]; then echo "n/a n/a"; return; fi
  "$T/mpq-eval" --model "$dir" --text "$DATA/$text" --ctx 512 --max-tokens 20480 -q --json "$js" >/dev/null
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("%.4f %.4f" % (j["ppl"], j["linear_bpw"]))' "$js"
}

row() {  # label dir
  local ts wk
  ts=$(eval_ppl "$2" "${TEXTS[0]}")
  wk=$(eval_ppl "$2" "${TEXTS[1]}")
  printf "| %-40s | %8s | %10s | %10s |\n" "$1" "${ts#* }" "${ts% *}" "${wk% *}"
}

echo "| config | linear bpw | ppl TinyStories | ppl WikiText-2 |"
echo "|---|---:|---:|---:|"
row "fp32 (reference)" "$MODEL"
for b in $BITS; do
  P="$T/mpq-pack --model $MODEL -q --force --bits $b"
  $P --format uniform --out "$WORK/u$b" >/dev/null
  row "uniform RTN, $b bit" "$WORK/u$b"
  $P --format squeezellm --outlier-pct 0 --sensitive-pct 0 --out "$WORK/k$b" >/dev/null 2>&1
  row "k-means unweighted, $b bit" "$WORK/k$b"
  $P --format squeezellm --sensitivity "$SENS" --outlier-pct 0 --sensitive-pct 0 --out "$WORK/f$b" >/dev/null
  row "k-means Fisher, $b bit" "$WORK/f$b"
  $P --format squeezellm --sensitivity "$SENS" --out "$WORK/s$b" >/dev/null
  row "Fisher + sparse 0.45+0.05%, $b bit" "$WORK/s$b"
done
