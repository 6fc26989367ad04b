#!/usr/bin/env bash
# Tests the SLURM path for real: starts a private single-node SLURM from Debian's slurm-wlm
# (munged + slurmctld + slurmd, all state, sockets and logs in a temporary folder, own
# ports), submits the pipeline of examples/slurm/submit.sh on a small random model as job
# arrays over layer shards, waits for it, and checks that the merged sensitivity file and
# packed folder equal single runs (examples/Makefile's `check`). Stops everything it started.
#
#   examples/slurm/test-local.sh [BUILD_TOOLS_DIR]      exit 0 pass, 1 fail, 77 skip
#
# Skips (exit 77, the reason on stdout) where SLURM cannot start: slurm-wlm or munge not
# installed (apt-get install slurm-wlm munge), not root (slurmd and munged run as root
# here), or the daemons do not come up within 60 s.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$(dirname "$here")")"
tools="$(cd "${1:-$repo/build/tools}" && pwd)"
skip() { echo "SKIP: $*"; exit 77; }
for c in munged slurmctld slurmd sbatch sinfo squeue make python3; do
  command -v "$c" >/dev/null 2>&1 || skip "'$c' not found (Debian: apt-get install slurm-wlm munge make python3)"
done
[ "$(id -u)" -eq 0 ] || skip "needs root to run munged and slurmd (uid $(id -u))"
[ -x "$tools/mpq-make-random-model" ] || { echo "FAIL: no mpq tools in $tools"; exit 1; }

work="$(mktemp -d /tmp/mpq-slurm-XXXXXX)"
chmod 700 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  [ -f "$work/munged.pid" ] && kill "$(cat "$work/munged.pid")" 2>/dev/null
  sleep 1
  if [ "${MPQ_KEEP_SLURM_TEST:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# munge with its own key, socket and files.
head -c 1024 /dev/urandom > "$work/munge.key"
chmod 400 "$work/munge.key"
munged --force --socket="$work/munge.socket" --key-file="$work/munge.key" --pid-file="$work/munged.pid" \
  --log-file="$work/munged.log" --seed-file="$work/munged.seed" || skip "munged did not start: $(tail -1 "$work/munged.log" 2>/dev/null)"

# Free ports for slurmctld and slurmd.
read -r pc pd < <(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
node="$(slurmd -C | head -1 | sed 's/ UpTime=.*//')"   # NodeName=<host> CPUs=... RealMemory=...
host="$(echo "$node" | sed 's/^NodeName=\([^ ]*\).*/\1/')"
mkdir -p "$work/state" "$work/spool"
export SLURM_CONF="$work/slurm.conf"
cat > "$SLURM_CONF" <<CONF
ClusterName=mpqtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$pc
SlurmdPort=$pd
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$work/munge.socket
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
slurmctld -D -i -f "$SLURM_CONF" > "$work/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" > "$work/slurmd.out" 2>&1 &
pids+=($!)
up=0
for _ in $(seq 60); do
  state="$(sinfo -h -o %T 2>/dev/null | head -1)"
  [ "$state" = idle ] && { up=1; break; }
  sleep 1
done
[ "$up" = 1 ] || skip "SLURM did not come up in 60 s (node state '${state:-none}'): $(tail -2 "$work/slurmctld.log" "$work/slurmd.log" 2>/dev/null | tr '\n' ' ')"
echo "SLURM up: $(sinfo -h -o '%P %D %T %C')"

# The pipeline on a small random model (4 layers, bf16, sharded), 4 shards.
"$tools/mpq-make-random-model" -q --out "$work/model" --hidden 64 --intermediate 96 --layers 4 --heads 4 \
  --kv-heads 2 --vocab 256 --dtype bf16 --max-shard-size 60KB --std 0.08 || exit 1
python3 -c 'import random,struct,sys; random.seed(3); ids=[random.randrange(256) for _ in range(4000)]
open(sys.argv[1],"wb").write(struct.pack("<%di" % len(ids), *ids))' "$work/ids.i32"
export MPQ="$tools" MODEL="$work/model" CALIB="$work/ids.i32" OUT="$work/out" SHARDS=4 SAMPLES=6 SEQ_LEN=64 \
  KINDS=fisher,hessian FORMAT=squeezellm PACK_ARGS="--bits 3" SHARD_SIZE=20KB
"$here/submit.sh" --wait --time=10 || { echo "FAIL: the pipeline jobs failed"; tail -n 5 "$work"/out/slurm/*.out; exit 1; }
n_parts=$(ls "$work/out/sens-parts" | wc -l)
[ "$n_parts" = 4 ] || { echo "FAIL: $n_parts sensitivity parts, want 4"; exit 1; }
echo "jobs: $(ls "$work/out/slurm" | wc -l) job logs"
# Single runs and the comparison (the merged outputs already exist, so make only adds the
# single runs).
make -s -f "$repo/examples/Makefile" single check THREADS=1 >"$work/check.log" 2>&1 || {
  echo "FAIL: merged outputs differ from single runs"; tail -5 "$work/check.log"; exit 1; }
tail -2 "$work/check.log"
echo "PASS: SLURM job arrays over 4 layer shards give the bytes of single runs"
