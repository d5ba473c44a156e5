#!/usr/bin/env python3
"""kiln's GPT-2 against Hugging Face transformers' own, both ways:
1. a random GPT2LMHeadModel saved by transformers, imported with `kiln ckpt import-hf`: kiln's
   logits match transformers'; exported back with `kiln ckpt export-hf`, transformers loads
   bitwise the same weights and computes bitwise the same logits;
2. a model kiln trained for a few steps, exported: transformers' logits match kiln's.

usage: check_transformers.py KILN KILN_LOGITS WORKDIR
Exits 77 (skipped) when torch and transformers are not installed (tools/scripts/install-deps.sh puts
them in .venv-hf; this script re-runs itself there if it exists).
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_PYTHON = os.path.join(ROOT, ".venv-hf", "bin", "python")
try:
    import numpy as np
    import torch
    import transformers
except ImportError as e:
    if os.path.exists(VENV_PYTHON) and os.path.realpath(sys.prefix) != os.path.realpath(os.path.join(ROOT, ".venv-hf")):
        os.execv(VENV_PYTHON, [VENV_PYTHON] + sys.argv)
    print(f"skipped: {e} (tools/scripts/install-deps.sh installs torch and transformers into .venv-hf)")
    sys.exit(77)

TOLERANCE = 1e-5  # largest |kiln - transformers| over the largest |logit|, both fp32


def run(*args):
    subprocess.run([str(a) for a in args], check=True, stdout=subprocess.DEVNULL)


def kiln_logits(tool, ckpt, tokens, vocab, work):
    out = os.path.join(work, "kiln_logits.bin")
    run(tool, ckpt, out, *tokens)
    return np.fromfile(out, dtype="<f4").reshape(len(tokens), vocab)


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


def compare(name, kiln, hf):
    worst = float(np.max(np.abs(kiln - hf)) / np.max(np.abs(hf)))
    print(f"{name}: largest difference {worst:.2e} of the largest logit ({np.max(np.abs(hf)):.3f})")
    if not np.all(np.isfinite(kiln)) or worst > TOLERANCE:
        sys.exit(f"{name}: kiln's logits differ from transformers' by {worst:.2e} (tolerance {TOLERANCE})")


def main():
    kiln, tool, work = sys.argv[1:4]
    os.makedirs(work, exist_ok=True)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=300, n_positions=48, n_embd=64, n_layer=2, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # random layernorms and biases too, so that none is tested at 1 or 0 only
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    hf_dir, run_dir, export_dir = (os.path.join(work, d) for d in ("hf", "run", "export"))
    model.save_pretrained(hf_dir, safe_serialization=True)
    tokens = torch.randint(0, config.vocab_size, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    reference = hf_logits(model, tokens)

    run(kiln, "ckpt", "import-hf", hf_dir, run_dir)
    compare("transformers -> kiln", kiln_logits(tool, run_dir, tokens, config.vocab_size, work), reference)

    run(kiln, "ckpt", "export-hf", run_dir, export_dir)
    back = transformers.GPT2LMHeadModel.from_pretrained(export_dir).eval()
    original, exported = model.state_dict(), back.state_dict()
    for name, tensor in original.items():
        if not torch.equal(tensor, exported[name]):
            sys.exit(f"kiln's export changed {name}")
    if not np.array_equal(hf_logits(back, tokens), reference):
        sys.exit("transformers computes other logits from kiln's export")
    print(f"transformers -> kiln -> transformers: all {len(original)} tensors and the logits bitwise equal")

    trained = os.path.join(work, "trained")
    run(kiln, "train", "--model.preset=test", "--data", "random", "--device", "cpu", "--max-steps", "3",
        "--save-every", "3", "--seq-len", "16", "--batch-size", "2", "--run-dir", trained)
    run(kiln, "ckpt", "export-hf", trained, os.path.join(work, "trained_hf"))
    ours = transformers.GPT2LMHeadModel.from_pretrained(os.path.join(work, "trained_hf")).eval()
    vocab = ours.config.vocab_size
    tokens = [t % vocab for t in tokens]
    compare("kiln -> transformers", kiln_logits(tool, trained, tokens, vocab, work), hf_logits(ours, tokens))
    print(f"ok (transformers {transformers.__version__}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
