"""kiln's TensorBoard event files read back by TensorBoard itself (the `tensorboard` package from
PyPI, in .venv-hf): every scalar of every step equals metrics.jsonl's (as float32), the tags are
the ones documented, and the record checksums hold (TensorBoard's reader verifies them).

    python check_events.py KILN WORK_DIR      exit 77 (skipped) where tensorboard is not installed
"""
import glob
import json
import math
import os
import subprocess
import sys

try:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
except ImportError:
    print("tensorboard is not installed (tools/scripts/install-deps.sh puts it in .venv-hf): skipped")
    sys.exit(77)

kiln, work = sys.argv[1:3]
subprocess.run(["rm", "-rf", work], check=True)
os.makedirs(work)
source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
texts = [os.path.join(source, f) for f in ("README.md", "docs/design.md", "docs/parallel.md")]
subprocess.run([kiln, "prepare", *texts, "--val-docs", "1", "--output", f"{work}/data"], check=True,
               capture_output=True)
subprocess.run([kiln, "train", "--model.preset=test", "--data", f"{work}/data", "--seq-len", "32", "--batch-size", "4",
                "--max-steps", "6", "--train.eval_every=3", "--train.peak_tflops=1", "--run-dir", f"{work}/run"],
               check=True, capture_output=True)

files = glob.glob(f"{work}/run/events.out.tfevents.*")
assert len(files) == 1, files
events = list(EventFileLoader(files[0]).Load())  # raises on a bad length or data checksum
assert events[0].file_version == "brain.Event:2", events[0]
scalars = {}
for e in events[1:]:
    for v in e.summary.value:
        # TensorBoard's loader migrates simple_value to a tensor; either way it is one float.
        value = v.simple_value if v.HasField("simple_value") else v.tensor.float_val[0]
        scalars[(e.step, v.tag)] = value

rows = [json.loads(line) for line in open(f"{work}/run/metrics.jsonl")]
assert len(rows) == 6, rows
checked = 0
for row in rows:
    for key, tag in [("loss", "train/loss"), ("lr", "train/lr"), ("grad_norm", "train/grad_norm"),
                     ("tokens_per_s", "perf/tokens_per_s"), ("mfu", "perf/mfu"), ("val_loss", "val/loss")]:
        if key not in row:
            assert (row["step"], tag) not in scalars, (row["step"], tag)
            continue
        got = scalars[(row["step"], tag)]
        assert math.isclose(got, row[key], rel_tol=1e-6), (row["step"], tag, got, row[key])
        checked += 1
assert ("val/loss" in {t for _, t in scalars}) and (3, "val/loss") in scalars and (6, "val/loss") in scalars
print(f"{len(events)} events, {checked} scalars equal to metrics.jsonl's")
