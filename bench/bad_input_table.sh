#!/usr/bin/env bash
# The bad-input classes of issue [8/12] and the exit code each gets (docs/results.md §8):
#   bench/bad_input_table.sh [TOOLS_DIR]     (default build/tools)
# Runs every case on a scratch copy of stories260K-hf ($MPQ_DATA or ../shared/data) and
# prints a markdown table: class, tool, exit code, first error line. Pointing TOOLS_DIR at
# an older build shows what the same input did before.
set -uo pipefail
cd "$(dirname "$0")/.."
T="$(cd "${1:-build/tools}" && pwd)"
DATA="${MPQ_DATA:-../shared/data}"
SRC="$DATA/models/stories260K-hf"
CALIB="$DATA/text/tinystories_valid_calib.txt"
IDS="$DATA/reference/stories260K_tinystories_eval_tokens_20480.i32"
[ -f "$SRC/config.json" ] || { echo "bad_input_table: no $SRC" >&2; exit 3; }
W=$(mktemp -d /tmp/mpq-badinput-XXXXXX)
trap 'rm -rf "$W"' EXIT

fresh() { rm -rf "$W/m" && cp -r "$SRC" "$W/m" && chmod -R u+w "$W/m"; }
# edit 'PYTHON EXPRESSION on j' -> rewrites $W/m/config.json
edit() { python3 - "$W/m/config.json" "$1" <<'PY'
import json, sys
p, expr = sys.argv[1], sys.argv[2]
j = json.load(open(p))
exec(expr)
json.dump(j, open(p, "w"))
PY
}
row() {  # class, tool label, command...
  local cls="$1" label="$2"; shift 2
  local out rc
  out=$(timeout 120 "$@" 2>&1); rc=$?
  local line
  line=$(printf '%s\n' "$out" | grep -m1 -E "error|warning|note" | cut -c1-150 | sed 's/|/\\|/g')
  printf '| %s | %s | %s | %s |\n' "$cls" "$label" "$rc" "${line:-}"
}

echo "| bad input | tool | exit | first error line |"
echo "|---|---|---|---|"
fresh; edit 'j["hidden_act"] = None'
row 'config.json `hidden_act: null`' mpq-inspect "$T/mpq-inspect" "$W/m"
fresh; edit 'j["hidden_act"] = 5'
row 'config.json `hidden_act: 5`' mpq-eval "$T/mpq-eval" --model "$W/m" --tokens "$IDS" --ctx 64 --max-tokens 256 -q
fresh; edit 'j["num_hidden_layers"] = 1000000'
row 'config.json `num_hidden_layers: 1e6`' mpq-inspect "$T/mpq-inspect" "$W/m"
row 'config.json `num_hidden_layers: 1e6`' mpq-eval "$T/mpq-eval" --model "$W/m" --tokens "$IDS" --ctx 64 --max-tokens 256 -q
row 'config.json `num_hidden_layers: 1e6`' mpq-pack "$T/mpq-pack" --model "$W/m" --format fp8 --out "$W/o" -q
row 'config.json `num_hidden_layers: 1e6`' mpq-sensitivity "$T/mpq-sensitivity" --model "$W/m" --calib "$IDS" --samples 2 --seq-len 32 --out "$W/s.safetensors" -q
fresh; edit 'j["num_hidden_layers"] = 2**62'
row 'config.json `num_hidden_layers: 2^62`' mpq-eval "$T/mpq-eval" --model "$W/m" --tokens "$IDS" --ctx 64 --max-tokens 256 -q
fresh; edit 'j["head_dim"] = 2**62'
row 'config.json `head_dim: 2^62` (heads x head_dim overflows)' mpq-inspect "$T/mpq-inspect" "$W/m"
fresh; edit 'j["head_dim"] = 2**40'
row 'config.json `head_dim: 2^40` (no overflow, no such tensor)' mpq-inspect "$T/mpq-inspect" "$W/m"

fresh
"$T/mpq-sensitivity" --model "$W/m" --calib "$CALIB" --samples 4 --seq-len 64 --kind fisher --out "$W/sens.safetensors" -q >/dev/null 2>&1
"$T/mpq-search" --model "$W/m" --sensitivity "$W/sens.safetensors" --formats nvfp4,fp8 --target-bpw 6 --out "$W/plan.json" -q >/dev/null 2>&1
plan() {  # PYTHON EXPRESSION on j -> $W/bad.json
  python3 - "$W/plan.json" "$W/bad.json" "$1" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
exec(sys.argv[3])
json.dump(j, open(sys.argv[2], "w"))
PY
}
for expr in 'j["mpq_plan_version"] = "1"' 'j["solver"] = "optimal"' 'j["sensitivity_file"] = 5' 'j["inputs_sha256"] = []' \
            'j["tensors"]["model.embed_tokens"] = {"candidate": "fp8"}'; do
  plan "$expr"
  row "plan: \`${expr#j}\`" "mpq-pack --plan" "$T/mpq-pack" --model "$W/m" --plan "$W/bad.json" --out "$W/o" -q
done
python3 - "$W/sens.safetensors" "$W/bad-sens.safetensors" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
h["__metadata__"]["traces"] = "[1, 2]"
t = json.dumps(h).encode()
t += b" " * ((8 - (8 + len(t)) % 8) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(t)) + t + b[8 + n:])
PY
row 'sensitivity `__metadata__.traces` an array' mpq-search "$T/mpq-search" --model "$W/m" --sensitivity "$W/bad-sens.safetensors" --target-bpw 6 --out "$W/p2.json" -q
row '`--cost hawq`, file without Hutchinson traces' mpq-search "$T/mpq-search" --model "$W/m" --sensitivity "$W/sens.safetensors" --cost hawq --formats nvfp4,fp8 --target-bpw 6 --out "$W/p3.json" -q
row '`--samples 2000000000` (more windows than the text has)' mpq-sensitivity "$T/mpq-sensitivity" --model "$W/m" --calib "$IDS" --samples 2000000000 --seq-len 32 --out "$W/s2.safetensors" -q
row '`--ctx 1024` > max_position_embeddings 512' mpq-eval "$T/mpq-eval" --model "$W/m" --tokens "$IDS" --ctx 1024 -q

rm -rf "$W/o"
row '`--out DIR/` (trailing slash)' mpq-pack "$T/mpq-pack" --model "$W/m" --format fp8 --out "$W/o/" -q
: > "$W/file"
row '`--out` an existing empty regular file, no `--force`' mpq-pack "$T/mpq-pack" --model "$W/m" --format fp8 --out "$W/file" -q
printf '| | | | `%s` afterwards: %s |\n' "--out FILE" "$( [ -f "$W/file" ] && echo "still the file" || echo "replaced by a folder")"
mkdir -p "$W/o.partial-999999999"
row 'stale `<out>.partial-<dead pid>` beside `--out`' mpq-pack "$T/mpq-pack" --model "$W/m" --format fp8 --out "$W/o" --force -q
printf '| | | | stale folder afterwards: %s |\n' "$( [ -d "$W/o.partial-999999999" ] && echo "still there" || echo "removed")"
