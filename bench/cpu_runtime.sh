#!/usr/bin/env bash
# CPU runtime measurements of docs/results.md §7 (issue [13]): the perplexity cost of the
# fast kernels on stories260K, mpq-eval prefill throughput and mpq-bench --decode speed on
# the hidden-2048 random Llama, and decode against the bandwidth bound on a Llama-2-7B-shaped
# model cut to a few layers.
#
# Usage (from anywhere):  bench/cpu_runtime.sh accuracy|models|prefill|decode|models7b|decode7b|
#                         headacc|headmodels|headdecode|all
#   accuracy  stories260K: each format packed, mpq-eval --kernels fast vs exact, windowed and
#             --token-by-token (the decode path), TinyStories eval 20,480 tokens, ctx 512
#   models    the hidden-2048, 8-layer random Llama (vocab 32000, llama_config defaults) in
#             f32 and bf16 (same draw), packed nvfp4 / fp8 / squeezellm-4bit from both and
#             squeezellm-3bit / fgmp from bf16
#   prefill   mpq-eval, 4 windows of 512 random ids, f32 source vs its packed forms, ROUNDS
#             interleaved rounds (tokens/s of each round and the median)
#   decode    mpq-bench --decode, bf16 source vs its packed forms, one run
#   models7b  Llama-2-7B shapes (hidden 4096, intermediate 11008, 32 heads, vocab 32000),
#             LAYERS7B layers, bf16, and its packed forms
#   decode7b  mpq-bench --decode on those, with the bandwidth bound
#   headacc   stories260K with its tied head written out as lm_head.weight (the same model,
#             untied), packed with and without mpq-pack --lm-head: perplexity cost of a packed
#             head, exact and fast kernels
#   headmodels / headdecode  the hidden-2048 bf16 model packed with --lm-head fp8 (and
#             squeezellm-4bit), and mpq-bench --decode against bf16 with and without it
# Environment overrides: BUILD (build), WORK (/tmp/mpq-cpu-runtime), THREADS (2), ROUNDS (2),
# LAYERS7B (4), DATA (../shared/data), OUT (bench/results: the JSON files), PROMPT (128) and
# GEN (64): decode's prompt and generated tokens (PROMPT=1 GEN=32 is llama-bench's tg32:
# 32 tokens from an empty context), REPS (5): decode rounds (mpq-bench --reps; every model
# runs once per round, so the per-round ratios share the machine's state), TAG (""): suffix
# of the decode JSON names.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD="${BUILD:-build}"
WORK="${WORK:-/tmp/mpq-cpu-runtime}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-2}"
LAYERS7B="${LAYERS7B:-4}"
PROMPT="${PROMPT:-128}"
GEN="${GEN:-64}"
REPS="${REPS:-5}"
TAG="${TAG:-}"
DATA="${DATA:-../shared/data}"
OUT="${OUT:-bench/results}"
T="$BUILD/tools"
MK="$T/mpq-make-random-model"
mkdir -p "$WORK" "$OUT"

json_field() {  # json_field FILE EXPR  (python3 expression over j)
  python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"
}

pack_all() {  # pack_all SRC "label:args ..."
  local src="$1"; shift
  for spec in "$@"; do
    local label="${spec%%:*}" args="${spec#*:}"
    [[ -f "$src-$label/model.safetensors" ]] && continue
    echo "cpu_runtime: packing $src-$label ($args)" >&2
    # shellcheck disable=SC2086
    "$T/mpq-pack" --model "$src" $args --out "$src-$label" --threads "$THREADS" -q >&2
  done
}

