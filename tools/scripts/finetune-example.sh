#!/usr/bin/env bash
# The README's fine-tuning example: the demo model (configs/tiny.toml, pretrained on the King
# James Bible) fine-tuned on prompt/response pairs, a verse's reference -> its text, so that it
# learns to answer a reference with a verse. Then `kiln generate` asks it for one.
#   bash tools/scripts/finetune-example.sh [STEPS]     (after tools/scripts/demo.sh, or it pretrains first)
set -euo pipefail
cd "$(dirname "$0")/../.."
steps="${1:-300}"
kiln=./build/kiln
# corpus/verses.jsonl: {"prompt": "Ge1:3 ", "response": "And God said, Let there be light: ..."}
if [[ ! -s corpus/verses.jsonl ]]; then
  mkdir -p corpus
  bible -f 'Gen1:1-Rev22:21' </dev/null | /usr/bin/python3 -c '
import json, re, sys
for line in sys.stdin:
    m = re.match(r"^([1-3]?[A-Za-z]+[0-9]+:[0-9]+) (.*)$", line.rstrip("\n"))
    if m:
        print(json.dumps({"prompt": m.group(1) + " ", "response": m.group(2)}))
' > corpus/verses.jsonl.tmp
  mv corpus/verses.jsonl.tmp corpus/verses.jsonl
fi
[[ -f corpus/verses/dataset.json ]] || "$kiln" prepare corpus/verses.jsonl --val-fraction 0.02 --output corpus/verses
# The pretrained model: the demo's run, saved at its end.
[[ -f runs/tiny/latest ]] || "$kiln" train --config configs/tiny.toml --save-every 300
"$kiln" train --config configs/tiny.toml --init-from runs/tiny --data corpus/verses --run-dir runs/verses \
  --max-steps "$steps" --save-every "$steps" --optim.lr=1e-3 --optim.warmup_steps=10 --train.eval_every=100
for reference in "Ge1:3 " "Joh3:16 " "Ps23:1 "; do
  "$kiln" generate runs/verses --prompt "$reference" --max-tokens 120 --temperature 0.7 --top-k 40 --seed 1
done
