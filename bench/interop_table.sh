#!/usr/bin/env bash
# Engine-export evidence on stories260K (docs/results.md §7):
#  1. every export (ModelOpt / compressed-tensors x NVFP4 / FP8 x weight-only / static /
#     dynamic activations, and a mixed FP8+NVFP4 plan for each engine) evaluated by mpq-eval
#     on the packed folder and on the dense folder the independent engine reader
#     (tests/interop/engine_reader.py, python3 + numpy) writes from it: weights only
#     (--act none: ppl and KL) and with the declared activation scheme (--act auto);
#  2. the fused layers' shared NVFP4 global scales against each shard's own, and the
#     perplexity cost of sharing (same modules quantized, per-module vs shared scales);
#  3. the NVFP4 checkpoint mpq wrote before the engine exports (per-module weight_scale_2),
#     made loadable (ignore + W4A16_NVFP4, down_proj excluded), under vLLM's max-of-shards rule.
#     Needs OLD_PACK: an mpq-pack built from commit cfeea14 (skipped when unset).
#
# Usage:  bench/interop_table.sh        Environment: MODEL, DATA, BUILD, WORK, PY (python3 with
# numpy, default /usr/bin/python3), MAXTOK (20480), OLD_PACK. Markdown on stdout.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${MODEL:-../shared/data/models/stories260K-hf}"
DATA="${DATA:-../shared/data}"
BUILD="${BUILD:-build}"
WORK="${WORK:-/tmp/mpq-interop}"
PY="${PY:-/usr/bin/python3}"
MAXTOK="${MAXTOK:-20480}"
T="$BUILD/tools"
IDS="$DATA/reference/stories260K_tinystories_eval_tokens_20480.i32"
CALIB="$DATA/text/tinystories_valid_calib.txt"
mkdir -p "$WORK"
ev() { "$T/mpq-eval" --model "$1" --tokens "$IDS" --ctx 512 --max-tokens "$MAXTOK" -q --json "$2" "${@:3}" 2>/dev/null >/dev/null; }
val() { "$PY" -c "import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]; print('-' if v is None else ('%.4f' % v if sys.argv[2]=='ppl' else '%.2e' % v))" "$1" "$2"; }

if [[ ! -f "$WORK/sens.safetensors" ]]; then
  "$T/mpq-sensitivity" --model "$MODEL" --calib "$CALIB" --samples 32 --seq-len 256 --kind fisher \
    --out "$WORK/sens.safetensors" -q >/dev/null 2>&1
fi
for e in modelopt compressed-tensors; do
  "$T/mpq-search" --model "$MODEL" --sensitivity "$WORK/sens.safetensors" --export $e --target-bpw 6 \
    --out "$WORK/plan-$e.json" -q >/dev/null 2>&1
done

echo "| export | format | activations | quant_algo / format | linear bpw | mpq-eval ppl (W only) | reader ppl (W only) | KL(packed ‖ reader) | mpq-eval ppl (declared act) | reader ppl (declared act) |"
echo "|---|---|---|---|---:|---:|---:|---:|---:|---:|"
while read -r name args; do
  P="$WORK/$name"; D="$WORK/$name-dense"
  rm -rf "$P" "$D"
  # shellcheck disable=SC2086
  "$T/mpq-pack" --model "$MODEL" $args --out "$P" -q >/dev/null 2>&1
  "$PY" tests/interop/engine_reader.py "$P" "$D" >/dev/null
  ev "$P" "$WORK/a.json" --act none; ev "$D" "$WORK/b.json" --act none --base "$P"
  ev "$P" "$WORK/c.json" --act auto; ev "$D" "$WORK/d.json" --act auto
  algo=$("$PY" -c "import json,sys; q=json.load(open(sys.argv[1]))['quantization_config']; print(q.get('quant_algo') or q.get('format'))" "$P/config.json")
  exp=$("$PY" -c "import json,sys; m=json.load(open(sys.argv[1]))['export']; print(m['kind'] + ' ' + m['activations'])" "$P/mpq_manifest.json")
  case "$args" in --plan*) fmt="fp8+nvfp4 plan (6 bpw)" ;; *) fmt=$(echo "$args" | sed -E 's/--format ([^ ]+).*/\1/') ;; esac
  bpw=$("$PY" -c "import json,sys; print('%.4f' % json.load(open(sys.argv[1]))['linear_bpw'])" "$WORK/a.json")
  echo "| ${exp% *} | $fmt | ${exp#* } | $algo | $bpw | $(val "$WORK/a.json" ppl) | $(val "$WORK/b.json" ppl) | $(val "$WORK/b.json" mean_kl) | $(val "$WORK/c.json" ppl) | $(val "$WORK/d.json" ppl) |"
