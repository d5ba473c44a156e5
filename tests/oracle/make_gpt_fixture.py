#!/usr/bin/python3
"""
Build a tiny GPT-2 in PyTorch and write an HDF5 "gold" fixture for kiln's C++
test (test_gpt_oracle): inputs, float32 initial weights, float64 logits / loss /
gradients, and the parameters after one AdamW step.

Usage:  /usr/bin/python3 tests/oracle/make_gpt_fixture.py tests/fixtures/gpt_oracle.h5

The model is written out by hand (no nn.Transformer, no SDPA) so that every op
maps one-to-one onto what kiln implements. Weights are float32 values (that is
what kiln stores), but the forward/backward runs in float64 on those exact
values, so the stored results are the true answer for those weights and the C++
side can measure its own float32 error against them.

Layout: root attrs (int64) vocab_size n_layer n_head n_embd max_seq_len
batch_size seq_len; /tokens /targets int32 [B,T]; /params/<name> float32;
/logits float64 [B,T,V]; /loss float64 (); /grads/<name> float64;
/adamw attrs lr beta1 beta2 eps weight_decay (float64), /adamw/params/<name>
float64. Float datasets are gzip(9)+shuffle compressed.
"""
import math
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# config: small enough that the fixture stays well under a few MB, but with
# n_head > 1, n_layer > 1 and T == max_seq_len so every indexing path is hit.
V, L, NH, C, MAXT = 500, 2, 4, 64, 32
B, T = 4, 32
LN_EPS = 1e-5
ADAMW = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)


def param_shapes():
    """Parameter names and shapes in kiln order (nn.Linear layout: [out, in])."""
    shapes = {"wte": (V, C), "wpe": (MAXT, C)}
    for l in range(L):
        p = f"h.{l}."
        shapes[p + "ln_1.weight"] = (C,)
        shapes[p + "ln_1.bias"] = (C,)
        shapes[p + "attn.c_attn.weight"] = (3 * C, C)
        shapes[p + "attn.c_attn.bias"] = (3 * C,)
        shapes[p + "attn.c_proj.weight"] = (C, C)
        shapes[p + "attn.c_proj.bias"] = (C,)
        shapes[p + "ln_2.weight"] = (C,)
        shapes[p + "ln_2.bias"] = (C,)
        shapes[p + "mlp.c_fc.weight"] = (4 * C, C)
        shapes[p + "mlp.c_fc.bias"] = (4 * C,)
        shapes[p + "mlp.c_proj.weight"] = (C, 4 * C)
        shapes[p + "mlp.c_proj.bias"] = (C,)
    shapes["ln_f.weight"] = (C,)
    shapes["ln_f.bias"] = (C,)
    return shapes


def init_params(gen):
    """float32 initial weights. Biases and layernorm params are deliberately
    non-trivial (not 0 / 1) so a C++ bug that ignores them can't hide."""
    params = {}
    for name, shape in param_shapes().items():
        z = torch.randn(shape, generator=gen, dtype=torch.float32)
        if name in ("wte", "wpe"):
            # std 0.1 rather than GPT-2's 0.02 so logits are clearly non-uniform
            params[name] = 0.1 * z
        elif name.startswith("ln_f") or ".ln_" in name:
            params[name] = (1.0 + 0.1 * z) if name.endswith("weight") else 0.1 * z
        else:
            params[name] = 0.02 * z  # linear weights and biases
    return params


# -----------------------------------------------------------------------------
# the model, op by op

def layernorm(x, w, b):
    # biased variance, eps inside the sqrt: same as nn.LayerNorm / GPT-2
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + LN_EPS) * w + b


def linear(x, w, b):
    return x @ w.t() + b  # w is [out, in]


