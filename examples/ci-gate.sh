#!/usr/bin/env bash
# Perplexity regression gate for a CI job: pack a model, evaluate the packed model, and fail
# when its perplexity rose more than allowed over a recorded baseline.
#
#   examples/ci-gate.sh --model DIR (--text FILE | --tokens FILE) --baseline-ppl Y \
#       --max-increase-pct P [--format F] [--ctx N] [--max-tokens N] [--work DIR] \
#       [--mpq BUILD_TOOLS_DIR] [-- extra mpq-pack arguments]
#
# Exit status (mpq-eval's, docs/cli.md): 0 pass, 5 gate crossed (ppl > Y * (1 + P / 100)),
# 2 usage, 3 bad input, 4 output, 1 internal. The last stdout line is the verdict; the
# evaluation JSON is left in WORK/eval.json (WORK defaults to a temporary folder, removed
# at exit unless given).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mpq="${MPQ:-$(dirname "$here")/build/tools}"
model="" text="" tokens="" baseline="" pct="" format="fp8" ctx=512 max_tokens=0 work="" pack_extra=()
usage() { sed -n '2,13p' "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --text) text="$2"; shift 2 ;;
    --tokens) tokens="$2"; shift 2 ;;
    --baseline-ppl) baseline="$2"; shift 2 ;;
    --max-increase-pct) pct="$2"; shift 2 ;;
    --format) format="$2"; shift 2 ;;
    --ctx) ctx="$2"; shift 2 ;;
    --max-tokens) max_tokens="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --mpq) mpq="$2"; shift 2 ;;
    --) shift; pack_extra=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "ci-gate: unknown argument '$1'" >&2; usage ;;
  esac
done
[ -n "$model" ] && [ -n "$baseline" ] && [ -n "$pct" ] || { echo "ci-gate: --model, --baseline-ppl and --max-increase-pct are required" >&2; usage; }
if [ -n "$text" ] && [ -n "$tokens" ] || [ -z "$text$tokens" ]; then echo "ci-gate: give one of --text and --tokens" >&2; usage; fi
if [ -z "$work" ]; then
  work="$(mktemp -d /tmp/mpq-ci-gate-XXXXXX)"
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"

"$mpq/mpq-pack" -q --model "$model" --format "$format" --out "$work/packed" --force "${pack_extra[@]}" >/dev/null
rc=$?
if [ $rc -ne 0 ]; then echo "ci-gate: mpq-pack failed (exit $rc)"; exit $rc; fi
input=(--text "$text"); [ -n "$tokens" ] && input=(--tokens "$tokens")
"$mpq/mpq-eval" -q --model "$work/packed" "${input[@]}" --ctx "$ctx" --max-tokens "$max_tokens" \
  --baseline-ppl "$baseline" --max-increase-pct "$pct" --json "$work/eval.json" >/dev/null
rc=$?
ppl="$(python3 -c 'import json,sys; print("%.4f" % json.load(open(sys.argv[1]))["ppl"])' "$work/eval.json" 2>/dev/null || echo "?")"
limit="$(python3 -c "print('%.4f' % ($baseline * (1 + $pct / 100)))")"
case $rc in
  0) echo "ci-gate: PASS  $format ppl $ppl <= $limit (baseline $baseline + $pct%)" ;;
  5) echo "ci-gate: FAIL  $format ppl $ppl > $limit (baseline $baseline + $pct%)" ;;
  *) echo "ci-gate: ERROR mpq-eval exit $rc" ;;
esac
exit $rc
