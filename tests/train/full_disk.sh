#!/usr/bin/env bash
# A full disk, for real: training into a 4 MiB tmpfs until a save fails. The run must stop with a
# message (exit 1, never a crash at exit), leave `latest` on a sound checkpoint and no step_N.tmp,
# and keep every metrics row. Started again on the full disk, it must refuse with a message and
# leave the metrics as they were. Needs root to mount the tmpfs: skipped (77) otherwise.
set -euo pipefail
kiln="$1" work="$2"
fail() { echo "FAIL: $*" >&2; exit 1; }
mkdir -p "$work"
umount "$work" 2>/dev/null || true
rm -rf "${work:?}"/* 2>/dev/null || true
mount -t tmpfs -o size=4m tmpfs "$work" 2>/dev/null || { echo "cannot mount a tmpfs here (needs root): skipped"; exit 77; }
trap 'umount "$work"' EXIT
export OMP_NUM_THREADS=1
run="$work/run"
args=(train --model.preset=test --data random --seq-len 32 --batch-size 4 --train.eval_every=0 --max-steps 1000
      --save-every 1 --checkpoint.keep=0 --checkpoint.async=false --run-dir "$run")

status=0
"$kiln" "${args[@]}" > "$work/../full_disk.log" 2>&1 || status=$?
[[ $status -eq 1 ]] || fail "exit $status on a full disk, expected 1: $(tail -3 "$work/../full_disk.log")"
grep -qE "No space left|disk full" "$work/../full_disk.log" || fail "no full-disk message: $(tail -3 "$work/../full_disk.log")"
latest=$(cat "$run/latest")
"$kiln" ckpt verify "$run" > /dev/null || fail "latest ($latest) does not verify"
compgen -G "$run/step_*.tmp" > /dev/null && fail "a step_N.tmp was left behind"
saved=$((10#${latest#step_}))
rows=$(wc -l < "$run/metrics.jsonl")
[[ $rows -ge $saved ]] || fail "metrics.jsonl has $rows rows, the checkpoint is at step $saved"
echo "full disk: exit 1 with a message, latest $latest sound, $rows metrics rows kept"

# The failed save freed its space: fill the disk to the last block before starting again.
dd if=/dev/zero of="$work/filler" bs=4k 2>/dev/null || true
before=$(sha256sum < "$run/metrics.jsonl")
status=0
"$kiln" "${args[@]}" > "$work/../full_disk_again.log" 2>&1 || status=$?
[[ $status -eq 1 ]] || fail "exit $status when started again on the full disk: $(tail -3 "$work/../full_disk_again.log")"
grep -qE "No space left|disk full|write failed" "$work/../full_disk_again.log" ||
  fail "no message: $(tail -3 "$work/../full_disk_again.log")"
[[ "$(sha256sum < "$run/metrics.jsonl")" == "$before" ]] || fail "metrics.jsonl changed"
echo "started again on the full disk: refused, metrics as they were"
