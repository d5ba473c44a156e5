#!/usr/bin/env bash
# kill -9 at random moments of a run that saves a checkpoint every step, TRIALS times, resuming
# each time: every trial must find `latest` naming a checkpoint that verifies, resume from it, and
# lose no step before it; metrics.jsonl must end up with every step exactly once. A trial that
# kills the run before its first save checks none of that, so at least half the trials must have
# killed a run that had saved, and resumed from its checkpoint (a run that takes a second to its
# first save passed 20 trials of nothing).
#   bash tools/kill9-soak.sh KILN [TRIALS (20)] [WORK_DIR]
set -euo pipefail
kiln="$1" trials="${2:-20}" work="${3:-$(mktemp -d)}"
run="$work/run"
rm -rf "$run" && mkdir -p "$work"
args=(train --model.preset=test --data random --seq-len 32 --batch-size 4 --train.eval_every=0 --train.log_every=1000
      --device cpu --run.threads=1 --save-every 1 --run-dir "$run")
RANDOM=7
last=0 resumed=0
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
  "$kiln" ckpt verify "$run" > /dev/null || { echo "trial $trial: latest does not verify"; exit 1; }
  step=$(sed 's/step_0*//' "$run/latest")
  (( step >= last )) || { echo "trial $trial: latest went back from step $last to $step"; exit 1; }
  # Resume and run exactly one more step.
  "$kiln" "${args[@]}" --max-steps $((step + 1)) > "$work/resume.log"
  grep -q "resumed from $run/step_$(printf %08d "$step") at step $step" "$work/resume.log" ||
    { echo "trial $trial: did not resume from step $step"; cat "$work/resume.log"; exit 1; }
  last=$((step + 1))
  python3 - "$run/metrics.jsonl" "$last" <<'PY'
import json, sys
steps = [json.loads(l)["step"] for l in open(sys.argv[1])]
want = list(range(1, int(sys.argv[2]) + 1))
sys.exit(0 if steps == want else f"metrics steps {steps[:5]}...{steps[-5:]} ({len(steps)}), expected 1..{want[-1]}")
PY
  echo "trial $trial: killed, latest step $step verified, resumed to step $last"
  resumed=$((resumed + 1))
done
if (( 2 * resumed < trials )); then
  echo "kill -9 soak: only $resumed of $trials trials killed a run after a save and resumed it (at least half must)"
  exit 1
fi
echo "kill -9 soak: $trials trials, $resumed resumed from a checkpoint, every resume sound, $last steps in" \
  "metrics.jsonl exactly once"
