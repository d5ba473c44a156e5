#!/usr/bin/env bash
# The CUDA backend on the emulator under MPI (its device memory is host memory, so MPI reaches
# it): tensor parallel 2, data parallel 2 with ZeRO-1, and TP 2 x DP 2 match one rank with the
# same global batch, step by step. bf16 storage turns the layouts' different summation orders
# into last-bit differences of activations and parameters: hence a bf16-sized tolerance, where
# the CPU backend's fp32 runs agree to 1e-5 (dp_matches_single_rank.sh).
set -euo pipefail
kiln="$1" work="$2"
rm -rf "$work" && mkdir -p "$work"
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=(mpiexec --oversubscribe --mca mpi_yield_when_idle 1 --mca btl self,vader)
# AdamW's eps 1e-5 (not 1e-8): the key bias's gradient is zero but for rounding (softmax ignores a
# shift shared by every key), and a smaller eps turns that noise into full-size steps of random sign.
emu=(--model.preset=tiny --model.n_layer=2 --model.n_embd=128 --model.n_head=2 --seq-len 32 --max-steps 10
     --train.log_every=10 --train.eval_every=0 --device emu --data random --train.grad_accum=2 --optim.eps=1e-5)

fail() { echo "emu_parallel: $*" >&2; exit 1; }
compare() {  # compare RUN_A RUN_B TOLERANCE: loss and grad_norm of every step
  python3 - "$1/metrics.jsonl" "$2/metrics.jsonl" "$3" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
assert len(a) == len(b) == 10, (len(a), len(b))
worst = max(abs(x[k] - y[k]) / abs(x[k]) for x, y in zip(a, b) for k in ("loss", "grad_norm"))
print(f"{sys.argv[2]}: worst relative difference {worst:.2e} (allowed {sys.argv[3]})")
sys.exit(0 if worst <= float(sys.argv[3]) else 1)
PY
}

run() {  # run NAME RANKS FLAGS...
  local name="$1" ranks="$2"
  shift 2
  "${mpi[@]}" -n "$ranks" "$kiln" train "${emu[@]}" "$@" --run-dir "$work/$name" > "$work/$name.log"
}
run single 1 --batch-size 4 --save-every 1 --checkpoint.keep=0  # step 1 too: the reference of the updates
run tp2 2 --batch-size 4 --tp 2 --save-every 10
run zero2 2 --batch-size 2 --parallel.zero=1 --save-every 10
run tp2dp2 4 --batch-size 2 --tp 2 --parallel.zero=1 --save-every 10
# Losses and gradient norms step by step, then every parameter and moment after the 10 steps, as
# each tensor's distance from the one-rank run against that run's updates since step 1 (an
# absolute tolerance would have to exceed the updates themselves, the bf16 noise being of their
# size in places). The layouts differ by at most 3% of the updates; a ZeRO-1 rank stepping its
# shard at 0.8 times the learning rate shows as 20% (and passed `--tolerance 1e-2`, absolute).
for name in tp2 zero2 tp2dp2; do
  compare "$work/single" "$work/$name" 1e-2
  "$kiln" ckpt compare "$work/single" "$work/$name" --relative-to "$work/single/step_00000001" --tolerance 0.1 |
    tail -1
done

# The sharding is real. TP: rank 0 holds about half the parameters, the replicated ones bitwise
# equal across the group at the end, and 2 (4 + 4 L) + 1 = 25 collectives per step at L = 2. Their
# bytes, as on the CPU but over MPI in fp32 (the bf16 activations are widened for the sum). A TP
# rank that holds the whole model fails the count (as `[ a ] && [ b ]` under set -e never did).
tp_bytes() { echo $(( 2 * ((2 + 4 * 2) * $1 * 128 * 4 + 3 * $1 * 4) + 8 )); }
grep -q "tensor parallel over 2 ranks: 25 collectives ($(tp_bytes 128) bytes) per step; replicated parameters bitwise equal" \
  "$work/tp2.log"
read -r local whole < <(sed -n 's/^parameters on rank 0: \([0-9]*\) of the model.s \([0-9]*\)$/\1 \2/p' "$work/tp2.log")
echo "TP 2 (emulated CUDA): rank 0 holds $local of the model's $whole parameters"
(( local < whole && 2 * local > whole )) || fail "TP 2: rank 0 holds $local of $whole parameters, expected about half"
# ZeRO-1: rank 0 keeps half the moments and, the parameters being bf16, half the fp32 master
# weights; what it allocated is the memory plan, to the byte.
floats() { grep -o 'optimizer state floats on rank 0: [0-9]*' "$1" | grep -o '[0-9]*$'; }
full=$(floats "$work/single.log") got=$(floats "$work/zero2.log")
echo "ZeRO-1 (emulated CUDA): $got optimizer floats on rank 0 of $full"
[ "$got" -eq "$(( 2 * ((full / 2 + 1) / 2) ))" ]
grep -q "master weights 0.[0-9] MiB" "$work/zero2.log"
for name in single tp2 zero2 tp2dp2; do grep -q "(the plan, to the byte)" "$work/$name.log"; done
# The ZeRO-1 run's checkpoint holds each rank's shard of the master weights: it loads on one CPU
# process, bit for bit (resumed where it ends, it is saved again there in one file).
"$kiln" train --model.preset=tiny --model.n_layer=2 --model.n_embd=128 --model.n_head=2 --seq-len 32 --data random \
  --device cpu --batch-size 4 --max-steps 10 --save-every 10 --resume "$work/zero2" --run-dir "$work/zero2_on_cpu" \
  > "$work/zero2_on_cpu.log"
grep -Eq '"file": "rank_00001.h5"' "$work/zero2/step_00000010/manifest.json"
"$kiln" ckpt compare "$work/zero2" "$work/zero2_on_cpu" | tail -1
echo "emulated CUDA backend: TP 2, ZeRO-1 DP 2 and TP 2 x DP 2 match one rank"
