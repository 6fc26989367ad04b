#!/usr/bin/env bash
# mpq-search at 3.5, 4.0, 4.5 and 5.0 bpw on stories260K (issue [10/12]) against the best
# single format within each budget: the search with --calib (K-FAC cost, every format with
# and without GPTQ, the final check on held-in calibration windows), the plan packed with
# the same calibration as bench/gptq_table.sh's GPTQ rows (128 x 512), perplexity and KL on
# TinyStories and WikiText-2 from mpq-eval. The best single format comes from
# bench/results/gptq_table.md (run bench/gptq_table.sh first). Also the rank correlation
# (Spearman) of each cost form's predicted Omega with the check's measured KL over the
# single formats.
#
#   bash bench/search_gptq_table.sh          # writes bench/results/search_gptq_table.md
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${MODEL:-../shared/data/models/stories260K-hf}"
DATA="${DATA:-../shared/data/text}"
BUILD="${BUILD:-build}"
WORK="${WORK:-/tmp/mpq-gptq-table}"
BUDGETS="${BUDGETS:-3.5 4.0 4.5 5.0}"
SEARCH_SAMPLES="${SEARCH_SAMPLES:-32}"
TABLE="${TABLE:-bench/results/gptq_table.md}"
OUT="${OUT:-bench/results/search_gptq_table.md}"
T="$BUILD/tools"
CALIB="$DATA/tinystories_valid_calib.txt"
SENS="$WORK/sens.safetensors"
[[ -f "$SENS" && -f "$TABLE" ]] || { echo "search_gptq_table: run bench/gptq_table.sh first" >&2; exit 77; }

eval_json() {  # dir text tag -> json path
  local js="$WORK/$(basename "$1")-$3.json"
  "$T/mpq-eval" --model "$1" --text "$DATA/$2" --ctx 512 --max-tokens 20480 --base "$MODEL" -q --json "$js" >/dev/null
  echo "$js"
}

for b in $BUDGETS; do
  plan="$WORK/plan-$b.json" dir="$WORK/plan-$b"
  "$T/mpq-search" -q --model "$MODEL" --sensitivity "$SENS" --calib "$CALIB" --calib-samples "$SEARCH_SAMPLES" \
    --calib-seq-len 512 --target-bpw "$b" --out "$plan" > "$plan.txt"
  "$T/mpq-pack" -q --model "$MODEL" --plan "$plan" --calib "$CALIB" --calib-samples 128 --calib-seq-len 512 \
    --out "$dir" --force > "$dir.pack.txt"
  eval_json "$dir" tinystories_valid_eval.txt ts >/dev/null
  eval_json "$dir" wikitext2_test_joined.txt wt >/dev/null
done

python3 - "$WORK" "$TABLE" "$BUDGETS" <<'PY' | tee "$OUT"
import json, sys
work, table, budgets = sys.argv[1], sys.argv[2], sys.argv[3].split()
rows = []
for line in open(table):
    c = [x.strip() for x in line.strip().strip("|").split("|")]
    if len(c) < 9 or c[0] in ("config", "fp32 (reference)") or c[0].startswith("---"): continue
    rows.append({"label": c[0] + (" + gptq" if c[1] == "gptq" else ""), "bpw": float(c[2]),
                 "ts": float(c[4]), "kl_ts": float(c[5]), "wt": float(c[6]), "kl_wt": float(c[7])})

def spearman(xs, ys):
    def rank(v):
        o = sorted(range(len(v)), key=lambda i: v[i]); r = [0.0] * len(v)
        i = 0
        while i < len(o):
            j = i
            while j + 1 < len(o) and v[o[j + 1]] == v[o[i]]: j += 1
            for k in range(i, j + 1): r[o[k]] = (i + j) / 2.0
            i = j + 1
        return r
    rx, ry = rank(xs), rank(ys); n = len(xs)
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx) ** 0.5; vy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (vx * vy) if vx > 0 and vy > 0 else float("nan")

print("| budget | plan bpw | plan ppl TS | KL TS | plan ppl WT2 | KL WT2 | best single ≤ budget (TS) | its bpw | its ppl TS | margin TS | best single (WT2) | its ppl WT2 | margin WT2 | check winner | plan |")
print("|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---|---|")
corr = []
for b in budgets:
    plan = json.load(open(f"{work}/plan-{b}.json"))
    ts = json.load(open(f"{work}/plan-{b}-ts.json")); wt = json.load(open(f"{work}/plan-{b}-wt.json"))
    fit = [r for r in rows if r["bpw"] <= float(b) + 1e-9]
    bs = min(fit, key=lambda r: r["ts"]) if fit else None
    bw = min(fit, key=lambda r: r["wt"]) if fit else None
    counts = ", ".join(f"{k} ×{v}" for k, v in sorted(plan["totals"]["candidate_counts"].items(), key=lambda kv: -kv[1]))
    chk = plan.get("check", {})
    def fmt(r, key): return (r["label"], "%.4f" % r["bpw"], "%.4f" % r[key]) if r else ("none fits", "", "")
    a = fmt(bs, "ts"); w = fmt(bw, "wt")
    m_ts = "%+.4f" % (ts["ppl"] - bs["ts"]) if bs else ""
    m_wt = "%+.4f" % (wt["ppl"] - bw["wt"]) if bw else ""
    print(f"| {b} | {ts['linear_bpw']:.4f} | {ts['ppl']:.4f} | {ts['mean_kl']:.4f} | {wt['ppl']:.4f} | {wt['mean_kl']:.4f} | {a[0]} | {a[1]} | {a[2]} | {m_ts} | {w[0]} | {w[2]} | {m_wt} | {chk.get('winner', '')} | {counts} |")
    singles = [e for e in chk.get("entries", []) if e["label"] != "plan"]
    for form in ("fisher", "kfac"):
        pts = [(e["predicted"][form], e["kl"]) for e in singles if e["predicted"].get(form) is not None]
        if len(pts) >= 3: corr.append((b, form, len(pts), spearman([p for p, _ in pts], [k for _, k in pts])))
print()
print("| budget | cost form | single formats | Spearman(predicted Omega, measured KL) |")
print("|---:|---|---:|---:|")
for b, form, n, r in corr: print(f"| {b} | {form} | {n} | {r:.3f} |")
PY
