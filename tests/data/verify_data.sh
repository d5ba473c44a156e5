#!/usr/bin/env bash
# Shard checksums end to end: `kiln prepare` records them, `prepare --inspect --verify` and
# `train --verify-data` check them, and one flipped bit is refused by both, naming the shard.
#   bash tests/data/verify_data.sh KILN SOURCE_DIR WORK_DIR
set -euo pipefail
kiln="$1" src="$2" work="$3"
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
refused() {  # COMMAND...: exits non-zero, not by a signal (output in $work/out.txt)
  local status=0
  "$@" > "$work/out.txt" 2>&1 || status=$?
  ((status != 0 && status < 128))
}

"$kiln" prepare "$src/README.md" "$src/docs/design.md" --separator '\n\n' --shard-tokens 4096 --val-docs 1 --output "$work/ds" > /dev/null
"$kiln" prepare --inspect "$work/ds" --verify --samples 0 > "$work/verify.txt"
grep -Eq "^verified [0-9]+ shards: checksums and document offsets, [0-9.]+ MB in [0-9.]+ s" "$work/verify.txt" ||
  fail "no verification line in: $(cat "$work/verify.txt")"
"$kiln" train --model.preset=test --data "$work/ds" --verify-data --max-steps 1 --seq-len 32 --batch-size 2 \
  --device cpu --run.threads=1 --save-every 0 --run-dir "$work/run" > "$work/train.txt"
grep -q "checksums verified: [0-9.]* MB in [0-9.]* s" "$work/train.txt" || fail "no verification in: $(cat "$work/train.txt")"

# One bit in the middle of a shard.
shard="$work/ds/train_000001.h5"
python3 - "$shard" <<'PY'
import os, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(os.path.getsize(sys.argv[1]) // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0x10]))
PY
for cmd in "prepare --inspect $work/ds --verify" \
           "train --model.preset=test --data $work/ds --verify-data --max-steps 1 --device cpu --run-dir $work/run2"; do
  refused $kiln $cmd || fail "kiln $cmd accepted a damaged shard, or crashed"
  grep -q "$shard: checksum [0-9a-f]*, but $work/ds/dataset.json lists [0-9a-f]* (splits.train.shards\[1\].fnv1a)" \
    "$work/out.txt" || fail "kiln $cmd: unexpected message: $(cat "$work/out.txt")"
done
refused "$kiln" prepare --verify "$src/README.md" --output "$work/x" || fail "--verify without --inspect: accepted, or crashed"
grep -q -- "--verify.*--inspect" "$work/out.txt" || fail "--verify without --inspect: $(cat "$work/out.txt")"
echo "verify_data: checksums recorded, verified, and a flipped bit refused by prepare --inspect --verify and train --verify-data"
