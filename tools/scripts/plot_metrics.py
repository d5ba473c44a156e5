#!/usr/bin/env python3
"""Plots of kiln runs: RUN_DIR/metrics.jsonl of one or more runs, overlaid, as one PNG.

Panels: train and validation loss against steps and against tokens, learning rate, gradient norm,
tokens/s and MFU (when the run knew its peak). Skipped steps (non-finite loss) are left out.
Each run keeps one colour in every panel (its validation loss dashed, with markers). Needs any
Python 3 with matplotlib (Debian's python3-matplotlib, or a venv's).

    python3 tools/scripts/plot_metrics.py runs/a [runs/b ...] [-o plot.png]
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.ticker import ScalarFormatter


def load(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON ({e})")
    if not rows:
        sys.exit(f"{path}: no rows")
    # Tokens seen so far: each step's tokens are tokens/s x seconds.
    seen = 0.0
    for r in rows:
        seen += r.get("tokens_per_s", 0) * r.get("ms", 0) / 1000
        r["tokens"] = seen
    return [r for r in rows if not r.get("skipped")]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (each holding metrics.jsonl)")
    p.add_argument("-o", "--output", help="PNG to write (default: RUN/metrics.png for one run, metrics.png otherwise)")
    a = p.parse_args()
    runs = [(os.path.basename(os.path.normpath(d)) or d, load(d)) for d in a.runs]
    output = a.output or (os.path.join(a.runs[0], "metrics.png") if len(a.runs) == 1 else "metrics.png")

    panels = [("loss", "step"), ("loss", "tokens"), ("lr", "step"), ("grad_norm", "step"),
              ("tokens_per_s", "step"), ("mfu", "step")]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (key, x) in zip(axes.flat, panels):
        for i, (name, rows) in enumerate(runs):
            colour = f"C{i % 10}"  # the run's colour in every panel
            xs = [r[x] for r in rows if key in r]
            ys = [100 * r[key] if key == "mfu" else r[key] for r in rows if key in r]
            if xs:
                ax.plot(xs, ys, color=colour, label=f"{name} train" if key == "loss" else name, linewidth=1)
            if key == "loss":
                val = [(r[x], r["val_loss"]) for r in rows if "val_loss" in r]
                if val:
                    ax.plot(*zip(*val), "o--", color=colour, label=f"{name} val", markersize=3)
        ax.set_xlabel("tokens" if x == "tokens" else "step")
        ax.set_title({"loss": "loss", "lr": "learning rate", "grad_norm": "gradient norm",
                      "tokens_per_s": "tokens/s", "mfu": "MFU (%)"}[key] + (" vs tokens" if x == "tokens" else ""))
        if key in ("loss", "grad_norm"):
            ax.set_yscale("log")
            # Plain numbers (2, 3, 5), not powers of ten, on the log axes.
            for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                formatter = ScalarFormatter()
                formatter.set_scientific(False)
                axis_formatter(formatter)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    print(f"plot_metrics: {output} ({', '.join(name for name, _ in runs)})")


if __name__ == "__main__":
    main()
