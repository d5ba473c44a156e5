#!/usr/bin/env bash
# kiln against a current PyTorch (PyPI) on this CPU: the same model, batch and thread count, one full
# training step (forward, backward, clipping, AdamW) on random tokens, fp32, side by side in one run.
# PyTorch runs twice: eager (F.scaled_dot_product_attention, AdamW fused=True), and with torch.compile.
# Both sides take the median over the same timed steps, after the same warm-up steps, and time the
# same thing (zero the gradients, forward, backward, norm and clipping, AdamW; tools/scripts/bench_torch_cpu.py).
# Prints a markdown table and kiln's time per op. CPU measurements; wait for an otherwise idle machine.
#
#   bash tools/scripts/bench-cpu.sh [timed steps]         (default 5, after 2 warm-up steps)
#   KILN=build/kiln THREADS=2 SHAPES="4x64 8x256 4x1024" MODELS="gpt2-124m" RESULTS=dir bash tools/scripts/bench-cpu.sh
#
# Sets up .venv-bench (PyTorch, numpy, transformers from PyPI: several GB) on first use; not run in CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/scripts/bench-env.sh
steps="${1:-5}"
warmup=2
shapes="${SHAPES:-4x64 8x256 4x1024}"
models="${MODELS:-gpt2-124m}"
out="${RESULTS:-$(mktemp -d)}"
mkdir -p "$out"
bench_venv
: > "$out/breakdown.txt"

kiln_train() {  # uses model, B, T, run
  rm -rf "$run"
  OMP_NUM_THREADS="$threads" "$kiln" train --config "configs/$model.toml" --data random --device cpu --batch-size "$B" \
    --seq-len "$T" --max-steps $((warmup + steps)) --run-dir "$run" --threads "$threads" --train.log_every=1 \
    --train.eval_every=0 --save-every 0
}
median() { sort -g | awk '{ v[NR] = $1 } END { print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

clean_run "$out/blas.txt" env OMP_NUM_THREADS="$threads" "$kiln" bench blas --threads "$threads"
peak=$(awk '/sgemm/ { print $NF }' "$out/blas.txt")  # GFLOP/s
peak_others=$others
torch_version=$("$python" -c "import torch; print(torch.__version__)")
echo "$(date -u +%F), $(machine)"
echo "sgemm peak (OpenBLAS via kiln bench blas, 2048^3; others' CPU use $peak_others%): $peak GFLOP/s; PyTorch $torch_version (PyPI); fp32"
echo "median of $steps timed steps after $warmup warm-up steps, on both sides; results in $out"
echo
echo "| model | B×T | kiln tok/s | PyTorch eager tok/s | PyTorch compile tok/s | kiln / faster PyTorch | kiln GFLOP/s | kiln CPU MFU | others' CPU use (kiln, eager, compile) |"
echo "|---|---|---|---|---|---|---|---|---|"
for model in $models; do
  for shape in $shapes; do
    B=${shape%x*} T=${shape#*x}
    run="$out/$model-$B-$T"
    clean_run "$run.log" kiln_train ||
      { echo "bench: kiln train failed, see $run.log" >&2; exit 1; }
    busy=("$others")
    kiln_tps=$(grep -o '"tokens_per_s":[0-9.e+]*' "$run/metrics.jsonl" | cut -d: -f2 | tail -n +$((warmup + 1)) | median)
    gflops=$(grep -o '[0-9.]* GFLOP/s' "$run.log" | grep -v '^$' | cut -d' ' -f1 | tail -n +$((warmup + 1)) | median)
    for variant in eager compile; do
      clean_run "$run.$variant.log" env OMP_NUM_THREADS="$threads" "$python" tools/scripts/bench_torch_cpu.py --preset "$model" \
        --batch "$B" --seq-len "$T" --steps "$steps" --warmup-steps "$warmup" --threads "$threads" --adamw fused \
        $([[ $variant == compile ]] && echo --compile) --json "$run.$variant.json" ||
        { echo "bench: PyTorch ($variant) failed, see $run.$variant.log" >&2; exit 1; }
      busy+=("$others")
    done
    eager=$("$python" -c "import json; print(json.load(open('$run.eager.json'))['median_tokens_per_s'])")
    compiled=$("$python" -c "import json; print(json.load(open('$run.compile.json'))['median_tokens_per_s'])")
    awk -v m="$model" -v b="$B" -v t="$T" -v k="$kiln_tps" -v e="$eager" -v c="$compiled" -v g="$gflops" -v peak="$peak" \
        -v busy="${busy[0]}%, ${busy[1]}%, ${busy[2]}%" 'BEGIN {
      best = e > c ? e : c
      printf "| %s | %s×%s | %.0f | %.0f | %.0f | %.2fx | %.0f | %.0f%% | %s |\n", m, b, t, k, e, c, k / best, g, 100 * g / peak, busy }'
    echo "  $model B=$B T=$T: $(grep '^time per op' "$run.log" || echo '(no time per op line)')" >> "$out/breakdown.txt"
  done
done
echo
echo "kiln's time per op (the same runs):"
cat "$out/breakdown.txt"
