#!/usr/bin/env bash
# Memory and time at Llama-2-7B shapes (issue [9/12]): a bf16 random model of the
# llama2-7b preset cut to $LAYERS decoder layers (hidden 4096, intermediate 11008, 32 heads,
# vocab 32000: every tensor at its 7B shape; the tools stream layer by layer, so peak
# memory does not grow with the layer count while time grows linearly), then per tool the
# peak anonymous resident memory (RssAnon, ../shared/tools/peak_anon.py) and wall time:
#   mpq-sensitivity --kind fisher,hessian, 2 windows of 256 tokens
#   mpq-pack nvfp4, fp8, squeezellm 3-bit (with the Fisher file), fgmp
#   mpq-eval of the source and of each packed folder, 2 windows of 512 tokens
# Writes bench/results/scale_7b_L<layers>.md. Random weights: memory and time only.
#
#   LAYERS=4 bash bench/scale_7b.sh          # about 10 minutes on 2 cores
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD="${BUILD:-build}"
LAYERS="${LAYERS:-4}"
WORK="${WORK:-/tmp/mpq-scale-7b}"
THREADS="${THREADS:-2}"
PEAK="${PEAK:-../shared/tools/peak_anon.py}"
OUT="${OUT:-bench/results/scale_7b_L$LAYERS.md}"
T="$BUILD/tools"
M="$WORK/llama2-7b-L$LAYERS"
mkdir -p "$WORK" "$(dirname "$OUT")"

[[ -f "$M/config.json" ]] || "$T/mpq-make-random-model" --preset llama2-7b --layers "$LAYERS" --dtype bf16 --out "$M" -q
python3 - "$M" > "$WORK/ids.i32" <<'PY'
import struct, sys, random
random.seed(1)
sys.stdout.buffer.write(struct.pack("<4096i", *[random.randrange(32000) for _ in range(4096)]))
PY

rows=()
run() {  # label cmd...
  local label="$1"; shift
  local s0 s1
  s0=$(date +%s.%N)
  python3 "$PEAK" "$WORK/peak.txt" -- "$@" > "$WORK/$label.out" 2>&1
  s1=$(date +%s.%N)
  rows+=("$label|$(cat "$WORK/peak.txt")|$(python3 -c "print('%.1f' % ($s1 - $s0))")")
}

run "mpq-sensitivity fisher,hessian (2 x 256)" "$T/mpq-sensitivity" --model "$M" --calib "$WORK/ids.i32" --samples 2 \
  --seq-len 256 --kind fisher,hessian --threads "$THREADS" --out "$WORK/sens.safetensors" -q
for f in nvfp4 fp8 squeezellm3 fgmp; do
  case "$f" in
    squeezellm3) args=(--format squeezellm-3bit-sparse --sensitivity "$WORK/sens.safetensors") ;;
    fgmp) args=(--format fgmp-30 --sensitivity "$WORK/sens.safetensors" --export mpq) ;;
    *) args=(--format "$f") ;;
  esac
  run "mpq-pack $f" "$T/mpq-pack" --model "$M" "${args[@]}" --out "$WORK/$f" --force --threads "$THREADS" -q
done
for f in source nvfp4 fp8 squeezellm3 fgmp; do
  d="$WORK/$f"; [[ "$f" == source ]] && d="$M"
  run "mpq-eval $f (2 x 512)" "$T/mpq-eval" --model "$d" --tokens "$WORK/ids.i32" --ctx 512 --max-tokens 1024 \
    --threads "$THREADS" -q --json "$WORK/eval-$f.json"
done

python3 - "$M" "$WORK" "$LAYERS" "${rows[@]}" <<'PY' | tee "$OUT"
import json, os, sys, glob
m, work, layers = sys.argv[1], sys.argv[2], int(sys.argv[3])
def folder_bytes(d):
    return sum(os.path.getsize(f) for f in glob.glob(os.path.join(d, "*.safetensors")))
cfg = json.load(open(os.path.join(m, "config.json")))
H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
params_layer = 4 * H * H + 3 * H * I + 2 * H
params = layers * params_layer + 2 * V * H + H
print(f"Llama-2-7B shapes, {layers} of 32 layers, bf16: {params/1e9:.3f} B parameters ({folder_bytes(m)/1e9:.2f} GB on disk)\n")
print("| tool | peak RssAnon MiB | wall s | bytes/param (anon) | packed GB | tokens/s |")
print("|---|---:|---:|---:|---:|---:|")
for r in sys.argv[4:]:
    label, peak, secs = r.split("|")
    extra, tps = "", ""
    f = label.split()[1] if label.startswith("mpq-pack") or label.startswith("mpq-eval") else None
    if label.startswith("mpq-pack"): extra = "%.2f" % (folder_bytes(os.path.join(work, f)) / 1e9)
    if label.startswith("mpq-eval"):
        j = json.load(open(os.path.join(work, f"eval-{f}.json"))); tps = "%.1f" % j["tokens_per_second"]
    print(f"| {label} | {peak} | {secs} | {int(peak) * 2**20 / params:.3f} | {extra} | {tps} |")
PY
