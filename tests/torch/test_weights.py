"""Canonical format round trips and nanoGPT checkpoint import."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from modgpt import config as C
from modgpt import weights as W
from modgpt_torch.model import ConfigurableGPT
from modgpt_torch.weights import (load_canonical, nanogpt_model_config, nanogpt_to_canonical,
                                  to_canonical)

torch.set_num_threads(1)
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=65)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_canonical_round_trip_bit_exact(tmp_path, preset):
    from modgpt.presets import PRESETS
    cfg = C.from_flat({**PRESETS[preset], **TINY})
    torch.manual_seed(0)
    a = ConfigurableGPT(cfg.model)
    t = to_canonical(a)
    assert list(t) == list(W.canonical_shapes(cfg.model))
    assert all(v.dtype == np.float32 for v in t.values())
    W.save(str(tmp_path / "w.safetensors"), t, cfg)
    t2, cfg2 = W.load(str(tmp_path / "w.safetensors"))
    assert cfg2 == cfg
    torch.manual_seed(1)
    b = ConfigurableGPT(cfg2.model)
    load_canonical(b, t2)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n
    x = torch.randint(0, 65, (2, 16))
    assert torch.equal(a(x)[0], b(x)[0])


def test_load_canonical_rejects_bad_shapes():
    cfg = C.from_flat(TINY).model
    t = to_canonical(ConfigurableGPT(cfg))
    t["blocks.0.attn.qkv.weight"] = t["blocks.0.attn.qkv.weight"].T
    with pytest.raises(ValueError, match="blocks.0.attn.qkv.weight"):
        load_canonical(ConfigurableGPT(cfg), t)


class NanoBlock(nn.Module):
    """nanoGPT's Block, written independently: ln_1/attn.c_attn/c_proj, ln_2/mlp.c_fc/c_proj."""

    def __init__(self, D, nh, bias):
        super().__init__()
        self.nh = nh
        self.ln_1 = nn.LayerNorm(D, bias=bias)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(D, 3 * D, bias=bias)
        self.attn.c_proj = nn.Linear(D, D, bias=bias)
        self.ln_2 = nn.LayerNorm(D, bias=bias)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(D, 4 * D, bias=bias)
        self.mlp.c_proj = nn.Linear(4 * D, D, bias=bias)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(D, dim=2)
        q, k, v = (t.view(B, T, self.nh, D // self.nh).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D // self.nh)
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        x = x + self.attn.c_proj((att @ v).transpose(1, 2).reshape(B, T, D))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, V, T, D, nh, L, bias):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(V, D), wpe=nn.Embedding(T, D),
            h=nn.ModuleList([NanoBlock(D, nh, bias) for _ in range(L)]), ln_f=nn.LayerNorm(D, bias=bias)))
        self.lm_head = nn.Linear(D, V, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied
        for p in self.parameters():  # random everything (incl. norms) so the mapping is exercised
            nn.init.normal_(p, 0.0, 0.2)

    def forward(self, idx):
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.shape[1]))
        for b in self.transformer.h:
            x = b(x)
        return self.lm_head(self.transformer.ln_f(x))


@pytest.mark.parametrize("bias", [True, False])
def test_nanogpt_checkpoint_import(tmp_path, bias):
    torch.manual_seed(0)
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=65, bias=bias, dropout=0.0)
    ref = NanoGPT(65, 64, 32, 2, 2, bias).eval()
    # nanoGPT saves the compiled model's state dict: keys carry `_orig_mod.`
    sd = {"_orig_mod." + k: v for k, v in ref.state_dict().items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"model_args": args, "model": sd, "iter_num": 0}, path)

    from modgpt_torch.weights import read_nanogpt
    margs, state = read_nanogpt(str(path))
    cfg = C.from_flat(nanogpt_model_config(margs))
    m = ConfigurableGPT(cfg.model).eval()
    load_canonical(m, nanogpt_to_canonical(state, cfg.model))
    x = torch.randint(0, 65, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], ref(x), atol=1e-5, rtol=1e-5)
