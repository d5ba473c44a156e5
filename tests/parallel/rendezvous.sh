#!/usr/bin/env bash
# Jobs started without MPI: processes given RANK, WORLD_SIZE and LOCAL_RANK meet through a file
# and talk over TCP (parallel/comm/socket_comm.cpp). The Comm tests pass at 2 and 3 ranks; data
# parallel with ZeRO-1 gives mpirun's losses and parameters, tensor parallel one process's; a stale
# rendezvous file is replaced; a rank that never comes, a WORLD_SIZE that differs and a rank that
# stops mid-run each end the job with a message naming them.
set -euo pipefail
kiln="$1" test_comm="$2" work="$3"
rm -rf "$work" && mkdir -p "$work"
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

fail() { echo "rendezvous: $*" >&2; exit 1; }
launch() {  # launch N LOG_PREFIX COMMAND...: N processes with RANK/WORLD_SIZE, waited for; fails if one does
  local n="$1" log="$2" status=0
  shift 2
  local pids=()
  for ((r = 0; r < n; r++)); do
    RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r "$@" > "$log.$r" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  return $status
}

for n in 2 3; do
  launch $n "$work/comm_$n" "$test_comm" --rendezvous "$work/comm_$n.rdv"
  grep -q "PASSED" "$work/comm_$n.0"
done

common=(train --model.preset=test --data random --seq-len 32 --max-steps 6 --save-every 6 --train.eval_every=0)
launch 2 "$work/env_zero" "$kiln" "${common[@]}" --batch-size 2 --parallel.zero=1 --run-dir "$work/env_zero"
mpiexec --oversubscribe --mca mpi_yield_when_idle 1 --mca btl self,vader -n 2 "$kiln" "${common[@]}" --batch-size 2 \
  --parallel.zero=1 --run-dir "$work/mpi_zero" > "$work/mpi_zero.log"
cmp <(grep -o '"loss":[^,]*' "$work/env_zero/metrics.jsonl") <(grep -o '"loss":[^,]*' "$work/mpi_zero/metrics.jsonl")
"$kiln" ckpt compare "$work/env_zero" "$work/mpi_zero" | tail -1
grep -q "reduce-scatter after the backward pass (ZeRO-1)" "$work/env_zero.0"
[[ ! -e "$work/env_zero/rendezvous" ]]  # removed once every rank joined

# Tensor parallel over TCP against one process; a stale rendezvous file from an earlier job is replaced.
mkdir -p "$work/env_tp"
echo "nowhere.invalid 1 2 12345" > "$work/env_tp/rendezvous"
launch 2 "$work/env_tp" "$kiln" "${common[@]}" --batch-size 4 --tp 2 --run-dir "$work/env_tp"
"$kiln" "${common[@]}" --batch-size 4 --run-dir "$work/single" > "$work/single.log"
grep -Eq "tensor parallel over 2 ranks: 13 collectives \([0-9]+ bytes\) per step; replicated parameters bitwise equal" "$work/env_tp.0"
"$kiln" ckpt compare "$work/single" "$work/env_tp" --tolerance 1e-5 | tail -1

expect_failure() {  # expect_failure LOG MESSAGE: the job failed and LOG says MESSAGE
  grep -qF -- "$2" "$1" || { echo "expected '$2' in $1:" >&2; cat "$1" >&2; exit 1; }
}
# Ranks issuing different collectives are caught by rank 0, naming them.
if launch 2 "$work/mismatch" "$test_comm" --rendezvous "$work/mismatch.rdv" --mismatch; then
  fail "a barrier met an all-reduce unnoticed"
fi
expect_failure "$work/mismatch.0" "rank 0: barrier (start-up) with rank 1: it sent all_reduce of 12 bytes where 8 were expected: the ranks issue different collectives"
# Two processes claiming the same rank: rank 0 fails, naming them (a rank 0 that exited 0 passed
# `! wait`, which set -e ignores).
RANK=0 WORLD_SIZE=3 "$kiln" "${common[@]}" --parallel.timeout_s=5 --run-dir "$work/twice" > "$work/twice.0" 2>&1 &
rank0=$!
for r in 1 1; do RANK=$r WORLD_SIZE=3 "$kiln" "${common[@]}" --parallel.timeout_s=5 --run-dir "$work/twice" > /dev/null 2>&1 & done
if wait $rank0; then fail "rank 0 trained while two processes claimed rank 1"; fi
wait || true
expect_failure "$work/twice.0" "two processes claim rank 1"
# Rank 1 never starts: rank 0 gives up after parallel.timeout_s.
if RANK=0 WORLD_SIZE=2 "$kiln" "${common[@]}" --parallel.timeout_s=2 --run-dir "$work/alone" > "$work/alone.log" 2>&1; then
  fail "rank 0 trained without rank 1"
fi
expect_failure "$work/alone.log" "rendezvous through $work/alone/rendezvous: 1 of 2 ranks joined before the timeout"
# The ranks disagree on WORLD_SIZE: both fail.
RANK=0 WORLD_SIZE=2 "$kiln" "${common[@]}" --parallel.timeout_s=3 --run-dir "$work/sizes" > "$work/sizes.0" 2>&1 &
rank0=$!
sleep 0.5
if RANK=1 WORLD_SIZE=3 "$kiln" "${common[@]}" --parallel.timeout_s=3 --run-dir "$work/sizes" > "$work/sizes.1" 2>&1; then
  fail "a rank with another WORLD_SIZE joined"
fi
if wait $rank0; then fail "rank 0 trained with a rank 1 that had another WORLD_SIZE"; fi
expect_failure "$work/sizes.1" "rank 0 has WORLD_SIZE=2, rank 1 has 3"
# A rank that stops answering mid-run (SIGSTOP): rank 0's collective times out, naming it.
long=(train --model.preset=test --data random --seq-len 32 --max-steps 100000 --train.eval_every=0
      --parallel.timeout_s=2 --run-dir "$work/stall")
RANK=0 WORLD_SIZE=2 "$kiln" "${long[@]}" > "$work/stall.0" 2>&1 &
rank0=$!
RANK=1 WORLD_SIZE=2 "$kiln" "${long[@]}" > "$work/stall.1" 2>&1 &
rank1=$!
for _ in $(seq 100); do [[ -s "$work/stall/metrics.jsonl" ]] && break; sleep 0.1; done
kill -STOP $rank1
start=$(date +%s)
status=0
wait $rank0 || status=$?
kill -9 $rank1 || true
echo "rank 0 ended with status $status $(( $(date +%s) - start )) s after rank 1 stopped"
[[ $status -ne 0 && $(( $(date +%s) - start )) -le 10 ]]
expect_failure "$work/stall.0" "did not finish within 2 s, waiting for rank 1"
echo "rendezvous: ok"
