#!/usr/bin/env bash
# Fisher-pass throughput: mpq-sensitivity --kind fisher vs the same work in Debian's
# python3-torch 1.13 (bench/torch_fisher.py), same machine, same run, same windows (--sequential).
#
# Usage (from anywhere):  bench/fisher_vs_torch.sh
# Environment overrides:
#   MODEL      stories260K folder      (default ../shared/data/models/stories260K-hf, from the repo root)
#   CALIB      calibration text        (default ../shared/data/text/tinystories_valid_calib.txt)
#   N_SMALL    windows, stories260K    (default 32)
#   N_BIG      windows, random model   (default 4)
#   SEQ_LEN    tokens per window       (default 256)
#   T          threads, both tools     (default nproc)
#   BUILD      mpq build folder        (default build)
#   WORK       scratch folder for ids and the random model (default /tmp/mpq-fisher-bench);
#              the random model (~2.2 GB) is reused when already there
#   REPS       alternating mpq/torch runs per row; the table takes each tool's best (default 1)
#   SKIP_BIG=1 only stories260K
#   TORCH_T1=0 skip the extra stories260K row with torch at 1 thread
# JSON results go to bench/results/; the table goes to stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${MODEL:-../shared/data/models/stories260K-hf}"
CALIB="${CALIB:-../shared/data/text/tinystories_valid_calib.txt}"
N_SMALL="${N_SMALL:-32}"
N_BIG="${N_BIG:-4}"
SEQ_LEN="${SEQ_LEN:-256}"
T="${T:-$(nproc)}"
BUILD="${BUILD:-build}"
WORK="${WORK:-/tmp/mpq-fisher-bench}"
PY=/usr/bin/python3
RES="$ROOT/bench/results"
SENS="$BUILD/tools/mpq-sensitivity"
MAKE_RANDOM="$BUILD/tools/mpq-make-random-model"
REPS="${REPS:-1}"
mkdir -p "$RES" "$WORK"
rm -f "$RES"/mpq_*_r*.json "$RES"/torch_*_r*.json "$RES"/loadavg.txt

for b in "$SENS" "$MAKE_RANDOM"; do
  [[ -x "$b" ]] || { echo "missing $b (build it first)" >&2; exit 1; }
done

echo "== machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'); threads T=$T"
echo "== libblas.so.3 alternative: /usr/lib/x86_64-linux-gnu/libblas.so.3 -> $(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3)"
echo "== mpq: $("$SENS" --version 2>&1 | head -1); $SENS built $(date -r "$SENS" '+%F %T')"

# ---- (a) stories260K: calibration text -> ids ([bos=1] + sentencepiece encode) ----
SMALL_IDS="$WORK/stories260K_calib.i32"
"$PY" - "$MODEL/tokenizer.model" "$CALIB" "$SMALL_IDS" <<'EOF'
import sys, numpy as np, sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
assert sp.bos_id() == 1, sp.bos_id()
ids = [1] + sp.encode(open(sys.argv[2], encoding="utf-8").read())
np.asarray(ids, dtype="<i4").tofile(sys.argv[3])
print(f"== {sys.argv[3]}: {len(ids)} ids")
EOF

run_pair() {  # name model ids n [torch threads]; REPS alternating mpq/torch runs
  local name="$1" model="$2" ids="$3" n="$4" tt="${5:-$T}" r
  for ((r = 1; r <= REPS; ++r)); do
    echo "== $name rep $r/$REPS; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "   mpq-sensitivity: $n windows x $SEQ_LEN, --sequential, $T threads"
    "$SENS" --model "$model" --calib "$ids" --samples "$n" --seq-len "$SEQ_LEN" --kind fisher --sequential \
      --threads "$T" --json "$RES/mpq_${name}_r$r.json" -q --out "$WORK/sens_$name.safetensors" \
      > "$RES/mpq_${name}_r$r.log"
    echo "   $(grep 'fisher pass' "$RES/mpq_${name}_r$r.log")"
    echo "   torch_fisher.py: same windows, $tt threads"
    "$PY" "$ROOT/bench/torch_fisher.py" --model "$model" --ids "$ids" --windows "$n" --seq-len "$SEQ_LEN" \
      --sequential --threads "$tt" --json "$RES/torch_${name}_r$r.json" > "$RES/torch_${name}_r$r.log"
    grep -E '^(OpenBLAS|windows)' "$RES/torch_${name}_r$r.log" | sed 's/^/   /'
    echo "$name $r $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RES/loadavg.txt"
  done
}

NAMES=(stories260K)
run_pair stories260K "$MODEL" "$SMALL_IDS" "$N_SMALL"
if [[ "$T" != 1 && "${TORCH_T1:-1}" == 1 ]]; then
  # Extra row: torch's intra-op threads cost more than they give on a model this small, so
  # also show torch at 1 thread (mpq still at T; the tiny model's mpq run is repeated).
  NAMES+=(stories260K-torchT1)
  run_pair stories260K-torchT1 "$MODEL" "$SMALL_IDS" "$N_SMALL" 1
