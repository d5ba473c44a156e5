#!/usr/bin/env python3
"""The transformers side of tools/scripts/bench-generate.sh: greedy decoding with a KV cache on the CPU.

    bench_generate.py make-model DIR [--seed S]
        a GPT-2 124M with random weights (transformers' initialisation), saved with safetensors,
        for `kiln ckpt import-hf`;
    bench_generate.py time DIR --prompt-ids "ID ID ..." [--new-tokens 64] [--threads 2] [--runs 5] [--json PATH]
        transformers' model.generate on it, greedy, fp32, use_cache=True: the median over --runs calls
        (after one untimed warm-up call) of new tokens over the seconds of the generate() call, which
        holds the prompt's forward pass and the new tokens', as kiln generate's figure does.
"""
import argparse
import json
import statistics
import time

import torch
import transformers


def make_model(args):
    torch.manual_seed(args.seed)
    config = transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # GPT-2 124M
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(args.dir, safe_serialization=True)
    print(f"{args.dir}: GPT-2 {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, random weights")


def time_generate(args):
    torch.set_num_threads(args.threads)
    model = transformers.GPT2LMHeadModel.from_pretrained(args.dir, torch_dtype=torch.float32).eval()
    prompt = torch.tensor([[int(t) for t in args.prompt_ids.split()]])
    settings = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                    use_cache=True, pad_token_id=model.config.eos_token_id)

    def once():
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), **settings)
        seconds = time.perf_counter() - start
        new = out[0, prompt.shape[1]:].tolist()
        assert len(new) == args.new_tokens, (len(new), args.new_tokens)
        return len(new) / seconds, new

    once()  # warm-up: PyTorch's first call sets up its kernels and allocator
    rates, ids = [], None
    for _ in range(args.runs):
        rate, ids = once()
        rates.append(rate)
    result = {"framework": "transformers", "transformers_version": transformers.__version__,
              "torch_version": torch.__version__, "threads": torch.get_num_threads(),
              "attn_implementation": getattr(model.config, "_attn_implementation", None),
              "prompt_tokens": prompt.shape[1], "new_tokens": args.new_tokens, "runs": args.runs,
              "tokens_per_s": rates, "median_tokens_per_s": statistics.median(rates), "new_ids": ids}
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {result['threads']} threads: "
          f"median {result['median_tokens_per_s']:.2f} tokens/s over {args.runs} runs "
          f"({', '.join(f'{r:.2f}' for r in rates)})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make-model")
    m.add_argument("dir")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(run=make_model)
    t = sub.add_parser("time")
    t.add_argument("dir")
    t.add_argument("--prompt-ids", required=True, help="the prompt's token ids, whitespace-separated")
    t.add_argument("--new-tokens", type=int, default=64)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--runs", type=int, default=5)
    t.add_argument("--json", metavar="PATH")
    t.set_defaults(run=time_generate)
    args = p.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
