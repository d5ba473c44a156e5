#!/usr/bin/env bash
# The README's main job (tools/scripts/demo.sh), shortened: fetch the corpus, prepare it as byte-level
# shards, train configs/tiny.toml for 60 steps on the CPU and check from metrics.jsonl that the
# loss fell by more than a nat, then 3 steps on the emulated CUDA backend (--device emu).
set -euo pipefail
kiln="$1" src="$2" work="$3"
bash "$src/tools/scripts/get-corpus.sh" "$work/kjv.txt"
rm -rf "$work/run" "$work/kjv"
"$kiln" prepare "$work/kjv.txt" --separator '\n\n' --val-fraction 0.02 --output "$work/kjv"
"$kiln" train --config "$src/configs/tiny.toml" --data.path="$work/kjv" --run.dir="$work/run" \
  --train.steps=60 --train.log_every=20 --train.eval_every=60 --optim.warmup_steps=10
losses=$(grep -o '"loss":[0-9.e+-]*' "$work/run/metrics.jsonl" | cut -d: -f2)
first=$(echo "$losses" | head -1) last=$(echo "$losses" | tail -1)
echo "loss $first -> $last"
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 1.0) }'
# The same config on the CUDA backend, emulated: a few steps, and the loss falls there too.
"$kiln" train --config "$src/configs/tiny.toml" --data.path="$work/kjv" --run.dir="$work/run_emu" --device emu \
  --train.steps=3 --train.eval_every=0 --optim.warmup_steps=2
losses=$(grep -o '"loss":[0-9.e+-]*' "$work/run_emu/metrics.jsonl" | cut -d: -f2)
first=$(echo "$losses" | head -1) last=$(echo "$losses" | tail -1)
echo "emu: loss $first -> $last"
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 0.5) }'
