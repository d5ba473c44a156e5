#!/usr/bin/env python3
"""The table of docs/scaling.md: `kiln plan` for GPT-2 124M to 1.5B and a 7B-class model on 8 to
1024 H100s, each at the largest micro-batch that fits (powers of two; the recompute setting noted).

    python3 tools/scripts/scaling-table.py [build/kiln] > table.md
"""
import json
import subprocess
import sys
import tempfile

kiln = sys.argv[1] if len(sys.argv) > 1 else "build/kiln"
# name, overrides, tensor-parallel size, ZeRO-1
MODELS = [
    ("GPT-2 124M", ["--model.preset=gpt2-124m", "--train.seq_len=1024"], 1, False),
    ("GPT-2 350M", ["--model.preset=gpt2-350m", "--train.seq_len=1024"], 1, False),
    ("GPT-2 774M", ["--model.preset=gpt2-774m", "--train.seq_len=1024"], 1, False),
    ("GPT-2 1.5B", ["--model.preset=gpt2-1558m", "--train.seq_len=1024"], 1, True),
    ("7B-class (32 x 4096, T=2048)", ["--model.preset=gpt2-124m", "--model.n_layer=32", "--model.n_head=32",
                                      "--model.n_embd=4096", "--model.max_seq_len=2048", "--train.seq_len=2048"], 8, True),
]
GPUS = [8, 64, 256, 1024]


def plan(overrides, gpus, tp, zero, recompute, micro_batch):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [kiln, "plan", "--gpus", str(gpus), "--tp", str(tp), "--recompute", recompute,
               "--micro-batch", str(micro_batch), "--json", f.name] + (["--zero"] if zero else []) + overrides
        subprocess.run(cmd, check=True, capture_output=True)
        return json.load(open(f.name))


print("| model | GPUs | TP x DP | ZeRO-1 | recompute | micro-batch | memory/GPU | step | tokens/s | MFU |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name, overrides, tp, zero in MODELS:
    for gpus in GPUS:
        probe = plan(overrides, gpus, tp, zero, "none", 1)
        recompute = "none" if probe["largest_micro_batch"]["none"] >= 8 else "block"
        batch = probe["largest_micro_batch"][recompute]
        p = plan(overrides, gpus, tp, zero, recompute, batch)
        print(f"| {name} | {gpus} | {tp} x {gpus // tp} | {'yes' if zero else 'no'} | {recompute} | {batch} | "
              f"{p['memory_bytes']['total'] / 2**30:.1f} GiB | {p['step_s']:.3f} s | {p['tokens_per_s']:,.0f} | "
              f"{100 * p['mfu']:.1f}% |")
