#!/usr/bin/env bash
# mpq-search evidence on stories260K (docs/results.md §5):
#  1. searched plans at 3.0 / 3.5 / 4.0 / 4.5 bpw (Fisher and HAWQ costs) against every
#     single-format assignment, measured perplexity on TinyStories and WikiText-2
#     (first 20,480 tokens, ctx 512);
#  2. over the Pareto points of both cost forms, Spearman's rank correlation between the
#     predicted Omega and the measured TinyStories ppl increase over fp32.
#
# Usage (from anywhere):  bench/search_table.sh
# Environment overrides:
#   MODEL   model folder     (default ../shared/data/models/stories260K-hf, from the repo root)
#   DATA    text folder      (default ../shared/data/text)
#   BUILD   mpq build folder (default build)
#   WORK    scratch folder   (default /tmp/mpq-search)
#   POINTS  Pareto points per cost form (default 10)
# Markdown tables on stdout; per-run JSON in $WORK; bench/results/search_table.csv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${MODEL:-../shared/data/models/stories260K-hf}"
DATA="${DATA:-../shared/data/text}"
BUILD="${BUILD:-build}"
WORK="${WORK:-/tmp/mpq-search}"
POINTS="${POINTS:-10}"
T="$BUILD/tools"
mkdir -p "$WORK" bench/results

SENS="$WORK/sens.safetensors"
if [[ ! -f "$SENS" ]]; then
  echo "search_table: sensitivities (fisher, hutchinson) ..." >&2
  "$T/mpq-sensitivity" -q --model "$MODEL" --calib "$DATA/tinystories_valid_calib.txt" --samples 128 \
    --seq-len 256 --kind fisher,hutchinson --hutchinson-iters 100 --out "$SENS" >/dev/null
fi

eval_ppl() {  # dir text -> ppl (n/a when the text is absent)
  local js="$WORK/$(basename "$1")-${2%.txt}.json"
  if [[ ! -f "$DATA/$2" ]]; then echo "n/a"; return; fi
  if [[ ! -f "$js" ]]; then
    "$T/mpq-eval" --model "$1" --text "$DATA/$2" --ctx 512 --max-tokens 20480 -q --json "$js" >/dev/null
  fi
  python3 -c 'import json,sys; print("%.4f" % json.load(open(sys.argv[1]))["ppl"])' "$js"
}
bpw_of() { python3 -c 'import json,sys; print("%.4f" % json.load(open(sys.argv[1]))["totals"]["bpw"])' "$1"; }

TS=tinystories_valid_eval.txt
WT=wikitext2_test_joined.txt
CSV="$WORK/search_table.csv"
echo "kind,name,cost,budget_bpw,bpw,omega,ppl_tinystories,ppl_wikitext2" > "$CSV"

# Single formats: a search restricted to one candidate with an unlimited budget.
SINGLES=(squeezellm-2bit squeezellm-2bit-sparse squeezellm-3bit squeezellm-3bit-sparse squeezellm-4bit
         squeezellm-4bit-sparse nvfp4 fgmp-10 fgmp-30 fgmp-50 fp8)
echo "## single-format assignments" >&2
for c in "${SINGLES[@]}"; do
  plan="$WORK/single-$c.json"
  "$T/mpq-search" -q --model "$MODEL" --sensitivity "$SENS" --formats "$c" --max-bytes 1e15 --out "$plan" >/dev/null
  "$T/mpq-pack" -q --model "$MODEL" --plan "$plan" --out "$WORK/single-$c" --force >/dev/null
  echo "single,$c,,,$(bpw_of "$plan"),,$(eval_ppl "$WORK/single-$c" $TS),$(eval_ppl "$WORK/single-$c" $WT)" >> "$CSV"
done
"$T/mpq-pack" -q --model "$MODEL" --format fp8 --exclude '.*' --out "$WORK/fp32" --force >/dev/null
FP32_TS=$(eval_ppl "$WORK/fp32" $TS)
echo "single,fp32,,,32,,$FP32_TS,$(eval_ppl "$WORK/fp32" $WT)" >> "$CSV"