accuracy() {
  local M="$DATA/models/stories260K-hf" TOK="$DATA/reference/stories260K_tinystories_eval_tokens_20480.i32"
  local S="$WORK/stories"
  mkdir -p "$S"
  [[ -e "$S/src" ]] || ln -s "$(cd "$M" && pwd)" "$S/src"
  pack_all "$S/src" "nvfp4:--format nvfp4" "fp8:--format fp8" "sq4:--format squeezellm --bits 4" \
    "sq3:--format squeezellm --bits 3" "fgmp:--format fgmp --fp8-fraction 0.3"
  echo "| format | exact (windows) | fast (windows) | Δ | exact (token by token) | fast (token by token) | Δ |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for f in src nvfp4 fp8 sq4 sq3 fgmp; do
    local dir="$S/src-$f"
    if [[ "$f" == src ]]; then dir="$S/src"; fi
    declare -A ppl
    for mode in exact fast; do
      for tbt in "" "--token-by-token"; do
        local js="$OUT/cpu_accuracy_${f}_${mode}${tbt:+_tbt}.json"
        "$T/mpq-eval" --model "$dir" --tokens "$TOK" --ctx 512 --kernels "$mode" $tbt --threads "$THREADS" -q --json "$js" >/dev/null
        ppl["$mode$tbt"]=$(json_field "$js" "'%.4f' % j['ppl']")
      done
    done
    python3 - "$f" "${ppl[exact]}" "${ppl[fast]}" "${ppl[exact--token-by-token]}" "${ppl[fast--token-by-token]}" <<'PY'
import sys
f, e, fa, et, ft = sys.argv[1], *map(float, sys.argv[2:])
print(f"| {f} | {e:.4f} | {fa:.4f} | {100*(fa/e-1):+.3f}% | {et:.4f} | {ft:.4f} | {100*(ft/et-1):+.3f}% |")
PY
    unset ppl
  done
}

models() {
  local R="$WORK/rand"
  mkdir -p "$WORK"
  [[ -f "$R-f32/model.safetensors" ]] || "$MK" --out "$R-f32" --dtype f32 >&2
  [[ -f "$R-bf16/model.safetensors" ]] || "$MK" --out "$R-bf16" --dtype bf16 >&2
  pack_all "$R-f32" "nvfp4:--format nvfp4" "fp8:--format fp8" "sq4:--format squeezellm --bits 4"
  pack_all "$R-bf16" "nvfp4:--format nvfp4" "fp8:--format fp8" "sq4:--format squeezellm --bits 4" \
    "sq3:--format squeezellm --bits 3" "fgmp:--format fgmp --fp8-fraction 0.3"
  # 4 windows of 512 random ids (seed 1)
  python3 -c "import random,struct; random.seed(1); open('$WORK/ids.i32','wb').write(struct.pack('<2048i', *[random.randrange(32000) for _ in range(2048)]))"
}

prefill() {
  local R="$WORK/rand"
  local labels=(f32 f32-nvfp4 f32-fp8 f32-sq4)
  for round in $(seq 1 "$ROUNDS"); do
    for l in "${labels[@]}"; do
      "$T/mpq-eval" --model "$R-$l" --tokens "$WORK/ids.i32" --ctx 512 --max-tokens 2048 --threads "$THREADS" -q \
        --json "$OUT/cpu_prefill_${l}_r$round.json" >/dev/null
    done
  done
  python3 - "$OUT" "$ROUNDS" "${labels[@]}" <<'PY'
import json, statistics, sys
out, rounds, labels = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
tps = {l: [json.load(open(f"{out}/cpu_prefill_{l}_r{r}.json"))["tokens_per_second"] for r in range(1, rounds + 1)] for l in labels}
base = statistics.median(tps[labels[0]])
print("| model | tokens/s per round | median | × f32 | kernel path | ppl |")
print("|---|---|---:|---:|---|---:|")
for l in labels:
    j = json.load(open(f"{out}/cpu_prefill_{l}_r1.json"))
    m = statistics.median(tps[l])
    print(f"| {l} | {' / '.join('%.1f' % v for v in tps[l])} | {m:.1f} | {m / base:.2f} | {', '.join(j['kernel_paths'].values())} | {j['ppl']:.2f} |")
PY
}