done <<EOT
mo-nvfp4 --format nvfp4 --export modelopt
mo-nvfp4-static --format nvfp4 --export modelopt --activations static --calib $CALIB
mo-fp8-static --format fp8 --export modelopt --activations static --calib $CALIB
mo-fp8-dynamic --format fp8 --export modelopt --activations dynamic
mo-mixed --plan $WORK/plan-modelopt.json --activations static --calib $CALIB
ct-nvfp4 --format nvfp4 --export compressed-tensors
ct-nvfp4-static --format nvfp4 --export compressed-tensors --activations static --calib $CALIB
ct-fp8 --format fp8 --export compressed-tensors
ct-fp8-static --format fp8 --export compressed-tensors --activations static --calib $CALIB
ct-fp8-dynamic --format fp8 --export compressed-tensors --activations dynamic
ct-mixed --plan $WORK/plan-compressed-tensors.json
EOT

echo
echo "Shared NVFP4 global scales (modelopt export): weight_scale_2 = amax / 2688"
echo
echo "| fused layer | shared amax | own amax per shard |"
echo "|---|---:|---|"
"$PY" - "$WORK/mo-nvfp4/mpq_manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
for g in m["export"]["shared_scales"]:
    own = ", ".join(f"{k.split('.')[-1]} {v['own_amax']:.4f}" for k, v in g["modules"].items())
    print(f"| {g['fused_layer']} | {g['shared_amax']:.4f} | {own} |")
PY

echo
rm -rf "$WORK/native-nd"
"$T/mpq-pack" --model "$MODEL" --format nvfp4 --export mpq --exclude down_proj --out "$WORK/native-nd" -q >/dev/null 2>&1
ev "$WORK/native-nd" "$WORK/e.json" --act none
ev "$WORK/mo-nvfp4" "$WORK/f.json" --act none
echo "Cost of sharing (same modules NVFP4, down_proj F32): per-module scales $(val "$WORK/e.json" ppl), shared (modelopt export) $(val "$WORK/f.json" ppl)"
if [[ -n "${OLD_PACK:-}" ]]; then
  rm -rf "$WORK/old" "$WORK/old-dense"
  "$OLD_PACK" --model "$MODEL" --format nvfp4 --exclude down_proj --out "$WORK/old" -q >/dev/null 2>&1
  "$PY" - "$WORK/old/config.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); c = j["quantization_config"]
c["ignore"] = c.pop("exclude_modules"); c["quant_algo"] = "W4A16_NVFP4"
json.dump(j, open(sys.argv[1], "w"))
PY
  "$PY" tests/interop/engine_reader.py "$WORK/old" "$WORK/old-dense" >/dev/null
  ev "$WORK/old" "$WORK/g.json" --act none; ev "$WORK/old-dense" "$WORK/h.json" --act none
  echo "Pre-export NVFP4 checkpoint (per-module weight_scale_2): mpq-eval $(val "$WORK/g.json" ppl), under vLLM's max-of-shards rule $(val "$WORK/h.json" ppl)"
fi
