#!/usr/bin/env bash
# Data and tensor parallel on the CPU backend, and data parallel on the emulated CUDA backend: the
# same global batch over 1, 2 and 4 ranks (mpiexec on this 2-core machine: oversubscribed, one
# thread each) gives the same loss and gradient norm at every step (and validation loss), and the
# same parameters and moments after the last (compared through checkpoints), within fp32
# reduction-order noise (relative 1e-5, absolute 1e-5): random tokens with gradient accumulation, a prepared
# dataset (the loader's rank slices, evaluation on every rank),
# small and no gradient buckets, and ZeRO-1.
set -euo pipefail
kiln="$1" src="$2" work="$3"
rm -rf "$work" && mkdir -p "$work"
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=(mpiexec --oversubscribe --mca mpi_yield_when_idle 1 --mca btl self,vader)
"$kiln" prepare "$src/README.md" "$src/docs/kernels.md" "$src/docs/emulator.md" --val-docs 1 --output "$work/data" \
  > /dev/null 2>&1

fail() { echo "dp_matches_single_rank: $*" >&2; exit 1; }
compare_metrics() {  # compare_metrics RUN_A RUN_B TOLERANCE: loss and grad_norm (and val_loss) of every step
  python3 - "$1/metrics.jsonl" "$2/metrics.jsonl" "$3" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
assert len(a) == len(b) > 0, (len(a), len(b))
worst = 0.0
for x, y in zip(a, b):
    assert ("val_loss" in x) == ("val_loss" in y), (x, y)
    for key in ("loss", "grad_norm", "val_loss"):
        if key in x:
            worst = max(worst, abs(x[key] - y[key]) / abs(x[key]))
print(f"{sys.argv[2]}: {len(a)} steps, worst relative difference {worst:.2e}")
sys.exit(0 if worst < float(sys.argv[3]) else 1)
PY
}
# compare RUN_A RUN_B: the parameters and moments after the last step (a run that saved no
# checkpoint fails: they are never skipped), then every step's metrics.
compare() {
  "$kiln" ckpt compare "$1" "$2" --tolerance 1e-5 | tail -1
  compare_metrics "$1" "$2" 1e-5
}

common=(--model.preset=test --seq-len 32 --max-steps 10 --save-every 10 --train.log_every=10 --train.eval_every=0)
for ranks in 1 2 4; do
  batch=$((8 / ranks))
  "${mpi[@]}" -n $ranks "$kiln" train "${common[@]}" --data random --batch-size $batch --train.grad_accum=2 \
    --run-dir "$work/random_$ranks" > "$work/random_$ranks.log"
  "${mpi[@]}" -n $ranks "$kiln" train "${common[@]}" --data "$work/data" --batch-size $batch \
    --train.eval_every=4 --run-dir "$work/data_$ranks" > "$work/data_$ranks.log"
done
# Gradients in several buckets reduced during the backward pass (the test model's 80k parameters
# are one 25 MB bucket), and in one all-reduce after it.
for ranks in 2 4; do
  "${mpi[@]}" -n $ranks "$kiln" train "${common[@]}" --data random --batch-size $((8 / ranks)) --train.grad_accum=2 \
    --parallel.bucket_mb=0.05 --run-dir "$work/buckets_$ranks" > "$work/buckets_$ranks.log"
  "${mpi[@]}" -n $ranks "$kiln" train "${common[@]}" --data random --batch-size $((8 / ranks)) --train.grad_accum=2 \
    --parallel.bucket_mb=0 --run-dir "$work/unbucketed_$ranks" > "$work/unbucketed_$ranks.log"
done
grep -q "gradient reduction over 2 ranks: [2-9] bucket(s) per step" "$work/buckets_2.log"
grep -q "one all-reduce after the backward pass" "$work/unbucketed_2.log"
# ZeRO-1: the same run with the optimizer state sharded.
for ranks in 2 4; do
  "${mpi[@]}" -n $ranks "$kiln" train "${common[@]}" --data random --batch-size $((8 / ranks)) --train.grad_accum=2 \
    --parallel.zero=1 --run-dir "$work/zero_$ranks" > "$work/zero_$ranks.log"
done
# Tensor parallel: TP 2 alone, and TP 2 x DP 2 (with and without ZeRO-1), at the same global batch.
"${mpi[@]}" -n 2 "$kiln" train "${common[@]}" --data random --batch-size 8 --train.grad_accum=2 --tp 2 \
  --run-dir "$work/tp2" > "$work/tp2.log"
"${mpi[@]}" -n 2 "$kiln" train "${common[@]}" --data "$work/data" --batch-size 8 --train.eval_every=4 --tp 2 \
  --run-dir "$work/tp2_data" > "$work/tp2_data.log"
for zero in 0 1; do
  "${mpi[@]}" -n 4 "$kiln" train "${common[@]}" --data random --batch-size 4 --train.grad_accum=2 --tp 2 \
    --parallel.zero=$zero --run-dir "$work/tp2dp2_$zero" > "$work/tp2dp2_$zero.log"
