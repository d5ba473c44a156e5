#!/usr/bin/env bash
# kiln generate and kiln ckpt import-hf / export-hf from the command line: the same seed gives the
# same text, another seed other text; bad options are refused by name; export, import, export
# again gives the same safetensors file, byte for byte.
set -euo pipefail
kiln="$1" source="$2" work="$3"
rm -rf "$work" && mkdir -p "$work"
export OMP_NUM_THREADS=1
"$kiln" prepare "$source/README.md" --output "$work/data" > /dev/null 2>&1
"$kiln" train --model.preset=test --data "$work/data" --device cpu --seq-len 32 --batch-size 4 --max-steps 20 \
  --save-every 20 --train.eval_every=0 --run-dir "$work/run" > /dev/null

gen=("$kiln" generate "$work/run" --prompt "kiln " --max-tokens 24 --top-k 40 --top-p 0.95 --temperature 0.9)
"${gen[@]}" --seed 1 > "$work/a.txt" 2> "$work/a.err"
"${gen[@]}" --seed 1 > "$work/b.txt" 2> /dev/null
"${gen[@]}" --seed 2 > "$work/c.txt" 2> /dev/null
cmp "$work/a.txt" "$work/b.txt"
! cmp -s "$work/a.txt" "$work/c.txt" || { echo "seeds 1 and 2 gave the same text" >&2; exit 1; }
grep -q "^kiln " "$work/a.txt"
grep -Eq "5 prompt \+ [0-9]+ new tokens in [0-9.]+ s: [0-9.]+ tokens/s \(CPU, fp32, KV cache\)" "$work/a.err"

expect_error() {  # expect_error MESSAGE COMMAND...: fails, exit non-zero (not by a signal), with MESSAGE on stderr
  local message="$1" status=0
  shift
  "$@" > /dev/null 2> "$work/err.txt" || status=$?
  ((status != 0)) || { echo "no error from: $*" >&2; exit 1; }
  ((status < 128)) || { echo "killed by signal $((status - 128)), not refused: $*" >&2; exit 1; }
  grep -qF -- "$message" "$work/err.txt" || { echo "expected '$message', got: $(cat "$work/err.txt")" >&2; exit 1; }
}
expect_error "--max-tokens 100: with the prompt's 5 tokens that passes the model's context of 64" \
  "$kiln" generate "$work/run" --prompt "kiln " --max-tokens 100
expect_error "top-p: expected a number in (0, 1], got 2" "$kiln" generate "$work/run" --top-p 2
expect_error "$work/nowhere: neither a checkpoint" "$kiln" generate "$work/nowhere"
"$kiln" train --model.preset=test --data random --device cpu --seq-len 16 --batch-size 2 --max-steps 1 \
  --save-every 1 --run-dir "$work/random" > /dev/null
expect_error "no tokenizer recorded (trained on random tokens, or imported): pass --tokenizer bytes" \
  "$kiln" generate "$work/random"
# A checkpoint is usable alone: from another directory, with the training data gone.
mv "$work/data" "$work/data.moved"
(cd / && "$kiln" generate "$work/run" --prompt "kiln " --max-tokens 24 --top-k 40 --top-p 0.95 --temperature 0.9 \
  --seed 1 > "$work/elsewhere.txt" 2> /dev/null)
cmp "$work/a.txt" "$work/elsewhere.txt"
mv "$work/data.moved" "$work/data"
"$kiln" generate "$work/random" --tokenizer bytes --max-tokens 4 > /dev/null 2>&1

# inspect shows the saved settings and tokenizer; export-hf's end-of-text id exists in the vocabulary
# (the byte tokenizer's 256, not GPT-2's 50256).
"$kiln" ckpt inspect "$work/run" > "$work/inspect.txt"
grep -q "^  train.steps = 20$" "$work/inspect.txt" || { echo "no settings in: $(cat "$work/inspect.txt")" >&2; exit 1; }
grep -q '^tokenizer: {"fingerprint":"bytes","name":"bytes"}$' "$work/inspect.txt" ||
  { echo "no tokenizer in: $(cat "$work/inspect.txt")" >&2; exit 1; }
"$kiln" ckpt export-hf "$work/run" "$work/hf" > /dev/null
python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); assert c["eos_token_id"] == c["bos_token_id"] == 256 < c["vocab_size"], c' \
  "$work/hf/config.json"
"$kiln" ckpt import-hf "$work/hf" "$work/imported" > /dev/null
"$kiln" ckpt verify "$work/imported" > /dev/null
"$kiln" ckpt export-hf "$work/imported" "$work/hf2" > /dev/null
cmp "$work/hf/model.safetensors" "$work/hf2/model.safetensors"
# The imported weights generate the same text as the checkpoint they came from.
"$kiln" generate "$work/imported" --tokenizer bytes --prompt "kiln " --max-tokens 24 --top-k 40 --top-p 0.95 \
  --temperature 0.9 --seed 1 > "$work/d.txt" 2> /dev/null