decode() {
  local R="$WORK/rand"
  "$T/mpq-bench" --decode --model "$R-bf16" --model "$R-bf16-nvfp4" --model "$R-bf16-sq4" --model "$R-bf16-sq3" \
    --model "$R-bf16-fp8" --model "$R-bf16-fgmp" --model "$R-f32" --threads "$THREADS" \
    --reps "$REPS" --prompt-tokens "$PROMPT" --gen-tokens "$GEN" --json "$OUT/cpu_decode$TAG.json"
}

models7b() {
  local R="$WORK/llama2-7b-l$LAYERS7B"
  [[ -f "$R-bf16/model.safetensors" ]] ||
    "$MK" --out "$R-bf16" --hidden 4096 --intermediate 11008 --layers "$LAYERS7B" --heads 32 --kv-heads 32 --vocab 32000 \
      --dtype bf16 >&2
  pack_all "$R-bf16" "nvfp4:--format nvfp4" "fp8:--format fp8" "sq4:--format squeezellm --bits 4" \
    "sq3:--format squeezellm --bits 3" "fgmp:--format fgmp --fp8-fraction 0.3" \
    "int4:--format int4-g128"
}

# stories260K untied: lm_head.weight = a copy of the embedding (config tie_word_embeddings false).
untie_stories() {
  local M="$DATA/models/stories260K-hf" U="$1"
  [[ -f "$U/model.safetensors" ]] && return
  mkdir -p "$U"
  cp "$M"/tokenizer* "$M"/special_tokens_map.json "$U"/ 2>/dev/null || true
  python3 - "$M" "$U" <<'PY'
import json, struct, sys
src, dst = sys.argv[1], sys.argv[2]
cfg = json.load(open(f"{src}/config.json")); cfg["tie_word_embeddings"] = False
json.dump(cfg, open(f"{dst}/config.json", "w"), indent=2)
raw = open(f"{src}/model.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]; hdr = json.loads(raw[8:8 + n]); data = raw[8 + n:]
meta = hdr.pop("__metadata__", None)
e = hdr["model.embed_tokens.weight"]; a, b = e["data_offsets"]
hdr["lm_head.weight"] = {"dtype": e["dtype"], "shape": e["shape"], "data_offsets": [len(data), len(data) + b - a]}
data += data[a:b]
if meta is not None: hdr["__metadata__"] = meta
h = json.dumps(hdr).encode(); h += b" " * (-len(h) % 8)
open(f"{dst}/model.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + data)
PY
}

headacc() {
  local U="$WORK/stories-untied/src" TOK="$DATA/reference/stories260K_tinystories_eval_tokens_20480.i32"
  untie_stories "$U"
  # nvfp4 with --export mpq throughout: --lm-head implies the mpq-native export, whose
  # per-module tensor scales differ from the ModelOpt export's shared fused-layer scales.
  local packs=("nvfp4:--format nvfp4 --export mpq" "nvfp4-h8:--format nvfp4 --lm-head fp8"
    "nvfp4-hi8:--format nvfp4 --lm-head int8-g128" "nvfp4-h4:--format nvfp4 --lm-head nvfp4"
    "sq4:--format squeezellm --bits 4" "sq4-h8:--format squeezellm --bits 4 --lm-head fp8"
    "sq4-hi8:--format squeezellm --bits 4 --lm-head int8-g128"
    "sq4-hsq4:--format squeezellm --bits 4 --lm-head squeezellm-4bit" "sq3:--format squeezellm --bits 3"
    "sq3-h8:--format squeezellm --bits 3 --lm-head fp8" "sq3-hi8:--format squeezellm --bits 3 --lm-head int8-g128")
  pack_all "$U" "${packs[@]}"
  echo "| model | lm_head | ppl exact | ppl fast (token by token) | KL vs source (exact) |"
  echo "|---|---|---:|---:|---:|"
  for f in src "${packs[@]%%:*}"; do
    local dir="$U-$f"
    if [[ "$f" == src ]]; then dir="$U"; fi
    local je="$OUT/cpu_headacc_${f}_exact.json" jf="$OUT/cpu_headacc_${f}_fast_tbt.json"
    "$T/mpq-eval" --model "$dir" --tokens "$TOK" --ctx 512 --kernels exact --base "$U" --threads "$THREADS" -q --json "$je" >/dev/null
    "$T/mpq-eval" --model "$dir" --tokens "$TOK" --ctx 512 --kernels fast --token-by-token --threads "$THREADS" -q --json "$jf" >/dev/null
    local head=source
    [[ -f "$dir/mpq_manifest.json" ]] && head=$(json_field "$dir/mpq_manifest.json" "j['tensors']['lm_head']['format'] if 'lm_head' in j['tensors'] else 'source'")
    echo "| $f | $head | $(json_field "$je" "'%.4f' % j['ppl']") | $(json_field "$jf" "'%.4f' % j['ppl']") | $(json_field "$je" "'%.5f' % j['mean_kl']") |"
  done
}

headmodels() {
  local R="$WORK/rand"
  [[ -f "$R-bf16/model.safetensors" ]] || "$MK" --out "$R-bf16" --dtype bf16 >&2
  pack_all "$R-bf16" "nvfp4:--format nvfp4" "sq4:--format squeezellm --bits 4" "sq3:--format squeezellm --bits 3" \
    "nvfp4-h8:--format nvfp4 --lm-head fp8" "sq4-h8:--format squeezellm --bits 4 --lm-head fp8" \
    "sq3-h8:--format squeezellm --bits 3 --lm-head fp8" "sq4-hsq4:--format squeezellm --bits 4 --lm-head squeezellm-4bit" \
    "sq4-hi8:--format squeezellm --bits 4 --lm-head int8-g128" "int4:--format int4-g128" \
    "int4-hi8:--format int4-g128 --lm-head int8-g128"
}

headdecode() {
  local R="$WORK/rand"
  "$T/mpq-bench" --decode --model "$R-bf16" --model "$R-bf16-nvfp4" --model "$R-bf16-sq4" --model "$R-bf16-sq3" \
    --model "$R-bf16-nvfp4-h8" --model "$R-bf16-sq4-h8" --model "$R-bf16-sq3-h8" --model "$R-bf16-sq4-hsq4" --model "$R-bf16-sq4-hi8" \
    --model "$R-bf16-int4" --model "$R-bf16-int4-hi8" \
    --threads "$THREADS" --reps "$REPS" --prompt-tokens "$PROMPT" --gen-tokens "$GEN" --json "$OUT/cpu_decode_head$TAG.json"
}

decode7b() {
  local R="$WORK/llama2-7b-l$LAYERS7B"
  "$T/mpq-bench" --decode --model "$R-bf16" --model "$R-bf16-nvfp4" --model "$R-bf16-sq4" --model "$R-bf16-sq3" \
    --model "$R-bf16-fp8" --model "$R-bf16-fgmp" --model "$R-bf16-int4" --threads "$THREADS" --bandwidth-mb 2048 \
    --reps "$REPS" --prompt-tokens "$PROMPT" --gen-tokens "$GEN" --json "$OUT/cpu_decode_7b$TAG.json"
}

case "${1:-all}" in
  accuracy) accuracy ;;
  models) models ;;
  prefill) prefill ;;
  decode) decode ;;
  models7b) models7b ;;
  decode7b) decode7b ;;
  headacc) headacc ;;
  headmodels) headmodels ;;
  headdecode) headdecode ;;
  all) accuracy; models; prefill; decode; models7b; decode7b ;;
  *) echo "usage: $0 accuracy|models|prefill|decode|models7b|decode7b|headacc|headmodels|headdecode|all" >&2; exit 2 ;;
esac
