#!/usr/bin/env python3
"""CPU training-throughput baseline: the kiln GPT-2 rebuilt in plain PyTorch.

Trains the same model kiln trains (pre-LN GPT-2, fused c_attn, tanh GELU, tied LM head over a
vocabulary padded to a multiple of 128, fp32) with AdamW and global-norm clipping on random tokens,
and reports ms/step and tokens/s, so kiln's CPU backend can be compared with PyTorch on one batch.
It uses what a current PyTorch offers for this: F.scaled_dot_product_attention(is_causal=True),
AdamW(fused=True) (--adamw foreach/for-loop for the others), and optionally torch.compile (--compile).

One timed step is what kiln times as one step in metrics.jsonl (train/trainer.cpp): zeroing the
gradients, forward, backward, the global gradient norm and clipping, the AdamW step, and reading the
loss. Data are made up front and not timed on either side (kiln's random loader is prefetched).

tools/scripts/bench-cpu.sh runs it with a current PyTorch from PyPI in its own venv (.venv-bench):

    .venv-bench/bin/python tools/scripts/bench_torch_cpu.py                 # tiny, batch 8 x 128
    .venv-bench/bin/python tools/scripts/bench_torch_cpu.py --preset gpt2-124m --batch 4 --seq-len 64 --compile
"""
import argparse
import json
import math
import os
import re
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# Model sizes of kiln's presets (model/config.cpp). The context (position-embedding rows) is the
# preset's, as kiln's, so that both optimizers update the same number of parameters.
PRESETS = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=256, vocab=257, context=256),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, vocab=50257, context=1024),
}
RUN_DEFAULTS = dict(batch=8, seq_len=128, steps=30, warmup_steps=5, threads=os.cpu_count(), vocab_multiple=128)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)  # weight [3C, C]: q, k, v
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, hs).transpose(1, 2) for t in (q, k, v))  # [B, nh, T, hs]
        if hasattr(F, "scaled_dot_product_attention"):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/sqrt(hs)
        else:  # PyTorch < 2.0 (Debian 12's 1.13): the plain masked softmax
            mask = torch.ones(T, T, dtype=torch.bool).tril()
            att = ((q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))).masked_fill(~mask, float("-inf"))
            y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, n_embd):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, vocab, context, vocab_multiple):
        super().__init__()
        self.vocab = vocab
        padded = (vocab + vocab_multiple - 1) // vocab_multiple * vocab_multiple
        self.wte = nn.Embedding(padded, n_embd)
        self.wpe = nn.Embedding(context, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        # Init as kiln's GPT::init_weights: matrices N(0, 0.02), residual projections
        # N(0, 0.02/sqrt(2L)), biases 0, LayerNorm gains 1, embedding padding rows 0.
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("weight"):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)
        with torch.no_grad():
            self.wte.weight[vocab:].zero_()

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.t()  # tied head over the padded table, as kiln
        logits = logits[..., : self.vocab]  # padding rows take no part in the softmax
        return F.cross_entropy(logits.reshape(-1, self.vocab), targets.reshape(-1))


