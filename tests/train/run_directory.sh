#!/usr/bin/env bash
# The run directory's rules, each against the fault it guards:
# - a second run in a locked run directory is refused, naming the holder; kill -9 frees the lock;
# - with `latest` gone, a run neither starts over nor overwrites anything: it names the checkpoint
#   to --resume from; --force starts over;
# - metrics of a run with other settings are never truncated without --force;
# - a killed save's step_N.tmp is removed at start-up;
# - Ctrl-C saves at the end of the step; a second Ctrl-C exits at once (130);
# - a signal that arrives during start-up stops the run before its first step, with the marker.
set -euo pipefail
kiln="$1" work="$2"
rm -rf "$work" && mkdir -p "$work"
export OMP_NUM_THREADS=1
args=(train --model.preset=test --data random --seq-len 32 --batch-size 4 --train.eval_every=0 --train.log_every=1)
fail() { echo "FAIL: $*" >&2; exit 1; }
# Background runs never outlive the script, whichever check fails.
trap 'jobs -p | xargs -r kill -9 2> /dev/null' EXIT
wait_for_steps() {  # wait_for_steps RUN_DIR N: until N steps are in metrics.jsonl
  for _ in $(seq 300); do
    [[ -f "$1/metrics.jsonl" && $(wc -l < "$1/metrics.jsonl") -ge "$2" ]] && return 0
    sleep 0.1
  done
  fail "no progress in $1"
}
expect_refusal() {  # expect_refusal MESSAGE COMMAND...: exits non-zero (not by a signal) with MESSAGE
  local message="$1" status=0
  shift
  "$@" > "$work/out.txt" 2>&1 || status=$?
  ((status != 0)) || fail "accepted: $*"
  ((status < 128)) || fail "killed by signal $((status - 128)), not refused: $*"
  grep -qF -- "$message" "$work/out.txt" || fail "expected '$message', got: $(cat "$work/out.txt")"
}
fingerprint() { (cd "$1" && find . -type f ! -name lock -print0 | sort -z | xargs -0 sha256sum); }

# 1. The lock.
"$kiln" "${args[@]}" --max-steps 100000000 --run-dir "$work/locked" > "$work/locked.log" 2>&1 &
holder=$!
wait_for_steps "$work/locked" 2
expect_refusal "$work/locked: in use by another kiln run (pid $holder on host $(hostname)" \
  "$kiln" "${args[@]}" --max-steps 3 --run-dir "$work/locked"
kill -9 "$holder"
wait "$holder" 2>/dev/null || true
# The same run started again (no checkpoint yet, same settings): allowed, and it starts over.
"$kiln" "${args[@]}" --max-steps 100000000 --run-dir "$work/locked" > "$work/relocked.log" 2>&1 &
again=$!
wait_for_steps "$work/locked" 1
kill -9 "$again"
wait "$again" 2>/dev/null || true
echo "lock: refused while held, free after kill -9"

# 2. A missing latest: nothing is overwritten.
"$kiln" "${args[@]}" --max-steps 4 --save-every 2 --run-dir "$work/nolatest" > /dev/null
rm "$work/nolatest/latest"
before=$(fingerprint "$work/nolatest")
expect_refusal "holds 2 checkpoint(s) but no latest file naming one; resume from the newest with --resume $work/nolatest/step_00000004" \
  "$kiln" "${args[@]}" --max-steps 6 --run-dir "$work/nolatest"
[[ "$(fingerprint "$work/nolatest")" == "$before" ]] || fail "a refused run changed $work/nolatest"
"$kiln" "${args[@]}" --max-steps 6 --run-dir "$work/nolatest" --resume "$work/nolatest/step_00000004" \
  > "$work/resume.log"
grep -q "resumed from .*step_00000004 at step 4" "$work/resume.log" || fail "no resume: $(cat "$work/resume.log")"
echo "missing latest: refused with the checkpoint to resume from, nothing overwritten"

# 3. Metrics of a run with other settings and no checkpoint: refused unless --force.
"$kiln" "${args[@]}" --max-steps 3 --run-dir "$work/other" > /dev/null
rm -r "$work/other"/step_* "$work/other/latest"
rows=$(wc -l < "$work/other/metrics.jsonl")
expect_refusal "holds the metrics of an earlier run with other settings" \
  "$kiln" "${args[@]}" --max-steps 3 --optim.lr=3e-4 --run-dir "$work/other"
