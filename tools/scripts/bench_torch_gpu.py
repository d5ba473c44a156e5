#!/usr/bin/env python3
"""GPU training-throughput reference: the kiln GPT-2 trained the way nanoGPT trains it in PyTorch.

The same model as tools/scripts/bench_torch_cpu.py (pre-LN GPT-2, fused c_attn, tanh GELU, tied LM head over
a vocabulary padded to a multiple of 128) with attention through F.scaled_dot_product_attention,
bf16 autocast over fp32 master weights, fused AdamW (lr 6e-4, betas 0.9/0.95, weight decay 0.1 on
matrices and embeddings), global-norm clipping at 1.0, TF32 allowed and torch.compile, on random
tokens. Reports median ms/step, tokens/s, MFU (kiln's formula: 6N + 12 L T C FLOPs per token, N
counting the padded embedding once) and peak memory; tools/scripts/bench_e2e.sh puts it next to kiln.

    python3 tools/scripts/bench_torch_gpu.py --preset gpt2-124m --batch 16 --json torch-124m.json
    python3 tools/scripts/bench_torch_gpu.py --device cpu --preset tiny --batch 2 --seq-len 64 --steps 3   # smoke test
"""
import argparse
import inspect
import json
import math
import platform
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# Model sizes of kiln's presets (model/config.cpp). `context` is model.max_seq_len: the rows of wpe,
# which kiln counts in N whatever --seq-len is.
PRESETS = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=256, vocab=257, context=256),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, vocab=50257, context=1024),
    "gpt2-1558m": dict(n_layer=48, n_head=25, n_embd=1600, vocab=50257, context=1024),
}
# Dense bf16 tensor-core peaks (TFLOP/s) by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
HAS_SDPA = hasattr(F, "scaled_dot_product_attention")  # PyTorch >= 2.0


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)  # weight [3C, C]: q, k, v
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # [B, nh, T, hs]
        if HAS_SDPA:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # PyTorch 1.x (Debian's, for the CPU smoke test): the explicit masked softmax
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            y = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1) @ v
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
        return F.cross_entropy(logits.reshape(-1, self.vocab).float(), targets.reshape(-1))


def flops_per_token(params, n_layer, seq_len, n_embd):
    """kiln's train/trainer.cpp flops_per_token: the model FLOPs behind MFU."""
    return 6.0 * params + 12.0 * n_layer * seq_len * n_embd


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="gpt2-124m", help="model size (default gpt2-124m)")
    p.add_argument("--batch", type=int, default=16, help="sequences per micro-batch (default 16)")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence (default 1024)")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps (default 30)")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps before them, compilation "
                   "included (default 5)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cuda, or cpu for a smoke test (bf16 autocast on the CPU, no compile by default)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on for cuda, off for cpu)")
    p.add_argument("--peak-tflops", type=float, help="peak TFLOP/s for MFU (default from the GPU's name: "
                   "H100/H200 989, A100 312; required on other GPUs; on cpu MFU is null without it)")
    p.add_argument("--vocab-multiple", type=int, default=128,
                   help="pad the embedding table to a multiple of this, as kiln (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the results as a JSON object to PATH")
    args = p.parse_args()
    cfg = PRESETS[args.preset]
    if not 1 <= args.seq_len <= cfg["context"]:
        p.error(f"--seq-len {args.seq_len}: expected 1..{cfg['context']} (the preset's context, "
                "kiln's model.max_seq_len)")
    if args.batch < 1 or args.grad_accum < 1 or args.steps < 1 or args.warmup_steps < 0:
        p.error("--batch, --grad-accum and --steps must be >= 1 and --warmup-steps >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible to PyTorch (use --device cpu for a smoke test)")
    if args.compile is None:
        args.compile = args.device == "cuda"
    if args.compile and not hasattr(torch, "compile"):
        p.error(f"--compile: PyTorch {torch.__version__} has no torch.compile (use --no-compile)")
    args.device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    if args.peak_tflops is None and args.device == "cuda":
        args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in args.device_name), None)
        if args.peak_tflops is None:
            p.error(f"no known peak for '{args.device_name}': pass --peak-tflops")
    return args


def main():
    args = parse_args()
    cfg = PRESETS[args.preset]
    torch.manual_seed(args.seed)
    dev, B, T, accum = args.device, args.batch, args.seq_len, args.grad_accum
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    model = GPT(cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["vocab"], cfg["context"], args.vocab_multiple).to(dev)
    model.train()
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)  # wte [Vp, C] once (tied head) + wpe + blocks + ln_f, as kiln's N
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = dev == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
    optimizer = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), eps=1e-8, **({"fused": True} if fused else {}))
    step_model = torch.compile(model) if args.compile else model

    # Random batches made up front, uniform over the real vocabulary: data loading is not measured.
    total = args.warmup_steps + args.steps
    gen = torch.Generator().manual_seed(args.seed)
    data = torch.randint(0, cfg["vocab"], (total, accum, B, T + 1), generator=gen).to(dev)

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for step in range(total):
        sync()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=dev)
        for micro in range(accum):
            x, y = data[step, micro, :, :-1], data[step, micro, :, 1:]
            with torch.autocast(dev, dtype=torch.bfloat16):
                loss = step_model(x, y) / accum
            loss.backward()
            loss_sum += loss.detach()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        sync()
        if step >= args.warmup_steps:
            times.append(time.perf_counter() - t0)
        losses.append(loss_sum.item())

    ms = statistics.median(times) * 1e3
    tokens_per_step = B * T * accum
    tokens_per_s = tokens_per_step / (ms / 1e3)
    flops = flops_per_token(n_params, cfg["n_layer"], T, cfg["n_embd"]) * tokens_per_s
    mfu = flops / (args.peak_tflops * 1e12) if args.peak_tflops else None
    peak_memory = torch.cuda.max_memory_allocated() if dev == "cuda" else 0
    result = {
        "preset": args.preset, "batch": B, "seq_len": T, "steps": args.steps,
        "ms_per_step": ms, "tokens_per_s": tokens_per_s, "mfu": mfu, "peak_memory_bytes": peak_memory,
        "device_name": args.device_name, "compile": args.compile, "torch_version": torch.__version__,
        "framework": "pytorch", "device": dev, "grad_accum": accum, "warmup_steps": args.warmup_steps,
        "params": n_params, "peak_tflops": args.peak_tflops, "fused_adamw": fused, "sdpa": HAS_SDPA,
        "first_loss": losses[0], "last_loss": losses[-1],
    }
    print(f"pytorch {torch.__version__} {dev} ({args.device_name}), compile {'on' if args.compile else 'off'} | "
          f"{args.preset} {n_params / 1e6:.2f}M params | B={B} T={T} accum {accum}, {args.steps} steps after "
          f"{args.warmup_steps} warm-up | median {ms:.1f} ms/step, {tokens_per_s:.0f} tok/s, "
          f"{flops / 1e12:.1f} TFLOP/s, MFU {f'{100 * mfu:.1f}%' if mfu is not None else '-'}, "
          f"peak memory {peak_memory / 2**30:.2f} GiB | loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