for cost in fisher hawq; do
  for b in 3.0 3.5 4.0 4.5; do
    plan="$WORK/plan-$cost-$b.json"
    if ! "$T/mpq-search" -q --model "$MODEL" --sensitivity "$SENS" --cost "$cost" --target-bpw "$b" \
        --out "$plan" >/dev/null 2>&1; then
      echo "plan,searched,$cost,$b,infeasible,,," >> "$CSV"
      continue
    fi
    dir="$WORK/plan-$cost-$b"
    "$T/mpq-pack" -q --model "$MODEL" --plan "$plan" --out "$dir" --force >/dev/null
    omega=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["totals"]["omega"])' "$plan")
    echo "plan,searched,$cost,$b,$(bpw_of "$plan"),$omega,$(eval_ppl "$dir" $TS),$(eval_ppl "$dir" $WT)" >> "$CSV"
  done
  # Pareto sweep: pack and evaluate every point.
  "$T/mpq-search" -q --model "$MODEL" --sensitivity "$SENS" --cost "$cost" --pareto "$WORK/pareto-$cost" \
    --pareto-points "$POINTS" >/dev/null
  python3 - "$WORK/pareto-$cost.json" "$WORK" "$cost" <<'EOF'
import json, sys
front = json.load(open(sys.argv[1]))
for i, p in enumerate(front["points"]):
    if p["solver"]["status"] == "optimal":
        json.dump(p, open(f"{sys.argv[2]}/pareto-{sys.argv[3]}-{i}.json", "w"))
EOF
  for plan in "$WORK"/pareto-"$cost"-[0-9]*.json; do
    dir="${plan%.json}"
    "$T/mpq-pack" -q --model "$MODEL" --plan "$plan" --out "$dir" --force >/dev/null
    omega=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["totals"]["omega"])' "$plan")
    echo "pareto,$(basename "$dir"),$cost,,$(bpw_of "$plan"),$omega,$(eval_ppl "$dir" $TS),$(eval_ppl "$dir" $WT)" >> "$CSV"
  done
done
cp "$CSV" bench/results/search_table.csv

python3 - "$CSV" "$FP32_TS" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
fp32 = float(sys.argv[2])
singles = [r for r in rows if r["kind"] == "single" and r["name"] != "fp32"]
num = lambda s: float(s) if s not in ("", "n/a", "infeasible") else None
print("| cost | budget bpw | plan bpw | plan ppl TS | plan ppl WT | best single format <= budget (bpw, ppl TS, ppl WT) | smallest single format >= plan size (bpw, ppl TS, ppl WT) |")
print("|---|---:|---:|---:|---:|---|---|")
for r in rows:
    if r["kind"] != "plan":
        continue
    b = float(r["budget_bpw"])
    if r["bpw"] == "infeasible":
        print(f"| {r['cost']} | {b} | infeasible | | | | |")
        continue
    fit = [s for s in singles if float(s["bpw"]) <= b]
    best = min(fit, key=lambda s: float(s["ppl_tinystories"])) if fit else None
    larger = [s for s in singles if float(s["bpw"]) >= float(r["bpw"])]
    near = min(larger, key=lambda s: float(s["bpw"])) if larger else None
    fmt = lambda s: f"{s['name']} ({s['bpw']}, {s['ppl_tinystories']}, {s['ppl_wikitext2']})" if s else "none"
    print(f"| {r['cost']} | {b} | {r['bpw']} | {r['ppl_tinystories']} | {r['ppl_wikitext2']} | {fmt(best)} | {fmt(near)} |")

def ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    rk = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            rk[order[k]] = (i + j) / 2.0
        i = j + 1
    return rk

def spearman(x, y):
    rx, ry = ranks(x), ranks(y)
    n = len(x)
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx) ** 0.5
    vy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (vx * vy) if vx and vy else float("nan")

print()
print("| cost | Pareto points | Spearman(Omega, ppl increase TS) | Spearman(Omega, ppl increase WT) |")
print("|---|---:|---:|---:|")
fp32_wt = next((num(r["ppl_wikitext2"]) for r in rows if r["name"] == "fp32"), None)
for cost in ("fisher", "hawq"):
    pts = [r for r in rows if r["kind"] == "pareto" and r["cost"] == cost]
    om = [float(r["omega"]) for r in pts]
    ts = [float(r["ppl_tinystories"]) - fp32 for r in pts]
    wt = [float(r["ppl_wikitext2"]) - fp32_wt for r in pts] if fp32_wt and all(num(r["ppl_wikitext2"]) for r in pts) else None
    s_wt = f"{spearman(om, wt):.3f}" if wt else "n/a"
    print(f"| {cost} | {len(pts)} | {spearman(om, ts):.3f} | {s_wt} |")
EOF
