#!/usr/bin/env bash
# Command 1: install what is missing, build, then on a real model (default
# ../shared/data/models/stories260K-hf, or the folder given as $1):
#   sensitivities (Fisher, layer Hessian, activation Fisher) from the calibration text ->
#   fp32 perplexity -> pack FP8, NVFP4 (weight-only and W4A4 with calibrated input scales; engine
#   exports), SqueezeLLM 3-bit dense-and-sparse, FGMP (30% FP8 blocks) and an mpq-search plan at
#   4.5 bpw, then the GPTQ-compensated variants (NVFP4 with Four Over Six, int4 per row,
#   SqueezeLLM 3-bit, and a calibrated search at 4.5 bpw over every format with and without
#   GPTQ, checked against the single formats) -> their perplexity and KL vs fp32 -> a table
#   with each folder's export and whether vLLM loads it.
# Calibration: $MPQ_CALIB (default ../shared/data/text/tinystories_valid_calib.txt).
# Text: $MPQ_TEXT (default ../shared/data/text/tinystories_valid_eval.txt), first
# $MPQ_MAX_TOKENS tokens (default 20480), ctx = min(512, the model's max_position_embeddings),
# or $MPQ_CTX (a value above max_position_embeddings is passed with --allow-long-ctx, and
# mpq-eval warns). Outputs under ./out/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${MPQ_DATA:-../shared/data}"
MODEL="${1:-$DATA/models/stories260K-hf}"
TEXT="${MPQ_TEXT:-$DATA/text/tinystories_valid_eval.txt}"
CALIB="${MPQ_CALIB:-$DATA/text/tinystories_valid_calib.txt}"
MAXTOK="${MPQ_MAX_TOKENS:-20480}"
if [ ! -f "$MODEL/config.json" ]; then
  echo "run-main: no model at '$MODEL' (give a Hugging Face Llama folder as the first argument)" >&2
  exit 3
fi
bash scripts/setup.sh
MAXPOS=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("max_position_embeddings") or 0)' \
         "$MODEL/config.json")
CTX_ARGS=(--ctx "$(( MAXPOS > 0 && MAXPOS < 512 ? MAXPOS : 512 ))")
if [ -n "${MPQ_CTX:-}" ]; then
  CTX_ARGS=(--ctx "$MPQ_CTX")
  [ "$MAXPOS" -gt 0 ] && [ "$MPQ_CTX" -gt "$MAXPOS" ] && CTX_ARGS+=(--allow-long-ctx)
fi
echo "run-main: ${CTX_ARGS[*]} (max_position_embeddings $MAXPOS)" >&2
B=build/tools
OUT=out/$(basename "$MODEL")
mkdir -p "$OUT"

$B/mpq-inspect "$MODEL" --json "$OUT/inspect-fp32.json" >/dev/null
if [ -f "$CALIB" ]; then
  $B/mpq-sensitivity --model "$MODEL" --calib "$CALIB" --samples 128 --seq-len 256 \
    --kind fisher,hessian,act-fisher --out "$OUT/sensitivity.safetensors" --json "$OUT/sensitivity.json" -q | tail -n 1
fi
$B/mpq-eval --model "$MODEL" --text "$TEXT" "${CTX_ARGS[@]}" --max-tokens "$MAXTOK" --json "$OUT/eval-fp32.json"
FORMATS="fp8 nvfp4"
if [ -f "$OUT/sensitivity.safetensors" ]; then
  FORMATS="$FORMATS nvfp4-w4a4 squeezellm3 fgmp mixed4.5 nvfp4+gptq int4 int4+gptq squeezellm3+gptq mixed4.5+gptq"
  $B/mpq-search --model "$MODEL" --sensitivity "$OUT/sensitivity.safetensors" --target-bpw 4.5 \
    --out "$OUT/plan-4.5.json" -q | tail -n +2
  $B/mpq-search --model "$MODEL" --sensitivity "$OUT/sensitivity.safetensors" --target-bpw 4.5 \
    --calib "$CALIB" --calib-samples 32 --calib-seq-len "${CTX_ARGS[1]}" --out "$OUT/plan-4.5-gptq.json" -q | tail -n +2
fi
GPTQ=(--calib "$CALIB" --calib-samples 128 --calib-seq-len "${CTX_ARGS[1]}")
for fmt in $FORMATS; do
  case "$fmt" in
    squeezellm3) args=(--format squeezellm --bits 3 --sensitivity "$OUT/sensitivity.safetensors") ;;
    fgmp) args=(--format fgmp --fp8-fraction 0.3 --sensitivity "$OUT/sensitivity.safetensors") ;;
    mixed4.5) args=(--plan "$OUT/plan-4.5.json") ;;
    nvfp4+gptq) args=(--format nvfp4+gptq-4o6 "${GPTQ[@]}") ;;
    int4) args=(--format int4) ;;
    int4+gptq) args=(--format int4+gptq "${GPTQ[@]}") ;;
    squeezellm3+gptq) args=(--format squeezellm-3bit-sparse+gptq --sensitivity "$OUT/sensitivity.safetensors" "${GPTQ[@]}") ;;
    mixed4.5+gptq) args=(--plan "$OUT/plan-4.5-gptq.json" "${GPTQ[@]}") ;;
    nvfp4-w4a4) args=(--format nvfp4 --activations static --calib "$CALIB") ;;
    *) args=(--format "$fmt") ;;
  esac
  $B/mpq-pack --model "$MODEL" "${args[@]}" --out "$OUT/$fmt" --force -q >/dev/null
  $B/mpq-inspect "$OUT/$fmt" --json "$OUT/inspect-$fmt.json" >/dev/null
  $B/mpq-eval --model "$OUT/$fmt" --base "$MODEL" --text "$TEXT" "${CTX_ARGS[@]}" --max-tokens "$MAXTOK" \
    --json "$OUT/eval-$fmt.json"
done

python3 - "$OUT" fp32 $FORMATS <<'PY'
import json, sys
out = sys.argv[1]
print(f"\n{'format':<16} {'ppl':>9} {'mean KL':>10} {'linear bpw':>11} {'model bpw':>10} {'tokens/s*':>10}  {'export':<19} {'act':<8} vLLM")
for fmt in sys.argv[2:]:
    e = json.load(open(f"{out}/eval-{fmt}.json"))
    i = json.load(open(f"{out}/inspect-{fmt}.json"))
    kl = "-" if e["mean_kl"] is None else f"{e['mean_kl']:.5f}"
    ex = i.get("export", {}).get("kind", "-")
    vllm = next((("loads" if v["loads"] else "refuses") for v in i.get("engines", []) if v["engine"] == "vLLM"), "-")
    print(f"{fmt:<16} {e['ppl']:>9.4f} {kl:>10} {e['linear_bpw']:>11.4f} {i['total']['bpw']:>10.4f} {e['tokens_per_second']:>10.0f}  {ex:<19} {e.get('act_declared', '-'):<8} {vllm}")
print("* forward throughput of mpq-eval; quantized rows also run the fp32 base model for KL")
print("  export: the checkpoint contract (docs/formats.md); act: activation scheme mpq-eval emulated as declared")
PY
