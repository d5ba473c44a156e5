#!/usr/bin/env bash
# Preemption: SIGUSR1 to a training run (one process, then one rank of two under mpiexec) makes it
# save at the end of the step, write RUN_DIR/preempted and exit 0; the next run resumes there.
set -euo pipefail
kiln="$1" work="$2"
trap 'jobs -p | xargs -r kill -9 2> /dev/null' EXIT  # no run outlives a failed check
rm -rf "$work" && mkdir -p "$work"
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
args=(train --model.preset=test --data random --seq-len 32 --batch-size 4 --train.eval_every=0 --train.log_every=1)
forever=(--max-steps 100000000)
wait_for_steps() {  # wait_for_steps RUN_DIR: until three steps are in metrics.jsonl
  for _ in $(seq 300); do
    [[ -f "$1/metrics.jsonl" && $(wc -l < "$1/metrics.jsonl") -ge 3 ]] && return 0
    sleep 0.1
  done
  echo "no progress in $1" && return 1
}
check() {  # check RUN_DIR LOG: saved where the marker says, and a resume continues from there
  local step
  step=$(cat "$1/preempted")
  grep -q "preempted (a signal): saved at step $step, stopping" "$2"
  [[ "$(cat "$1/latest")" == "step_$(printf %08d "$step")" ]]
  "$kiln" ckpt verify "$1"
  "$kiln" "${args[@]}" --max-steps $((step + 1)) --run-dir "$1" > "$1.resume.log"
  grep -q "resumed from .* at step $step" "$1.resume.log"
  [[ ! -f "$1/preempted" ]]
  echo "$1: preempted at step $step, resumed"
}

"$kiln" "${args[@]}" "${forever[@]}" --run-dir "$work/single" > "$work/single.log" &
pid=$!
wait_for_steps "$work/single"
kill -USR1 "$pid"
wait "$pid"  # exit 0, or set -e stops here
check "$work/single" "$work/single.log"

# Two ranks; the signal reaches one of them only.
mpiexec --oversubscribe --mca mpi_yield_when_idle 1 --mca btl self,vader -n 2 "$kiln" "${args[@]}" "${forever[@]}" \
  --run-dir "$work/mpi" > "$work/mpi.log" &
pid=$!
wait_for_steps "$work/mpi"
rank=$(pgrep -P "$pid" -f "kiln train" | head -1)
kill -USR1 "$rank"
wait "$pid"
check "$work/mpi" "$work/mpi.log"
