"""Canonical format round trips (nanoGPT checkpoint import: parity_tests/test_nanogpt.py)."""

import numpy as np
import pytest
import torch

from modgpt import config as C
from modgpt import weights as W
from modgpt_torch.model import GPT
from modgpt_torch.weights import load_canonical, to_canonical

torch.set_num_threads(1)
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=65)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_canonical_round_trip_bit_exact(tmp_path, preset):
    from modgpt.presets import PRESETS
    cfg = C.from_flat({**PRESETS[preset], **TINY})
    torch.manual_seed(0)
    a = GPT(cfg.model)
    t = to_canonical(a)
    assert list(t) == list(W.canonical_shapes(cfg.model))
    assert all(v.dtype == np.float32 for v in t.values())
    W.save(str(tmp_path / "w.safetensors"), t, cfg)
    t2, cfg2 = W.load(str(tmp_path / "w.safetensors"))
    assert cfg2 == cfg
    torch.manual_seed(1)
    b = GPT(cfg2.model)
    load_canonical(b, t2)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n
    x = torch.randint(0, 65, (2, 16))
    assert torch.equal(a(x)[0], b(x)[0])


def test_load_canonical_rejects_bad_shapes():
    cfg = C.from_flat(TINY).model
    t = to_canonical(GPT(cfg))
    t["blocks.0.attn.qkv.weight"] = t["blocks.0.attn.qkv.weight"].T
    with pytest.raises(ValueError, match="blocks.0.attn.qkv.weight"):
        load_canonical(GPT(cfg), t)
