#!/usr/bin/env bash
# The interface other tools rely on: `mpirun -np N kiln train --config FILE --tp K --run-dir DIR
# --max-steps S --seed X` trains, and rank 0 writes DIR/metrics.jsonl with one object per step
# holding at least `step` and `loss`.
set -euo pipefail
kiln="$1" src="$2" dir="$3"
rm -rf "$dir"
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun --oversubscribe --mca mpi_yield_when_idle 1 --mca btl self,vader -np 2 "$kiln" train \
  --config "$src/configs/tiny.toml" --tp 2 --run-dir "$dir" --max-steps 3 --seed 7 \
  --data random --batch-size 2 --seq-len 32 > /dev/null
python3 - "$dir/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
assert [r["step"] for r in rows] == [1, 2, 3], rows
assert all(isinstance(r["loss"], float) for r in rows), rows
print(f"{len(rows)} rows, losses {[round(r['loss'], 4) for r in rows]}")
PY
