#!/usr/bin/env bash
# README.md's quick start, as written, from a fresh clone of the repository: the block between the
# quick-start markers, each line run in order, with ./build/kiln replaced by the binary under test
# and every --max-steps cut to 3. Each step must succeed and leave what the next one reads.
set -euo pipefail
kiln="$1" src="$2" work="$3"
fail() { echo "FAIL: $*" >&2; exit 1; }
rm -rf "$work" && mkdir -p "$work"
git clone -q "$src" "$work/kiln"
cd "$work/kiln"
# The README of the source tree, so that the block under test is the one being committed.
cp "$src/README.md" README.md
export OMP_NUM_THREADS=2
mapfile -t commands < <(sed -n '/^<!-- quick-start -->$/,/^<!-- \/quick-start -->$/p' README.md | sed -n 's/^    //p')
[[ ${#commands[@]} -ge 8 ]] || fail "the quick-start block has ${#commands[@]} commands"
for command in "${commands[@]}"; do
  command=${command//.\/build\/kiln/\"$kiln\"}
  command=$(sed -E 's/--max-steps [0-9]+/--max-steps 3/g' <<< "$command")
  echo "+ $command"
  bash -c "$command" > "$work/out.txt" 2>&1 || fail "$command: $(tail -5 "$work/out.txt")"
  tail -2 "$work/out.txt"
done
# What the steps left: samples of text, perplexities, a fine-tuned run and an HF export.
[[ -f runs/kjv-gpt2/latest && -f runs/docs/latest ]] || fail "no checkpoints"
[[ -f exported/docs/model.safetensors && -f exported/docs/config.json ]] || fail "no export"
# GPT-2's tokenizer travels with the export under Hugging Face's names, with its end-of-text id.
cmp exported/docs/vocab.json "$src/data/vocab/gpt2/encoder.json" || fail "vocab.json is not GPT-2's encoder.json"
cmp exported/docs/merges.txt "$src/data/vocab/gpt2/vocab.bpe" || fail "merges.txt is not GPT-2's vocab.bpe"
python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); assert c["eos_token_id"] == 50256, c' exported/docs/config.json ||
  fail "eos_token_id"
# transformers loads the export as a whole model, tokenizer included (where .venv-hf is set up).
if "$src/.venv-hf/bin/python" -c "import transformers" 2> /dev/null; then
  "$src/.venv-hf/bin/python" - exported/docs <<'PY' || fail "transformers could not load exported/docs"
import sys
from transformers import AutoTokenizer, GPT2LMHeadModel
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
model = GPT2LMHeadModel.from_pretrained(sys.argv[1])
ids = tokenizer("Hello world", return_tensors="pt").input_ids
assert ids.tolist() == [[15496, 995]], ids
assert tokenizer.eos_token_id == model.config.eos_token_id == 50256, (tokenizer.eos_token_id, model.config.eos_token_id)
out = model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.eos_token_id)
print("transformers loaded the export:", repr(tokenizer.decode(out[0])))
PY
else
  echo "transformers is not installed (.venv-hf): the export was not loaded back"
fi
echo "quick start: ${#commands[@]} commands ok"
