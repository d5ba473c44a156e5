#!/usr/bin/env bash
# Checkpoints under MPI on the CPU backend: 8 straight steps against 4, stop, resume, 4 more give
# bit-identical losses and gradient norms under TP 2 and under DP 2 with ZeRO-1; a checkpoint
# saved under TP 2 resumes under DP 2 (ZeRO-1) and under one process, within the TP tolerance.
set -euo pipefail
kiln="$1" work="$2"
rm -rf "$work" && mkdir -p "$work"
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=(mpiexec --oversubscribe --mca mpi_yield_when_idle 1 --mca btl self,vader -n 2)
common=(--model.preset=test --data random --seq-len 32 --train.eval_every=0 --train.log_every=8)

compare() {  # compare RUN_A RUN_B TOLERANCE: every step's loss and grad_norm, each step once
  python3 - "$1/metrics.jsonl" "$2/metrics.jsonl" "$3" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 9)), ([r["step"] for r in a], [r["step"] for r in b])
worst = max(abs(x[k] - y[k]) / abs(x[k]) for x, y in zip(a, b) for k in ("loss", "grad_norm"))
print(f"{sys.argv[2]}: worst relative difference {worst:.2e} (allowed {sys.argv[3]})")
sys.exit(0 if worst <= float(sys.argv[3]) else 1)
PY
}

for layout in "tp2 --tp 2 --batch-size 4" "zero --parallel.zero=1 --batch-size 2"; do
  read -r name flags <<< "$layout"
  # shellcheck disable=SC2086
  "${mpi[@]}" "$kiln" train "${common[@]}" $flags --max-steps 8 --run-dir "$work/${name}_straight" > /dev/null
  # shellcheck disable=SC2086
  "${mpi[@]}" "$kiln" train "${common[@]}" $flags --max-steps 4 --save-every 4 --run-dir "$work/$name" > /dev/null
  "$kiln" ckpt verify "$work/$name"
  # shellcheck disable=SC2086
  "${mpi[@]}" "$kiln" train "${common[@]}" $flags --max-steps 8 --save-every 4 --run-dir "$work/$name" \
    > "$work/$name.resume.log"
  grep -q "resumed from $work/$name/step_00000004 at step 4" "$work/$name.resume.log"
  compare "$work/${name}_straight" "$work/$name" 0
done
# Resharding: TP 2's step-4 checkpoint continued under DP 2 with ZeRO-1, and on one process.
for target in "dp2 ${mpi[*]}" "single"; do
  read -r name launcher <<< "$target"
  mkdir -p "$work/reshard_$name"
  head -4 "$work/tp2/metrics.jsonl" > "$work/reshard_$name/metrics.jsonl"
  flags=(--batch-size 4)
  [[ "$name" == dp2 ]] && flags=(--parallel.zero=1 --batch-size 2)  # the same global batch of 4
  # shellcheck disable=SC2086
  $launcher "$kiln" train "${common[@]}" "${flags[@]}" --max-steps 8 --resume "$work/tp2/step_00000004" \
    --run-dir "$work/reshard_$name" > /dev/null
  compare "$work/tp2_straight" "$work/reshard_$name" 1e-5
done
# Right after loading under another layout the state is the saved one, bit for bit: TP 2's
# checkpoint resumed where it ends (step 4) is saved again under DP 2 with ZeRO-1 and on one
# process, and every tensor's weights and moments equal the original's.
for target in "dp2 ${mpi[*]}" "single"; do
  read -r name launcher <<< "$target"
  flags=(--batch-size 4) dp=1
  [[ "$name" == dp2 ]] && flags=(--parallel.zero=1 --batch-size 2) dp=2
  # shellcheck disable=SC2086
  $launcher "$kiln" train "${common[@]}" "${flags[@]}" --max-steps 4 --save-every 4 \
    --resume "$work/tp2/step_00000004" --run-dir "$work/resaved_$name" > "$work/resaved_$name.log"
  grep -q "no steps left: saved $work/resaved_$name/step_00000004" "$work/resaved_$name.log"
  grep -Eq "\"dp\": ?$dp," "$work/resaved_$name/step_00000004/manifest.json"  # saved in the new layout
  "$kiln" ckpt compare "$work/tp2/step_00000004" "$work/resaved_$name"
done
# ... and the comparison does see a difference: four more steps changed every tensor.
if "$kiln" ckpt compare "$work/tp2/step_00000004" "$work/tp2/step_00000008" > "$work/compare_differs.log"; then
  echo "kiln ckpt compare found step 4 and step 8 equal" >&2
  exit 1
fi
grep -q "84 tensor(s) past the tolerance 0" "$work/compare_differs.log"
