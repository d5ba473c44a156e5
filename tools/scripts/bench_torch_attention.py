#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention on the shapes of `kiln bench kernels`, for a side-by-side.

Times causal bf16 attention with each of PyTorch's fused backends (FlashAttention and cuDNN) on
the same GPU, counting FLOPs as kiln does: 4 B T^2 H D for the forward, halved for causal, and
2.5x that for the backward. The backward is timed alone: forward + backward minus the forward.

    python3 tools/scripts/bench_torch_attention.py [--json torch_attention.json] [--reps 50]

Needs a CUDA GPU and PyTorch 2.3 or newer (torch.nn.attention.sdpa_kernel), e.g. from PyPI in a
virtual environment: python3 -m venv .venv && .venv/bin/pip install torch.
"""
import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F

# The rows of kernels/bench/bench.cu's bench_attention: GPT-2 (D = 64, H = C / 64, T = 1024) at 8k and
# 64k tokens, and D = 128 with 16 heads at 16k tokens for T = 2k..8k.
GPT2_HEADS = {"124m": 12, "350m": 16, "1558m": 25}
GPT2_TOKENS = [8192, 65536]
LONG_CONTEXTS = [2048, 4096, 8192]
LONG_TOKENS, LONG_HEADS = 16384, 16


def shapes():
    for model, heads in GPT2_HEADS.items():
        for tokens in GPT2_TOKENS:
            yield model, tokens // 1024, 1024, heads, 64
    for T in LONG_CONTEXTS:
        yield "D=128", LONG_TOKENS // T, T, LONG_HEADS, 128


def median_ms(work, warmup, reps):
    for _ in range(warmup):
        work()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        work()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the rows to this file")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=50)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_torch_attention: no CUDA device: PyTorch's fused attention backends run only on a GPU")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    rows = []
    print(f"{torch.cuda.get_device_name()}, PyTorch {torch.__version__}")
    print(f"{'backend':<7} {'model':<6} {'shape':<26} {'fwd ms':>8} {'fwd TFLOP/s':>12} {'bwd ms':>8} {'bwd TFLOP/s':>12}")
    for model, B, T, H, D in shapes():
        # [B, H, T, D] views of a [B, T, 3, H, D] buffer, the layout kiln reads.
        qkv = torch.randn(B, T, 3, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        dout = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)
        forward_flops = 4.0 * B * T * T * H * D / 2
        shape = f"B={B} T={T} H={H} D={D}"
        for name, backend in backends.items():
            try:
                with sdpa_kernel([backend]):
                    fwd = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), args.warmup,
                                    args.reps)

                    def forward_backward():
                        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                        torch.autograd.grad(out, qkv, dout)

                    both = median_ms(forward_backward, args.warmup, args.reps)
            except RuntimeError as e:  # a backend that does not support the shape or GPU
                print(f"{name:<7} {model:<6} {shape:<26} not available: {str(e).splitlines()[0]}")
                continue
            bwd = both - fwd
            row = dict(backend=name, model=model, B=B, T=T, H=H, D=D, forward_ms=fwd, backward_ms=bwd,
                       forward_tflops=forward_flops / fwd / 1e9, backward_tflops=2.5 * forward_flops / bwd / 1e9)
            rows.append(row)
            print(f"{name:<7} {model:<6} {shape:<26} {fwd:>8.3f} {row['forward_tflops']:>12.1f} {bwd:>8.3f} "
                  f"{row['backward_tflops']:>12.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