done
compare "$work/random_1" "$work/tp2"
compare "$work/data_1" "$work/tp2_data"
compare "$work/random_1" "$work/tp2dp2_0"
compare "$work/random_1" "$work/tp2dp2_1"
# Per micro-batch: the embedding, 2 per layer and 2 for the cross-entropy forward, the LM head's
# and 2 per layer backward; 2 micro-batches, plus the gradient norm: 2 (4 + 4 L) + 1 = 25 at L = 2.
# Their bytes: N C floats for each of the 2 + 4 L activation all-reduces, 3 N floats for the
# cross-entropy's max, sum-exp and target logit, per micro-batch of N tokens; 8 for the norm.
tp_bytes() { echo $(( 2 * ((2 + 4 * 2) * $1 * 32 * 4 + 3 * $1 * 4) + 8 )); }
grep -q "tensor parallel over 2 ranks: 25 collectives ($(tp_bytes 256) bytes) per step; replicated parameters bitwise equal" "$work/tp2.log"
for zero in 0 1; do grep -q "tensor parallel over 2 ranks: 25 collectives ($(tp_bytes 128) bytes) per step" "$work/tp2dp2_$zero.log"; done
# The sharding is real: a TP rank holds about half the parameters (one that holds the whole model
# fails here, as `[ a ] && [ b ]` under set -e never did).
read -r local whole < <(sed -n 's/^parameters on rank 0: \([0-9]*\) of the model.s \([0-9]*\)$/\1 \2/p' "$work/tp2.log")
echo "TP 2: rank 0 holds $local of the model's $whole parameters"
(( local < whole && 2 * local > whole )) || fail "TP 2: rank 0 holds $local of $whole parameters, expected about half"
for ranks in 2 4; do
  compare "$work/random_1" "$work/random_$ranks"
  compare "$work/data_1" "$work/data_$ranks"
  compare "$work/random_1" "$work/zero_$ranks"
  compare "$work/random_1" "$work/buckets_$ranks"
  compare "$work/random_1" "$work/unbucketed_$ranks"
done
# The sharding is real: rank 0 keeps ceil(P / ranks) of the P parameters' moments under ZeRO-1.
floats() { grep -o 'optimizer state floats on rank 0: [0-9]*' "$1" | grep -o '[0-9]*$'; }
full=$(floats "$work/random_1.log")
for ranks in 2 4; do
  want=$(( 2 * ((full / 2 + ranks - 1) / ranks) )) got=$(floats "$work/zero_$ranks.log")
  echo "ZeRO-1 at $ranks ranks: $got optimizer floats on rank 0 (all: $full, expected $want)"
  [ "$got" -eq "$want" ]
done
# Each step's data-parallel traffic, per rank: 2 micro-batches' token counts and the loss (8 bytes
# each), then the gradients: all P floats all-reduced (in as many buckets as there are), or under
# ZeRO-1 the padded buffer reduce-scattered, the norm's sum (8) and a shard S = ceil(P / ranks)
# all-gathered. A layout that moved more (or less) than its share would show here.
P=$((full / 2))
for ranks in 2 4; do
  S=$(( (P + ranks - 1) / ranks ))
  grep -q "one all-reduce after the backward pass; 4 collectives ($((24 + 4 * P)) bytes) per step" "$work/unbucketed_$ranks.log"
  grep -Eq "bucket\(s\) per step, started during the backward pass; [0-9]+ collectives \($((24 + 4 * P)) bytes\) per step" \
    "$work/buckets_$ranks.log"
  grep -q "reduce-scatter after the backward pass (ZeRO-1); 6 collectives ($((32 + 4 * S * (ranks + 1))) bytes) per step" \
    "$work/zero_$ranks.log"
done
# The CUDA backend on the emulator, data parallel over MPI: its device memory is host memory. bf16
# storage turns the ranks' different fp32 summation orders into last-bit differences of the
# parameters, hence a bf16-sized tolerance, on the metrics only (emu_parallel.sh compares the
# emulated layouts' checkpoints).
emu=(--model.preset=tiny --model.n_layer=2 --model.n_embd=128 --model.n_head=2 --seq-len 32 --max-steps 4
     --train.log_every=4 --train.eval_every=0 --device emu --data random --train.grad_accum=2)
for ranks in 1 2; do
  "${mpi[@]}" -n $ranks "$kiln" train "${emu[@]}" --batch-size $((4 / ranks)) --parallel.bucket_mb=0.2 \
    --run-dir "$work/emu_$ranks" > "$work/emu_$ranks.log"
done
grep -q "gradient reduction over 2 ranks: [2-9] bucket(s) per step" "$work/emu_2.log"
compare_metrics "$work/emu_1" "$work/emu_2" 1e-2
# Only rank 0 writes metrics and logs.
[ "$(grep -c '^step .* | loss' "$work/random_4.log")" -eq 1 ]
