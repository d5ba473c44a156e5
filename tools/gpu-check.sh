#!/usr/bin/env bash
# The whole GPU verification in one call, for a lent GPU machine (../shared/device/README.md):
# build for sm_90, run the `gpu` tests, then `kiln bench kernels` and PyTorch's attention on the
# same shapes, then end-to-end training against PyTorch (tools/bench_e2e.sh). Results go to $OUT
# (or ./gpu-check): ctest.log, bench.json/.txt, torch_attention.*, e2e/ and e2e.txt.
#
#   source .devdeps/env.sh; bash tools/gpu-check.sh [--tests-only]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
nvidia-smi -L | tee "$out/device.txt"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 > "$out/configure.log" 2>&1 &&
  cmake --build build-gpu -j"$(nproc)" > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
ctest --test-dir build-gpu -L gpu --output-on-failure > "$out/ctest.log" 2>&1
tests=$?
grep -E "tests passed|tests failed|\(Failed\)" "$out/ctest.log"
[[ "${1:-}" == "--tests-only" ]] && exit $tests
./build-gpu/kiln bench kernels --json "$out/bench.json" | tee "$out/bench.txt"
python3 tools/bench_torch_attention.py --json "$out/torch_attention.json" | tee "$out/torch_attention.txt"
bash tools/bench_e2e.sh build-gpu "$out/e2e" | tee "$out/e2e.txt"
exit $tests
