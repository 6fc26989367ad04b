#!/usr/bin/env bash
# FGMP evidence on stories260K (docs/results.md §4): all-FP8, all-NVFP4 (round to nearest),
# all-NVFP4 with Fisher-weighted clipping, FGMP at 10/20/30/50% FP8 blocks, and the random
# and amax block-choice ablations at 30%; each with weights only (--act none) and with
# weights plus FGMP activations (--act fgmp, thresholds calibrated to 70% NVFP4 blocks).
# Perplexity on TinyStories valid and WikiText-2 test (first 20,480 tokens, ctx 512) and
# the linear bpw mpq-eval reports (every part of the packed linears counted).
#
# Usage (from anywhere):  bench/fgmp_table.sh
# Environment overrides:
#   MODEL   model folder     (default ../shared/data/models/stories260K-hf, from the repo root)
#   DATA    text folder      (default ../shared/data/text)
#   BUILD   mpq build folder (default build)
#   WORK    scratch folder   (default /tmp/fgmp)
#   OUT     where the CSV goes  (default bench/results)
#   SVG     the plot            (default docs/fgmp_ppl_vs_bpw.svg)
# Prints the markdown table on stdout; writes $OUT/fgmp_table.csv and $SVG.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${MODEL:-../shared/data/models/stories260K-hf}"
DATA="${DATA:-../shared/data/text}"
BUILD="${BUILD:-build}"
WORK="${WORK:-/tmp/fgmp}"
OUT="${OUT:-bench/results}"
SVG="${SVG:-docs/fgmp_ppl_vs_bpw.svg}"
T="$BUILD/tools"
CALIB="$DATA/tinystories_valid_calib.txt"
mkdir -p "$WORK" "$OUT"

SENS="$WORK/sens.safetensors"
if [[ ! -f "$SENS" ]]; then
  echo "fgmp_table: sensitivities (fisher, act-fisher) ..." >&2
  "$T/mpq-sensitivity" -q --model "$MODEL" --calib "$CALIB" --samples 128 --seq-len 256 \
    --kind fisher,act-fisher --out "$SENS" >&2
fi

ACT=(--act-calib "$CALIB" --act-fp4-fraction 0.7)
# label | mpq-pack arguments
CONFIGS=(
  "all-FP8|--format fp8"
  "all-NVFP4 RTN|--format nvfp4"
  "all-NVFP4 weighted clip|--format fgmp --fp8-fraction 0 --fgmp-clip weighted"
  "FGMP 10%|--format fgmp --fp8-fraction 0.10"
  "FGMP 20%|--format fgmp --fp8-fraction 0.20"
  "FGMP 30%|--format fgmp --fp8-fraction 0.30"
  "FGMP 50%|--format fgmp --fp8-fraction 0.50"
  "random 30%|--format fgmp --fp8-fraction 0.30 --fgmp-select random"
  "amax 30%|--format fgmp --fp8-fraction 0.30 --fgmp-select amax"
)
TEXTS=(tinystories_valid_eval.txt wikitext2_test_joined.txt)

eval_ppl() {  # dir text act -> "ppl bpw" (n/a when the text is absent)
  local js="$WORK/$(basename "$1")-${2%.txt}-$3.json"
  if [[ ! -f "$DATA/$2" ]]; then echo "n/a n/a"; return; fi
  "$T/mpq-eval" --model "$1" --text "$DATA/$2" --ctx 512 --max-tokens 20480 --act "$3" -q \
    --json "$js" >/dev/null
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("%.4f %.4f" % (j["ppl"], j["linear_bpw"]))' "$js"
}

CSV="$OUT/fgmp_table.csv"
echo "config,act,bpw,ppl_tinystories,ppl_wikitext2" > "$CSV.tmp"
echo "| config | linear bpw | TinyStories ppl (W) | WikiText-2 ppl (W) | TinyStories ppl (W+A) | WikiText-2 ppl (W+A) |"
echo "|---|---:|---:|---:|---:|---:|"
i=0
for c in "${CONFIGS[@]}"; do
  label="${c%%|*}"
  read -r -a args <<< "${c#*|}"
  dir="$WORK/cfg$i"
  i=$((i + 1))
  echo "fgmp_table: $label ..." >&2
  "$T/mpq-pack" -q --model "$MODEL" "${args[@]}" --sensitivity "$SENS" "${ACT[@]}" --out "$dir" \
    --force >/dev/null
  cells=()
  bpw=""
  for act in none fgmp; do
    ts=$(eval_ppl "$dir" "${TEXTS[0]}" "$act")
    wk=$(eval_ppl "$dir" "${TEXTS[1]}" "$act")
    bpw="${ts#* }"
    cells+=("${ts% *}" "${wk% *}")
    echo "$label,$act,$bpw,${ts% *},${wk% *}" >> "$CSV.tmp"
  done
  printf "| %s | %s | %s | %s | %s | %s |\n" "$label" "$bpw" "${cells[0]}" "${cells[1]}" "${cells[2]}" \
    "${cells[3]}"
done
mv "$CSV.tmp" "$CSV"
python3 scripts/plot_svg.py --csv "$CSV" --x bpw --y ppl_tinystories,ppl_wikitext2 --group act \
  --label config --title "stories260K: perplexity vs linear bpw (W = weights only, act=fgmp: W+A)" \
  --out "$SVG"
echo "fgmp_table: wrote $CSV and $SVG" >&2
