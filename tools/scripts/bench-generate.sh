#!/usr/bin/env bash
# kiln generate against transformers on a current PyTorch (PyPI), on this CPU: GPT-2 124M with random
# weights (made by transformers, imported with `kiln ckpt import-hf`), greedy, 64 new tokens, fp32, KV
# cache, the same thread count. Also measures the machine's memory read bandwidth on those threads, and
# reports decoding as a fraction of the bound it sets: each new token reads every weight once, so
# tokens/s <= bandwidth / bytes of weights read per token. CPU measurements; wait for an idle machine.
#
#   bash tools/scripts/bench-generate.sh [runs]            (default 5; the median is reported)
#   KILN=build/kiln THREADS=2 GPT2_DIR=dir RESULTS=dir bash tools/scripts/bench-generate.sh
#
# GPT2_DIR holds GPT-2's encoder.json and vocab.bpe, for the prompt (default: whatever
# `kiln generate --tokenizer gpt2` finds by itself). Sets up .venv-bench on first use; not run in CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/scripts/bench-env.sh
runs="${1:-5}"
new_tokens=64
prompt="The quick brown fox jumps over the lazy dog. It"
out="${RESULTS:-$(mktemp -d)}"
mkdir -p "$out"
bench_venv
tok=(--tokenizer gpt2)
[[ -n "${GPT2_DIR:-}" ]] && tok+=(--tokenizer-dir "$GPT2_DIR")

# The model: transformers' random GPT-2 124M, imported into a kiln checkpoint.
if [[ ! -f "$out/ckpt-done" ]]; then
  rm -rf "$out/hf" "$out/ckpt"
  "$python" tools/scripts/bench_generate.py make-model "$out/hf" > "$out/make-model.log" 2>&1
  "$kiln" ckpt import-hf "$out/hf" "$out/ckpt" > /dev/null
  touch "$out/ckpt-done"
fi
prompt_ids=$(printf '%s' "$prompt" | "$kiln" tokenize "${tok[@]}")

# Read bandwidth: the best of 10 passes of a vectorised sum over 1 GiB (far beyond the caches), on
# $threads OpenMP threads.
cat > "$out/read_bw.c" <<'EOF'
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
int main(void) {
  const size_t n = (size_t)1 << 28;  // 2^28 floats = 1 GiB
  float* a = aligned_alloc(64, n * sizeof(float));
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) a[i] = (float)(i & 7);
  double best = 1e30, sink = 0;
  for (int rep = 0; rep < 10; rep++) {
    const double t0 = omp_get_wtime();
    float s = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : s)
    for (size_t i = 0; i < n; i++) s += a[i];
    const double t = omp_get_wtime() - t0;
    sink += s;
    if (t < best) best = t;
  }
  printf("%.2f\n", n * sizeof(float) / best / 1e9);  // GB/s
  return sink == 0;  // keeps the sums live
}
EOF
gcc -O3 -march=native -fopenmp "$out/read_bw.c" -o "$out/read_bw"
clean_run "$out/read_bw.txt" env OMP_NUM_THREADS="$threads" OMP_PROC_BIND=true "$out/read_bw"
busy=("$others")
bandwidth=$(cat "$out/read_bw.txt")

# Bytes of weights one decoding step reads: every block's matrices, biases and layernorms, the final
# layernorm, the tied embedding table (the logits) and one position-embedding row, at fp32.
bytes_per_token=$("$python" -c "
import json; c = json.load(open('$out/hf/config.json'))
C, L, V = c['n_embd'], c['n_layer'], c['vocab_size']
print(4 * (L * (12 * C * C + 13 * C) + 2 * C + V * C + C))")

# kiln: one process per run (generate's own figure: new tokens over the seconds of the generation,
# the prompt's forward pass included).
generate_once() {  # the text to kiln.txt; kiln's figure on stderr
  OMP_NUM_THREADS="$threads" "$kiln" generate "$out/ckpt" "${tok[@]}" --prompt "$prompt" --max-tokens "$new_tokens" \
    --temperature 0 --no-stop > "$out/kiln.txt"
}
kiln_rates=() kiln_busy=()
for ((r = 0; r < runs; r++)); do
  clean_run "$out/kiln.err" generate_once
  kiln_rates+=("$(grep -o '[0-9.]* tokens/s' "$out/kiln.err" | cut -d' ' -f1)")
  kiln_busy+=("$others")
done
busy+=("$(printf '%s\n' "${kiln_busy[@]}" | sort -g | tail -1)")
kiln_tps=$(printf '%s\n' "${kiln_rates[@]}" | sort -g | awk '{ v[NR] = $1 } END { print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')

clean_run "$out/transformers.log" env OMP_NUM_THREADS="$threads" "$python" tools/scripts/bench_generate.py time "$out/hf" \
  --prompt-ids "$prompt_ids" --new-tokens "$new_tokens" --threads "$threads" --runs "$runs" --json "$out/transformers.json"
busy+=("$others")
hf_tps=$("$python" -c "import json; print(json.load(open('$out/transformers.json'))['median_tokens_per_s'])")
versions=$("$python" -c "import json; r = json.load(open('$out/transformers.json')); print(f\"transformers {r['transformers_version']}, PyTorch {r['torch_version']}\")")

# Greedy decoding of the same weights: the two should agree (fp32 rounding may split a near tie).
hf_text=$("$python" -c "import json; print(' '.join(map(str, json.load(open('$out/transformers.json'))['new_ids'])))" |
          "$kiln" tokenize "${tok[@]}" --decode)
same="no"
[[ "$(cat "$out/kiln.txt")" == "$prompt$hf_text" ]] && same="yes"

echo "$(date -u +%F), $(machine); $versions (PyPI)"
echo "GPT-2 124M, random weights, fp32, KV cache, greedy, $(wc -w <<< "$prompt_ids") prompt + $new_tokens new tokens," \
     "median of $runs runs; results in $out"
echo "read bandwidth (1 GiB sum, $threads threads, best of 10): $bandwidth GB/s; weights read per token:" \
     "$(awk -v b="$bytes_per_token" 'BEGIN { printf "%.1f MB", b / 1e6 }'); same greedy text from both: $same"
echo "other processes' CPU use while measuring (bandwidth, kiln's worst run, transformers): ${busy[0]}%, ${busy[1]}%, ${busy[2]}%"
echo
echo "| | tokens/s | of the bandwidth bound | kiln / transformers |"
echo "|---|---|---|---|"
awk -v bw="$bandwidth" -v bytes="$bytes_per_token" -v k="$kiln_tps" -v h="$hf_tps" -v v="$versions" 'BEGIN {
  bound = bw * 1e9 / bytes
  printf "| bound (bandwidth / weight bytes) | %.1f | 100%% | |\n", bound
  printf "| kiln generate | %.1f | %.0f%% | %.2fx |\n", k, 100 * k / bound, k / h
  printf "| %s | %.1f | %.0f%% | |\n", v, h, 100 * h / bound }'
echo
echo "kiln runs: ${kiln_rates[*]} tokens/s; transformers: $(grep -o '([0-9., ]*)' "$out/transformers.log")"
