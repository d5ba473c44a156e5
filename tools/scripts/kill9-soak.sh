#!/usr/bin/env bash
# kill -9 during a run that saves a checkpoint every step, resuming each time: every trial must find
# `latest` naming a checkpoint that verifies, resume from it, and lose no step before it;
# metrics.jsonl must end up with every step exactly once.
#  - TRIALS trials kill at random moments. A trial that kills the run before its first save checks
#    none of that, so at least half of them must have killed a run that had saved, and resumed from
#    its checkpoint (a run that takes a second to its first save passed 20 trials of nothing).
#  - Then two trials at each of the moments that matter most, reached exactly: the process stops
#    itself there (KILN_FAULT_STOP_AT, train/checkpoint.h) and is killed while stopped: during the
#    start-up's checkpoint load, and at three points of a save (rank files written with no manifest;
#    step directory renamed with `latest` not yet naming it; `latest` updated, old steps not pruned).
#   bash tools/scripts/kill9-soak.sh KILN [TRIALS (20)] [WORK_DIR]
set -euo pipefail
kiln="$1" trials="${2:-20}" work="${3:-$(mktemp -d)}"
run="$work/run"
rm -rf "$run" && mkdir -p "$work"
args=(train --model.preset=test --data random --seq-len 32 --batch-size 4 --train.eval_every=0 --train.log_every=1000
      --device cpu --run.threads=1 --save-every 1 --checkpoint.keep=2 --run-dir "$run")
trap 'kill -9 "${pid:-0}" 2>/dev/null || true' EXIT
RANDOM=7
last=0 resumed=0

# After a kill: `latest` verifies and has not gone back; the run resumes from it for exactly one
# more step; metrics.jsonl holds steps 1..last once each.
check_and_resume() {  # TRIAL WHAT
  "$kiln" ckpt verify "$run" > /dev/null || { echo "trial $1: latest does not verify"; exit 1; }
  step=$(sed 's/step_0*//' "$run/latest")
  (( step >= last )) || { echo "trial $1: latest went back from step $last to $step"; exit 1; }
  "$kiln" "${args[@]}" --max-steps $((step + 1)) > "$work/resume.log"
  grep -q "resumed from $run/step_$(printf %08d "$step") at step $step" "$work/resume.log" ||
    { echo "trial $1: did not resume from step $step"; cat "$work/resume.log"; exit 1; }
  [[ -z "$(find "$run" -maxdepth 1 -name '*.tmp')" ]] || { echo "trial $1: a .tmp directory survived the resume"; exit 1; }
  last=$((step + 1))
  python3 - "$run/metrics.jsonl" "$last" <<'PY'
import json, sys
steps = [json.loads(l)["step"] for l in open(sys.argv[1])]
want = list(range(1, int(sys.argv[2]) + 1))
sys.exit(0 if steps == want else f"metrics steps {steps[:5]}...{steps[-5:]} ({len(steps)}), expected 1..{want[-1]}")
PY
  echo "trial $1: killed $2, latest step $step verified, resumed to step $last"
}

for ((trial = 1; trial <= trials; trial++)); do
  "$kiln" "${args[@]}" --max-steps 100000000 > "$work/trial.log" 2>&1 &
  pid=$!
  sleep "0.$((RANDOM % 9 + 1))$((RANDOM % 10))"
  kill -9 "$pid"
  wait "$pid" 2>/dev/null || true
  if [[ ! -f "$run/latest" ]]; then  # nothing saved yet: the next trial starts the run afresh
    echo "trial $trial: killed before the first save"
    rm -rf "$run"
    last=0
    continue
  fi
  check_and_resume "$trial" "at a random moment"
  resumed=$((resumed + 1))
done
if (( 2 * resumed < trials )); then
  echo "kill -9 soak: only $resumed of $trials trials killed a run after a save and resumed it (at least half must)"
  exit 1
fi

targeted=0
for point in load save-files save-renamed save-latest load save-files save-renamed save-latest; do
  trial=$((trials + targeted + 1))
  [[ -f "$run/latest" ]] || "$kiln" "${args[@]}" --max-steps $((last + 1)) > "$work/trial.log"
  last=$(sed 's/step_0*//' "$run/latest")
  KILN_FAULT_STOP_AT=$point "$kiln" "${args[@]}" --max-steps $((last + 5)) > "$work/trial.log" 2>&1 &
  pid=$!
  for ((tick = 0; tick < 600; tick++)); do  # up to 60 s to reach the point
    [[ "$(awk '{ print $3 }' "/proc/$pid/stat" 2> /dev/null)" == T ]] && break
    kill -0 "$pid" 2> /dev/null || { echo "trial $trial: the run ended without reaching $point"; cat "$work/trial.log"; exit 1; }
    sleep 0.1
  done
  kill -9 "$pid"
  wait "$pid" 2>/dev/null || true
  check_and_resume "$trial" "stopped at $point"
  targeted=$((targeted + 1))
done
echo "kill -9 soak: $trials random trials, $resumed resumed from a checkpoint; $targeted trials at a load or a save;" \
  "every resume sound, $last steps in metrics.jsonl exactly once"
