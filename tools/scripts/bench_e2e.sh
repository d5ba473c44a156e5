#!/usr/bin/env bash
# End-to-end GPU training throughput, kiln against PyTorch (nanoGPT-style: SDPA, bf16 autocast,
# fused AdamW, torch.compile; tools/scripts/bench_torch_gpu.py) on the same model, batch and random tokens:
# GPT-2 124M at batch 16 and GPT-2 1558M at batch 4 (kiln with block recomputation), T = 1024,
# 30 steps each. Prints a markdown table of median ms/step, tokens/s, MFU and memory; the runs'
# logs, kiln's metrics.jsonl and PyTorch's JSON stay in OUT_DIR.
#
#   bash tools/scripts/bench_e2e.sh [BUILD_DIR] [OUT_DIR]      (defaults: build, bench-e2e)
#   PEAK_TFLOPS=N for MFU on a GPU other than H100/H200 (989) or A100 (312); PYTHON=... for PyTorch;
#   KILN_BENCH_ALLOW_CPU=1 to run without a visible GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
out=${2:-bench-e2e}
python=${PYTHON:-python3}
kiln="$build/kiln"                              # CMake puts the binary at the build root
[[ -x "$kiln" ]] || kiln="$build/tools/kiln"
[[ -x "$kiln" ]] || { echo "bench_e2e: no kiln binary in $build (build it first)" >&2; exit 1; }

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) || gpu=
if [[ -z "$gpu" && "${KILN_BENCH_ALLOW_CPU:-0}" != 1 ]]; then
  echo "bench_e2e: no GPU (nvidia-smi missing or failed); set KILN_BENCH_ALLOW_CPU=1 to run anyway" >&2
  exit 1
fi
peak=${PEAK_TFLOPS:-}
case "$gpu" in *H100* | *H200*) peak=${peak:-989} ;; *A100*) peak=${peak:-312} ;; esac
kiln_peak=() torch_peak=()
[[ -n "$peak" ]] && kiln_peak=(--train.peak_tflops="$peak") torch_peak=(--peak-tflops "$peak")
mkdir -p "$out"
echo "GPU: ${gpu:-none}, peak ${peak:-unknown} TFLOP/s"

for run in "gpt2-124m 16 none" "gpt2-1558m 4 block"; do
  read -r preset b rc <<< "$run"
  echo "running $preset, batch $b: kiln (recompute $rc), then PyTorch" >&2
  rm -rf "$out/kiln-$preset"
  "$kiln" train --device cuda --model.preset="$preset" --data random --batch-size "$b" --seq-len 1024 \
    --max-steps 30 --train.eval_every=0 --train.recompute="$rc" --run-dir "$out/kiln-$preset" \
    "${kiln_peak[@]}" > "$out/kiln-$preset.log" 2>&1 || { tail -20 "$out/kiln-$preset.log" >&2; exit 1; }
  "$python" tools/scripts/bench_torch_gpu.py --preset "$preset" --batch "$b" --seq-len 1024 --steps 30 \
    "${torch_peak[@]}" --json "$out/torch-$preset.json" > "$out/torch-$preset.log" 2>&1 ||
    { tail -20 "$out/torch-$preset.log" >&2; exit 1; }
done

python3 - "$out" <<'EOF'
import json, re, statistics, sys
out = sys.argv[1]
print("\n| model | framework | batch | ms/step | tokens/s | MFU | peak memory |\n|---|---|---|---|---|---|---|")
pct = lambda m: "-" if m is None else f"{100 * m:.1f}%"
for preset, batch in (("gpt2-124m", 16), ("gpt2-1558m", 4)):
    rows = [json.loads(l) for l in open(f"{out}/kiln-{preset}/metrics.jsonl") if l.strip()][5:]  # after 5 warm-up
    med = lambda k: statistics.median(r[k] for r in rows) if rows and all(k in r for r in rows) else None
    plan = next((l.strip() for l in open(f"{out}/kiln-{preset}.log") if l.startswith("memory plan")), "")
    total = re.search(r"total ([^,]+)", plan)
    memory = total.group(1) if total else plan.partition(": ")[2] or "-"  # the plan as printed (planned, not measured)
    print(f"| {preset} | kiln | {batch} | {med('ms'):.1f} | {med('tokens_per_s'):.0f} | {pct(med('mfu'))} | {memory} |")
    t = json.load(open(f"{out}/torch-{preset}.json"))
    print(f"| {preset} | PyTorch {t['torch_version']} | {t['batch']} | {t['ms_per_step']:.1f} | {t['tokens_per_s']:.0f} "
          f"| {pct(t['mfu'])} | {t['peak_memory_bytes'] / 2**30:.2f} GiB |")
EOF
