#!/usr/bin/env bash
# kiln against PyTorch on this CPU: the same model, batch and thread count, one full training step
# (forward, backward, clipping, AdamW) on random tokens, side by side in one run. Prints a markdown
# table and kiln's per-op breakdown. Needs `tools/install-deps.sh --oracle` (PyTorch + OpenBLAS).
#   bash tools/bench-cpu.sh [steps]      (THREADS=N to pin the thread count; default all cores)
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-8}"
threads="${THREADS:-$(nproc)}"
out="$(mktemp -d)"
peak=$(./build/kiln bench blas --threads "$threads" | awk '/sgemm/ { print $NF }')  # GFLOP/s
echo "sgemm peak (OpenBLAS, 2048^3, $threads threads): $peak GFLOP/s"
echo
echo "| model | B | T | kiln tok/s | PyTorch tok/s | kiln / PyTorch | kiln GFLOP/s | CPU MFU |"
echo "|---|---|---|---|---|---|---|---|"
for model in tiny gpt2-124m; do
  for shape in "4 64" "8 256"; do
    read -r B T <<< "$shape"
    run="$out/$model-$B-$T"
    ./build/kiln train --config "configs/$([[ $model == tiny ]] && echo tiny || echo gpt2-124m).toml" --data random \
      --batch-size "$B" --seq-len "$T" --max-steps "$steps" --run-dir "$run" --threads "$threads" \
      --train.log_every=1000 --train.eval_every=0 > "$run.log"
    # median tokens/s over the steps after the first two (warm-up)
    kiln=$(grep -o '"tokens_per_s":[0-9.e+]*' "$run/metrics.jsonl" | cut -d: -f2 | tail -n +3 | sort -g |
           awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
    gflops=$(grep -o '[0-9.]* GFLOP/s' "$run.log" | tail -1 | cut -d' ' -f1)
    OMP_NUM_THREADS="$threads" /usr/bin/python3 tools/bench_torch_cpu.py --preset "$model" --batch "$B" --seq-len "$T" \
      --steps "$steps" --warmup-steps 2 --threads "$threads" --json "$run.torch.json" > /dev/null
    torch=$(/usr/bin/python3 -c "import json; print(json.load(open('$run.torch.json'))['median_tokens_per_s'])")
    awk -v m="$model" -v b="$B" -v t="$T" -v k="$kiln" -v p="$torch" -v g="$gflops" -v peak="$peak" 'BEGIN {
      printf "| %s | %s | %s | %.0f | %.0f | %.2fx | %.1f | %.0f%% |\n", m, b, t, k, p, k / p, g, 100 * g / peak }'
    echo "  $model B=$B T=$T: $(grep '^time per op' "$run.log")" >> "$out/breakdown.txt"
  done
done
echo
cat "$out/breakdown.txt"
rm -rf "$out"