cmp "$work/a.txt" "$work/d.txt"
expect_error "$work/data/config.json: missing or unreadable" "$kiln" ckpt import-hf "$work/data" "$work/x"
# A PyTorch-pickle checkpoint: say that only safetensors is read, and how to convert.
mkdir "$work/hf_bin" && cp "$work/hf/config.json" "$work/hf_bin/" && : > "$work/hf_bin/pytorch_model.bin"
expect_error "$work/hf_bin: holds pytorch_model.bin but no model.safetensors; kiln reads only a single safetensors file. Convert it" \
  "$kiln" ckpt import-hf "$work/hf_bin" "$work/x"
# --no-stop is a plain switch.
"$kiln" generate "$work/run" --no-stop --prompt "kiln " --max-tokens 4 > /dev/null 2>&1
# Tokenizer files that are not the ones kiln ships (here GPT-2's with its last merge dropped) travel
# from --tokenizer-dir into the dataset and from there into every checkpoint, which then decodes
# with nothing else at hand.
mkdir "$work/tok"
cp "$source/data/vocab/gpt2/encoder.json" "$work/tok/"
head -n -1 "$source/data/vocab/gpt2/vocab.bpe" > "$work/tok/vocab.bpe"
"$kiln" prepare "$source/README.md" --tokenizer gpt2 --tokenizer-dir "$work/tok" --output "$work/own" > /dev/null 2>&1
"$kiln" train --model.preset=test --data "$work/own" --device cpu --seq-len 32 --batch-size 2 --max-steps 2 \
  --train.eval_every=0 --run-dir "$work/own_run" > /dev/null
cmp "$work/tok/vocab.bpe" "$work/own_run/step_00000002/vocab.bpe"
rm -r "$work/own" "$work/tok"
(cd / && "$kiln" generate "$work/own_run" --prompt "kiln " --max-tokens 4 > /dev/null 2>&1) ||
  { echo "generate without the dataset or the tokenizer directory failed" >&2; exit 1; }
# kiln eval on the checkpoint alone: a dataset split, a text file, and refusals by name.
"$kiln" eval "$work/run" --data "$work/data" --split train --seq-len 32 --max-batches 2 > "$work/eval.txt"
grep -Eq "loss [0-9.]+, perplexity [0-9.]+ over 512 tokens of $work/data \(train\)" "$work/eval.txt" ||
  { echo "eval: $(cat "$work/eval.txt")" >&2; exit 1; }
"$kiln" eval "$work/run" --data "$source/docs/design.md" --seq-len 32 > "$work/eval_text.txt"
grep -q "perplexity" "$work/eval_text.txt" || { echo "eval of a text file: $(cat "$work/eval_text.txt")" >&2; exit 1; }
expect_error "its val split is empty (prepare with --val-fraction or --val-docs, or pass --split train)" \
  "$kiln" eval "$work/run" --data "$work/data"
expect_error "--seq-len 100: longer than the model's context of 64" "$kiln" eval "$work/run" --data "$work/data" --seq-len 100
expect_error "no tokenizer recorded" "$kiln" eval "$work/random" --data "$source/README.md"
# --eval-only needs a validation split, and says so.
expect_error "no validation split to evaluate" \
  "$kiln" train --model.preset=test --data "$work/data" --device cpu --seq-len 32 --batch-size 4 --max-steps 20 \
  --run-dir "$work/run" --eval-only
# Resuming with other settings lists what changed and what it means; with eval_every and no
# validation split, the start-up says nothing will be evaluated.
"$kiln" train --model.preset=test --data "$work/data" --device cpu --seq-len 32 --batch-size 2 --max-steps 21 \
  --run-dir "$work/run" > "$work/changed.log"
grep -q "resuming with changed settings:" "$work/changed.log" || { echo "$(cat "$work/changed.log")" >&2; exit 1; }
grep -q "train.batch_size: 4 -> 2 (the data continues from its saved position" "$work/changed.log" ||
  { echo "$(cat "$work/changed.log")" >&2; exit 1; }
grep -q "train.steps: 20 -> 21 (the learning-rate schedule follows the new length" "$work/changed.log" ||
  { echo "$(cat "$work/changed.log")" >&2; exit 1; }
grep -q "note: train.eval_every = 50, but $work/data has no validation split" "$work/changed.log" ||
  { echo "no eval note: $(cat "$work/changed.log")" >&2; exit 1; }
# A sampling prompt longer than the context is refused at start-up, not at the first sample.
expect_error "train.sample_prompt: 100 tokens, but the model's context holds 64" \
  "$kiln" train --model.preset=test --data "$work/data" --device cpu --seq-len 32 --batch-size 2 --max-steps 2 \
  --train.sample_every=1 --train.sample_prompt="$(printf 'x%.0s' $(seq 100))" --run-dir "$work/long_prompt"
echo "generate and HF conversion: ok"
