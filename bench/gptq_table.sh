#!/usr/bin/env bash
# Every format x {rtn, gptq} on stories260K (issue [10/12]): linear bpw on the model and for
# the same format on one 4096 x 4096 layer, perplexity on TinyStories and WikiText-2 (first
# 20,480 tokens, ctx 512) and mean KL vs the fp32 model, all from mpq-eval's --json.
# mpq-native export (every linear quantized, as the peers' numbers are measured).
# GPTQ: calibration 128 windows of 512 tokens of tinystories_valid_calib.txt (disjoint from
# the eval text), damp 0.01, block 128, true-sequential; nvfp4 also with Four Over Six.
#
#   bash bench/gptq_table.sh          # writes bench/results/gptq_table.md
#   FORMATS="nvfp4 int4" bash bench/gptq_table.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${MODEL:-../shared/data/models/stories260K-hf}"
DATA="${DATA:-../shared/data/text}"
BUILD="${BUILD:-build}"
WORK="${WORK:-/tmp/mpq-gptq-table}"
SAMPLES="${SAMPLES:-128}"
SEQ="${SEQ:-512}"
OUT="${OUT:-bench/results/gptq_table.md}"
T="$BUILD/tools"
mkdir -p "$WORK" "$(dirname "$OUT")"
CALIB="$DATA/tinystories_valid_calib.txt"
[[ -f "$MODEL/model.safetensors" ]] || { echo "gptq_table: no model at $MODEL" >&2; exit 77; }

SENS="$WORK/sens.safetensors"
[[ -f "$SENS" ]] || "$T/mpq-sensitivity" -q --model "$MODEL" --calib "$CALIB" --samples 128 --seq-len 256 \
  --kind fisher --out "$SENS" >&2

# label|format|extra pack args (rtn and gptq rows are made from each)
CONFIGS=(
  "fp8|fp8|"
  "nvfp4|nvfp4|"
  "nvfp4 (four over six)|nvfp4|--four-over-six"
  "int4 per-row|int4|"
  "int4 g32|int4-g32|"
  "int4 g16|int4-g16|"
  "int3 per-row|int3|"
  "int3 g32|int3-g32|"
  "int3 g16|int3-g16|"
  "squeezellm 4 bit + sparse, Fisher|squeezellm-4bit-sparse|--sensitivity $SENS"
  "squeezellm 3 bit + sparse, Fisher|squeezellm-3bit-sparse|--sensitivity $SENS"
  "squeezellm 3 bit, Fisher|squeezellm-3bit|--sensitivity $SENS"
  "fgmp 30% FP8, Fisher|fgmp-30|--sensitivity $SENS"
)
[[ -n "${FORMATS:-}" ]] && { keep=(); for c in "${CONFIGS[@]}"; do f="${c#*|}"; f="${f%%|*}"; [[ " $FORMATS " == *" $f "* ]] && keep+=("$c"); done; CONFIGS=("${keep[@]}"); }

eval_json() {  # dir text tag -> json path
  local js="$WORK/$(basename "$1")-$3.json"
  "$T/mpq-eval" --model "$1" --text "$DATA/$2" --ctx 512 --max-tokens 20480 --base "$MODEL" -q --json "$js" >/dev/null
  echo "$js"
}

{
  echo "| config | method | linear bpw | bpw 4096² | ppl TinyStories | KL TinyStories | ppl WikiText-2 | KL WikiText-2 | pack s |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
  for js in $(eval_json "$MODEL" tinystories_valid_eval.txt ts) $(eval_json "$MODEL" wikitext2_test_joined.txt wt); do :; done
  python3 - "$WORK/$(basename "$MODEL")-ts.json" "$WORK/$(basename "$MODEL")-wt.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
print("| fp32 (reference) | | 32.0000 | 32.0000 | %.4f | 0 | %.4f | 0 | |" % (a["ppl"], b["ppl"]))
PY
  for c in "${CONFIGS[@]}"; do
    IFS='|' read -r label fmt extra <<<"$c"
    for method in rtn gptq; do
      args=(--format "$fmt" --export mpq)
      # shellcheck disable=SC2206
      [[ -n "$extra" && ( "$method" == gptq || "$extra" != --four-over-six ) ]] && args+=($extra)
      [[ "$method" == rtn && "$extra" == --four-over-six ]] && continue  # four over six is a GPTQ grid choice
      [[ "$method" == gptq ]] && args+=(--method gptq --calib "$CALIB" --calib-samples "$SAMPLES" --calib-seq-len "$SEQ")
      dir="$WORK/$(echo "$fmt$extra" | tr -c 'a-zA-Z0-9\n-' _ | cut -c1-40)-$method"
      s0=$(date +%s.%N)
      "$T/mpq-pack" --model "$MODEL" "${args[@]}" --out "$dir" --force -q > "$dir.pack.txt"
      s1=$(date +%s.%N)
      ts=$(eval_json "$dir" tinystories_valid_eval.txt ts)
      wt=$(eval_json "$dir" wikitext2_test_joined.txt wt)
      python3 - "$label" "$method" "$dir/mpq_manifest.json" "$ts" "$wt" "$s0" "$s1" <<'PY'
import json, sys
label, method, man, ts, wt, s0, s1 = sys.argv[1:]
m = json.load(open(man)); a = json.load(open(ts)); b = json.load(open(wt))
t = m["totals"]
print("| %s | %s | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.1f |" % (
    label, method, t["quantized_bpw"], t["bpw_4096x4096"], a["ppl"], a["mean_kl"], b["ppl"], b["mean_kl"],
    float(s1) - float(s0)))
PY
    done
  done
} | tee "$OUT"