[[ $(wc -l < "$work/other/metrics.jsonl") -eq $rows ]] || fail "the refused run truncated metrics.jsonl"
"$kiln" "${args[@]}" --max-steps 2 --optim.lr=3e-4 --run-dir "$work/other" --force > /dev/null
[[ $(wc -l < "$work/other/metrics.jsonl") -eq 2 ]] || fail "--force did not start over"
echo "other settings: refused, then --force starts over"

# 4. A killed save's directory is cleared at start-up.
mkdir "$work/other/step_00000009.tmp"
"$kiln" "${args[@]}" --max-steps 3 --optim.lr=3e-4 --run-dir "$work/other" > "$work/stale.log"
grep -q "removed 1 unfinished save(s)" "$work/stale.log" || fail "no stale-save message: $(cat "$work/stale.log")"
[[ ! -e "$work/other/step_00000009.tmp" ]] || fail "step_00000009.tmp is still there"
echo "stale step_N.tmp: removed"

# 4b. A damaged metrics row is named by file and line, not a raw JSON error; an unfinished last row
# (a run killed mid-write) is dropped silently.
"$kiln" "${args[@]}" --max-steps 3 --run-dir "$work/rows" > /dev/null
sed -i '2s/.*/{"step": "two"/' "$work/rows/metrics.jsonl"
expect_refusal "$work/rows/metrics.jsonl:2: not a metrics row (expected a JSON object with an integer \"step\")" \
  "$kiln" "${args[@]}" --max-steps 4 --run-dir "$work/rows"
sed -i '2s/.*/{"step": 2}/' "$work/rows/metrics.jsonl"
printf '{"step": 4, "lo' >> "$work/rows/metrics.jsonl"
"$kiln" "${args[@]}" --max-steps 4 --run-dir "$work/rows" > /dev/null || fail "an unfinished last row stopped the resume"
[[ $(wc -l < "$work/rows/metrics.jsonl") -eq 4 ]] || fail "metrics rows after the resume: $(cat "$work/rows/metrics.jsonl")"
echo "metrics rows: a damaged one named, an unfinished last one dropped"

# 5. Ctrl-C: the first saves at the end of the step; two exit at once with 130.
"$kiln" "${args[@]}" --max-steps 100000000 --run-dir "$work/ctrlc" > "$work/ctrlc.log" 2>&1 &
pid=$!
wait_for_steps "$work/ctrlc" 2
kill -INT "$pid"
wait "$pid" || fail "exit $? after one SIGINT"
step=$(cat "$work/ctrlc/preempted")
[[ "$(cat "$work/ctrlc/latest")" == "step_$(printf %08d "$step")" ]] || fail "no checkpoint at step $step"
# Slow steps (about half a second), so that the second Ctrl-C lands within the step the first asked to end.
"$kiln" train --model.preset=tiny --data random --seq-len 256 --batch-size 16 --train.eval_every=0 \
  --max-steps 100000000 --run-dir "$work/ctrlc2" > "$work/ctrlc2.log" 2>&1 &
pid=$!
wait_for_steps "$work/ctrlc2" 1
kill -INT "$pid" && sleep 0.05 && kill -INT "$pid"
status=0
wait "$pid" || status=$?
[[ $status -eq 130 ]] || fail "two SIGINTs: exit $status, expected 130"
echo "Ctrl-C: saved at step $step; twice: exit 130"

# 6. A signal during start-up: held pending from before exec (blocked), delivered once kiln
# installs its handlers, so it lands before the first step every time.
python3 -c '
import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
os.kill(os.getpid(), signal.SIGTERM)  # pending: blocked signals survive exec
os.execv(sys.argv[1], sys.argv[1:])' "$kiln" "${args[@]}" --max-steps 5 --run-dir "$work/early" > "$work/early.log"
grep -q "preempted (a signal) before the first step" "$work/early.log" || fail "$(cat "$work/early.log")"
[[ -f "$work/early/preempted" ]] || fail "no preempted marker"
[[ ! -s "$work/early/metrics.jsonl" ]] || fail "a step ran after the signal"
echo "signal during start-up: stopped before the first step, marker written"
echo "run directory: ok"
