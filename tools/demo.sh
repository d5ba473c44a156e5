#!/usr/bin/env bash
# The main job: install dependencies, build, prepare the King James Bible as byte-level token
# shards, and train configs/tiny.toml on it (on the CPU). Extra arguments go to `kiln train`,
# e.g. `bash tools/demo.sh --train.steps=1000`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/get-corpus.sh corpus/kjv.txt
cmake --preset release
cmake --build --preset release
[[ -f corpus/kjv/dataset.json ]] ||
  ./build/kiln prepare corpus/kjv.txt --separator '\n\n' --val-fraction 0.02 --output corpus/kjv
./build/kiln train --config configs/tiny.toml "$@"
