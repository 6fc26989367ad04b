#!/usr/bin/env bash
# Submits the mpq pipeline of examples/Makefile to SLURM: a job array over layer shards for
# each of sensitivity and packing, each merge after its array (afterok dependencies).
#
#   MPQ=$PWD/build/tools MODEL=/data/Llama-2-7b-hf CALIB=/data/calib.txt OUT=/scratch/run1 \
#   SHARDS=8 examples/slurm/submit.sh [--wait] [extra sbatch args, e.g. --partition=cpu --mem=12G]
#
# Every variable of examples/Makefile may be set the same way (KINDS, SAMPLES, SEQ_LEN,
# FORMAT, PACK_ARGS, SHARD_SIZE, TEXT/TOKENS, EVAL_ARGS). Paths must be visible from every
# node (a shared file system). With --wait the script returns when the last job ends, with
# its exit status. Prints the job ids.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export MPQ_EXAMPLES="${MPQ_EXAMPLES:-$(dirname "$here")}"
: "${MODEL:?set MODEL}" "${CALIB:?set CALIB}" "${OUT:?set OUT}"
export MPQ="${MPQ:-build/tools}" MODEL CALIB OUT SHARDS="${SHARDS:-4}"
wait_flag=()
if [[ "${1:-}" == "--wait" ]]; then wait_flag=(--wait); shift; fi
mkdir -p "$OUT/slurm"
sb=(sbatch --parsable --export=ALL --chdir="$OUT/slurm" "$@")
last=$((SHARDS - 1))
s=$("${sb[@]}" --job-name=mpq-sens --array="0-$last" "$here/stage.sbatch" sens-part)
sm=$("${sb[@]}" --job-name=mpq-sens-merge --dependency="afterok:$s" "$here/stage.sbatch" sens)
p=$("${sb[@]}" --job-name=mpq-pack --dependency="afterok:$sm" --array="0-$last" "$here/stage.sbatch" pack-part)
echo "sensitivity array $s, merge $sm, pack array $p"
pm=$("${sb[@]}" "${wait_flag[@]}" --job-name=mpq-pack-merge --dependency="afterok:$p" "$here/stage.sbatch" pack)
echo "pack merge $pm"