def attention(x, w_attn, b_attn, w_proj, b_proj):
    Bx, Tx, Cx = x.shape
    hs = Cx // NH
    qkv = linear(x, w_attn, b_attn)                       # [B,T,3C]
    q, k, v = qkv.split(Cx, dim=-1)                        # q first, then k, v
    # head h owns columns h*hs..(h+1)*hs  ->  [B,NH,T,hs]
    q, k, v = (t.view(Bx, Tx, NH, hs).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)    # [B,NH,T,T]
    # causal: query i may only see keys j <= i
    future = torch.triu(torch.ones(Tx, Tx, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    att = torch.softmax(scores, dim=-1)
    y = att @ v                                            # [B,NH,T,hs]
    y = y.transpose(1, 2).contiguous().view(Bx, Tx, Cx)    # heads side by side
    return linear(y, w_proj, b_proj)


def mlp(x, w_fc, b_fc, w_proj, b_proj):
    h = F.gelu(linear(x, w_fc, b_fc), approximate="tanh")
    return linear(h, w_proj, b_proj)


def forward(p, tokens):
    Tx = tokens.shape[1]
    x = p["wte"][tokens] + p["wpe"][:Tx]
    for l in range(L):
        q = lambda n: p[f"h.{l}.{n}"]
        x = x + attention(layernorm(x, q("ln_1.weight"), q("ln_1.bias")),
                          q("attn.c_attn.weight"), q("attn.c_attn.bias"),
                          q("attn.c_proj.weight"), q("attn.c_proj.bias"))
        x = x + mlp(layernorm(x, q("ln_2.weight"), q("ln_2.bias")),
                    q("mlp.c_fc.weight"), q("mlp.c_fc.bias"),
                    q("mlp.c_proj.weight"), q("mlp.c_proj.bias"))
    x = layernorm(x, p["ln_f.weight"], p["ln_f.bias"])
    return x @ p["wte"].t()  # tied lm head: [B,T,V]


# -----------------------------------------------------------------------------

def self_checks(p64, tokens):
    with torch.no_grad():
        # causality: changing the last token must leave position 0 (and all
        # positions < T-1) untouched, and must change position T-1
        a = forward(p64, tokens)
        t2 = tokens.clone()
        t2[:, -1] = (t2[:, -1] + 1) % V
        b = forward(p64, t2)
        assert torch.equal(a[:, :-1], b[:, :-1]), "causal mask leaks"
        assert not torch.equal(a[:, -1], b[:, -1])
        # tanh-GELU matches the explicit formula we expect kiln to implement
        x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
        ref = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
        assert torch.allclose(F.gelu(x, approximate="tanh"), ref, atol=1e-14)
        # hand-written layernorm matches PyTorch's
        y = torch.randn(3, C, dtype=torch.float64)
        w, bb = p64["ln_f.weight"], p64["ln_f.bias"]
        assert torch.allclose(layernorm(y, w, bb), F.layer_norm(y, (C,), w, bb, LN_EPS), atol=1e-12)


def adamw_step(p64, g64):
    """One step of torch.optim.AdamW in float64. Weight decay only on matrices
    (ndim >= 2), as in GPT-2 / llm.c; biases and layernorm params get none."""
    ps = {n: t.detach().clone().requires_grad_(True) for n, t in p64.items()}
    for n in ps:
        ps[n].grad = g64[n].clone()
    groups = [
        {"params": [t for t in ps.values() if t.dim() >= 2], "weight_decay": ADAMW["weight_decay"]},
        {"params": [t for t in ps.values() if t.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=ADAMW["lr"], betas=(ADAMW["beta1"], ADAMW["beta2"]),
                            eps=ADAMW["eps"])
    opt.step()
    out = {n: t.detach() for n, t in ps.items()}
    # cross-check against the closed form of step 1 (m_hat = g, v_hat = g^2)
    for n, t in p64.items():
        wd = ADAMW["weight_decay"] if t.dim() >= 2 else 0.0
        g = g64[n]
        ref = t * (1 - ADAMW["lr"] * wd) - ADAMW["lr"] * g / (g.abs() + ADAMW["eps"])
        assert torch.allclose(out[n], ref, rtol=0, atol=1e-15), n
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT.h5")
    out_path = sys.argv[1]

    gen = torch.Generator().manual_seed(1234)
    p32 = init_params(gen)
    tokens = torch.randint(0, V, (B, T), generator=gen, dtype=torch.int64)
    targets = torch.randint(0, V, (B, T), generator=gen, dtype=torch.int64)

    # exact float32 values, promoted to double for the gold computation
    p64 = {n: t.double().requires_grad_(True) for n, t in p32.items()}
    self_checks(p64, tokens)

    logits = forward(p64, tokens)
    loss = F.cross_entropy(logits.view(-1, V), targets.view(-1))  # mean over B*T
    loss.backward()
    g64 = {n: t.grad.detach() for n, t in p64.items()}
    p_after = adamw_step({n: t.detach() for n, t in p64.items()}, g64)

    nparams = sum(t.numel() for t in p32.values())
    print(f"params: {nparams}  loss: {loss.item():.12f}  (ln V = {math.log(V):.6f})")

    # byte-shuffle before gzip: groups exponent bytes together, which compresses
    # random-looking floats noticeably better than gzip alone
    gz = dict(compression="gzip", compression_opts=9, shuffle=True)
    with h5py.File(out_path, "w") as f:
        for k, v in dict(vocab_size=V, n_layer=L, n_head=NH, n_embd=C,
                         max_seq_len=MAXT, batch_size=B, seq_len=T).items():
            f.attrs[k] = np.int64(v)
        f.create_dataset("tokens", data=tokens.numpy().astype(np.int32))
        f.create_dataset("targets", data=targets.numpy().astype(np.int32))
        f.create_dataset("logits", data=logits.detach().numpy(), **gz)
        f.create_dataset("loss", data=np.float64(loss.item()))  # shape ()
        for n in p32:
            f.create_dataset(f"params/{n}", data=p32[n].numpy(), **gz)
            f.create_dataset(f"grads/{n}", data=g64[n].numpy(), **gz)
        adam = f.create_group("adamw")
        for k, v in ADAMW.items():
            adam.attrs[k] = np.float64(v)
        for n in p32:
            adam.create_dataset(f"params/{n}", data=p_after[n].numpy(), **gz)

    # reopen and sanity-check what actually landed on disk
    with h5py.File(out_path, "r") as f:
        l = f["loss"][()]
        assert f["loss"].shape == () and abs(l - math.log(V)) < 1.0, l
        assert f["logits"].shape == (B, T, V) and f["logits"].dtype == np.float64
        assert f["tokens"].dtype == np.int32 and f["tokens"].shape == (B, T)
        assert np.array_equal(f["tokens"][()], tokens.numpy())
        gw = f["grads/wte"][()]
        assert np.count_nonzero(np.abs(gw).sum(1)) > 0
        for grp in ("params", "grads", "adamw/params"):
            assert sorted(f[grp].keys()) == sorted(p32.keys()), grp
            for n in p32:
                d = f[grp][n][()]
                assert d.shape == p32[n].shape and np.isfinite(d).all(), (grp, n)
        assert np.isfinite(f["logits"][()]).all()
        assert np.array_equal(f["params/wte"][()], p32["wte"].numpy())
        print(f"wrote {out_path}: wte grad has {np.count_nonzero(np.abs(gw).sum(1))}/{V} non-zero rows")


if __name__ == "__main__":
    main()
