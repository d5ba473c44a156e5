#!/usr/bin/env bash
# The main job: install dependencies, build, prepare the King James Bible as byte-level token
# shards, train configs/tiny.toml on it (on a GPU if there is one, else the CPU), and plot the
# run (runs/tiny/metrics.png). Extra arguments go to `kiln train`, e.g. `bash tools/scripts/demo.sh --train.steps=1000`.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash tools/scripts/install-deps.sh
bash tools/scripts/get-corpus.sh corpus/kjv.txt
cmake --preset release
cmake --build --preset release
[[ -f corpus/kjv/dataset.json ]] ||
  ./build/kiln prepare corpus/kjv.txt --separator '\n\n' --val-fraction 0.02 --output corpus/kjv
./build/kiln train --config configs/tiny.toml "$@"
/usr/bin/python3 tools/scripts/plot_metrics.py runs/tiny  # runs/tiny/metrics.png
