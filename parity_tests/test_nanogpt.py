"""nanoGPT checkpoints (--init_from=nanogpt:PATH) in both backends. The conversion (modgpt.nanogpt,
reading torch.save's format without torch through modgpt.torchfile) gives nanoGPT's own logits in
each backend, and each train command starts from exactly those weights.

The reference below is nanoGPT's model written independently: its module names (transformer.wte,
h.{i}.attn.c_attn, mlp.c_fc, ...), exact GELU, LayerNorm eps 1e-5, a head tied to wte."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from modgpt import config as C
from modgpt import nanogpt
from modgpt import weights as W
from parity_tests import compare as X

V, T, D, NH, L = 65, 64, 32, 2, 2
ARCH = "2L-2H-32D-Learned-LN-GELU-PreNorm-Bias-Tied"


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


def write_checkpoint(path, bias: bool = True) -> NanoGPT:
    """A ckpt.pt as nanoGPT's train.py writes it (a compiled model's `_orig_mod.` keys, the optimizer
    after a step, iter_num, best_val_loss, config); returns the model in eval mode."""
    torch.manual_seed(0)
    ref = NanoGPT(V, T, D, NH, L, bias)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3)
    ref(torch.randint(0, V, (2, T))).sum().backward()
    opt.step()
    args = dict(n_layer=L, n_head=NH, n_embd=D, block_size=T, bias=bias, vocab_size=V, dropout=0.0)
    torch.save({"model": {"_orig_mod." + k: v for k, v in ref.state_dict().items()}, "optimizer": opt.state_dict(),
                "model_args": args, "iter_num": 1, "best_val_loss": torch.tensor(4.2), "config": {"bias": bias}}, path)
    return ref.eval()


@pytest.mark.parametrize("bias", [True, False])
def test_both_backends_compute_nanogpts_logits(tmp_path, bias):
    """fp32 logits of the converted weights against nanoGPT's model, TOL["logits"] in both backends."""
    import jax.numpy as jnp

    from modgpt_jax.model import build
    from modgpt_jax.weights import load_canonical as jax_load
    from modgpt_torch.model import GPT
    from modgpt_torch.weights import load_canonical as torch_load
    ref = write_checkpoint(tmp_path / "ckpt.pt", bias)
    margs, state = nanogpt.read_checkpoint(str(tmp_path / "ckpt.pt"))
    cfg = C.from_flat(nanogpt.model_config(margs))
    assert cfg.model.normalization == ("layernorm" if bias else "layernorm_nobias")
    tensors = nanogpt.to_canonical(state, cfg.model)
    x = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(x).numpy()
        tm = GPT(cfg.model).eval()
        torch_load(tm, tensors)
        got_torch = tm(x)[0].numpy()
    jm = build(cfg.model, seed=3)
    jax_load(jm, tensors)
    got_jax = np.asarray(jm(jnp.asarray(x.numpy(), dtype=jnp.int32))[0])
    rows = [X.row(f"nanogpt-bias={bias}", f"logits.{b}", got, want, X.TOL["logits"])
            for b, got in (("torch", got_torch), ("jax", got_jax))]
    assert all(r.passed for r in rows), X.format_table(rows)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_train_command_starts_from_the_checkpoint(run_cli, data_dir, tmp_path, backend):
    """`train --init_from=nanogpt:ckpt.pt --max_iters=0` then export: the run has nanoGPT's
    architecture and its exported weights are the converted ones, bit for bit."""
    write_checkpoint(tmp_path / "ckpt.pt")
    out, f = tmp_path / "run", tmp_path / "w.safetensors"
    r = run_cli(f"modgpt_{backend}.train", f"--init_from=nanogpt:{tmp_path / 'ckpt.pt'}", "--max_iters=0",
                "--eval_iters=1", "--batch_size=2", "--progress=False", f"--data_dir={data_dir}", f"--out_dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"Architecture Name:     {ARCH}" in r.stdout
    r = run_cli(f"modgpt_{backend}.export", f"--out_dir={out}", "--to", str(f))
    assert r.returncode == 0, r.stderr[-2000:]
    got, cfg = W.load(str(f))
    margs, state = nanogpt.read_checkpoint(str(tmp_path / "ckpt.pt"))
    want = nanogpt.to_canonical(state, C.from_flat(nanogpt.model_config(margs)).model)
    assert C.arch_name(cfg.model) == ARCH and sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