def blas_library():
    """The BLAS PyTorch was built with (PyPI's wheels link MKL statically: BLAS_INFO=mkl), and the BLAS
    shared libraries this process has loaded (a build with BLAS_INFO=generic uses whatever libblas.so.3
    the system points at; the reference netlib one is far slower than OpenBLAS)."""
    torch.ones(2, 2) @ torch.ones(2, 2)
    info = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if re.search(r"/lib[^/]*(blas|blis|mkl_rt)[^/]*\.so", line)}
    except OSError:
        libs = set()
    loaded = ", ".join(sorted(os.path.basename(os.path.realpath(l)) for l in libs)) or "none"
    return f"BLAS_INFO={info.group(1) if info else 'unknown'}; loaded: {loaded}"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                   help="model size to start from; explicit size flags override it (default tiny)")
    for name in ("n-layer", "n-head", "n-embd", "vocab", "context"):
        p.add_argument("--" + name, type=int, help="override the preset's value")
    p.add_argument("--seq-len", type=int, help="sequence length, at most the context (default 128)")
    p.add_argument("--batch", type=int, help="sequences per step (default 8)")
    p.add_argument("--steps", type=int, help="timed steps (default 30)")
    p.add_argument("--warmup-steps", type=int, help="untimed steps before them (default 5)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default os.cpu_count())")
    p.add_argument("--vocab-multiple", type=int, help="pad the embedding table to a multiple of this, "
                   "as kiln's GPTConfig::vocab_multiple (default 128; 1 = no padding)")
    p.add_argument("--adamw", choices=["fused", "foreach", "for-loop"], default="fused",
                   help="torch.optim.AdamW implementation (default fused)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (forward and backward)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the results as a JSON object to PATH")
    args = p.parse_args()
    for key, value in {**PRESETS[args.preset], **RUN_DEFAULTS}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.n_embd % args.n_head:
        p.error(f"--n-embd {args.n_embd} is not a multiple of --n-head {args.n_head}")
    if args.seq_len > args.context:
        p.error(f"--seq-len {args.seq_len} is longer than the context {args.context}")
    if args.steps < 1 or args.warmup_steps < 0:
        p.error("--steps must be >= 1 and --warmup-steps >= 0")
    return args


def main():
    args = parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    B, T = args.batch, args.seq_len

    model = GPT(args.n_layer, args.n_head, args.n_embd, args.vocab, args.context, args.vocab_multiple)
    model.train()
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    n_padding = (model.wte.num_embeddings - args.vocab) * args.n_embd
    # Weight decay on matrices and embeddings only, as kiln (ParamSpec::decay = rank >= 2).
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    impl = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}[args.adamw]
    optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, **impl)
    step_model = torch.compile(model) if args.compile else model

    # Random batches made up front: data loading is not what is measured.
    total = args.warmup_steps + args.steps
    data = torch.randint(0, args.vocab, (total, B, T + 1))

    all_times, losses = [], []
    for step in range(total):
        x, y = data[step, :, :-1], data[step, :, 1:]
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        all_times.append(time.perf_counter() - t0)
    times = all_times[args.warmup_steps:]

    median_ms = statistics.median(times) * 1e3
    mean_ms = statistics.fmean(times) * 1e3
    result = {
        "framework": "pytorch",
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "blas": blas_library(),
        "adamw": args.adamw, "compile": args.compile,
        "preset": args.preset,
        "n_layer": args.n_layer, "n_head": args.n_head, "n_embd": args.n_embd,
        "vocab": args.vocab, "context": args.context, "padded_vocab": model.wte.num_embeddings,
        "batch": B, "seq_len": T, "steps": args.steps, "warmup_steps": args.warmup_steps,
        "params": n_params, "params_without_padding": n_params - n_padding,
        "warmup_ms_per_step": [t * 1e3 for t in all_times[:args.warmup_steps]],
        "ms_per_step": [t * 1e3 for t in times],
        "median_ms_per_step": median_ms, "mean_ms_per_step": mean_ms,
        "median_tokens_per_s": B * T / (median_ms / 1e3), "mean_tokens_per_s": B * T / (mean_ms / 1e3),
        "first_loss": losses[0], "last_loss": losses[-1],
    }
    print(f"pytorch {result['torch_version']} cpu{' + torch.compile' if args.compile else ''}, "
          f"{result['threads']} threads, AdamW {args.adamw} | "
          f"{args.n_layer}L {args.n_head}H {args.n_embd}C vocab {args.vocab} (padded {result['padded_vocab']}), "
          f"{n_params / 1e6:.2f}M params | B={B} T={T}, {args.steps} steps after {args.warmup_steps} warm-up | "
          f"median {median_ms:.1f} ms/step ({result['median_tokens_per_s']:.0f} tok/s), "
          f"mean {mean_ms:.1f} ms/step ({result['mean_tokens_per_s']:.0f} tok/s) | "
          f"loss {losses[0]:.4f} (step 0) -> {losses[-1]:.4f} (step {total - 1})")
    print(f"blas: {result['blas']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