fi

# ---- (b) random model: hidden 2048, intermediate 5632, 8 layers, 16/16 heads, vocab 32000 ----
if [[ "${SKIP_BIG:-0}" != 1 ]]; then
  BIG="$WORK/random-h2048-l8"
  if [[ ! -f "$BIG/model.safetensors" || ! -f "$BIG/config.json" ]]; then
    echo "== writing random model to $BIG"
    "$MAKE_RANDOM" --out "$BIG" --preset bench-542m --dtype f32 --seed 1 --force
  fi
  BIG_IDS="$WORK/random_ids.i32"
  "$PY" - "$BIG_IDS" "$((N_BIG * SEQ_LEN))" <<'EOF'
import sys, numpy as np
np.random.RandomState(1234).randint(0, 32000, size=int(sys.argv[2])).astype("<i4").tofile(sys.argv[1])
EOF
  NAMES+=(random-h2048)
  run_pair random-h2048 "$BIG" "$BIG_IDS" "$N_BIG"
fi

# ---- table and fisher_sum agreement ----
"$PY" - "$RES" "$REPS" "${NAMES[@]}" <<'EOF'
import json, os, sys
res, reps, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rows, summary = [], {}
for n in names:
    # Best of the repetitions for each tool (the machine may be shared; noise only slows).
    ms = [json.load(open(os.path.join(res, f"mpq_{n}_r{r}.json"))) for r in range(1, reps + 1)]
    ts = [json.load(open(os.path.join(res, f"torch_{n}_r{r}.json"))) for r in range(1, reps + 1)]
    m = max(ms, key=lambda j: j["fisher_tokens_per_second"])
    t = max(ts, key=lambda j: j["tokens_per_second"])
    assert (m["windows"], m["seq_len"]) == (t["windows"], t["seq_len"]), (n, m["windows"], t["windows"])
    # mpq names the linear ("model.layers.0.mlp.up_proj"), torch the weight ("....up_proj.weight")
    mf = {k + ".weight": v["fisher_sum"] for k, v in m["tensors"].items()}
    tf = t["fisher_sum"]
    assert sorted(mf) == sorted(tf), n
    mt, tt = sum(mf.values()), sum(tf.values())
    worst = max(abs(mf[k] - tf[k]) / max(abs(tf[k]), 1e-300) for k in mf)
    r = m["fisher_tokens_per_second"] / t["tokens_per_second"]
    rows.append((n, m["windows"], m["fisher_tokens_per_second"], t["tokens_per_second"], r,
                 m["peak_rss_mib"], t["peak_rss_mib"]))
    summary[n] = {"windows": m["windows"], "seq_len": m["seq_len"], "threads_mpq": m["threads"],
                  "threads_torch": t["threads"], "mpq_tokens_per_second": m["fisher_tokens_per_second"],
                  "torch_tokens_per_second": t["tokens_per_second"], "ratio_mpq_over_torch": r,
                  "mpq_peak_rss_mib": m["peak_rss_mib"], "torch_peak_rss_mib": t["peak_rss_mib"],
                  "fisher_sum_total_mpq": mt, "fisher_sum_total_torch": tt,
                  "fisher_sum_total_rel_diff": abs(mt - tt) / abs(tt),
                  "fisher_sum_worst_tensor_rel_diff": worst, "reps": reps,
                  "mpq_tokens_per_second_all": [j["fisher_tokens_per_second"] for j in ms],
                  "torch_tokens_per_second_all": [j["tokens_per_second"] for j in ts]}
print()
print(f"{'model':<20} {'N':>3} {'thr mpq/torch':>13} {'mpq tok/s':>10} {'torch tok/s':>12} {'mpq/torch':>10} "
      f"{'mpq peak MiB':>13} {'torch peak MiB':>15}")
for n, w, a, b, r, pm, pt in rows:
    thr = f"{summary[n]['threads_mpq']}/{summary[n]['threads_torch']}"
    print(f"{n:<20} {w:>3} {thr:>13} {a:>10.1f} {b:>12.1f} {r:>10.2f} {pm:>13.1f} {pt:>15.1f}")
if reps > 1:
    print(f"(best of {reps} alternating runs per tool; all runs in summary.json)")
print()
for n, s in summary.items():
    print(f"fisher_sum {n}: total mpq {s['fisher_sum_total_mpq']:.9g}, torch {s['fisher_sum_total_torch']:.9g}, "
          f"relative difference {s['fisher_sum_total_rel_diff']:.3g} (worst tensor {s['fisher_sum_worst_tensor_rel_diff']:.3g})")
la = os.path.join(res, "loadavg.txt")
summary["_loadavg_after_each_rep"] = open(la).read().splitlines() if os.path.exists(la) else []
json.dump(summary, open(os.path.join(res, "summary.json"), "w"), indent=1)
EOF
echo "(JSON and logs in $RES)"
