"""Model properties on tiny CPU models: registries, every option runs, causality, sdpa == manual."""
import itertools

import pytest
import torch

from modgpt import config as C
from modgpt_torch.components import REGISTRIES
from modgpt_torch.model import ConfigurableGPT

torch.set_num_threads(1)
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=65)


def tiny(**kw) -> C.ModelConfig:
    return C.from_flat({**TINY, **kw}).model


@pytest.mark.parametrize("kind", C.COMPONENT_KINDS)
def test_registries_cover_schema(kind):
    assert set(REGISTRIES[kind].names()) == set(C.CHOICES[kind])


OPTIONS = [(kind, name) for kind in C.COMPONENT_KINDS for name in C.CHOICES[kind]]
OPTIONS += [("norm_position", "post"), ("bias", False), ("weight_tying", False), ("dropout", 0.1)]


@pytest.mark.parametrize("key,value", OPTIONS, ids=[f"{k}={v}" for k, v in OPTIONS])
def test_every_option_forward_backward(key, value):
    torch.manual_seed(0)
    m = ConfigurableGPT(tiny(**{key: value}))
    x = torch.randint(0, 65, (2, 24))
    logits, loss = m(x, x)
    assert logits.shape == (2, 24, 65) and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


def test_parameter_names_are_canonical():
    from modgpt.weights import canonical_shapes
    for ffn, tie, pos, norm in itertools.product(("standard", "swiglu"), (True, False),
                                                 ("learned_absolute", "rope"), ("layernorm", "rmsnorm")):
        cfg = tiny(ffn_type=ffn, weight_tying=tie, position_encoding=pos, normalization=norm)
        m = ConfigurableGPT(cfg)
        shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
        want = canonical_shapes(cfg)
        assert set(shapes) == set(want)
        for n, s in want.items():  # torch Linear keeps (out, in): canonical is (in, out)
            assert shapes[n] == (s[::-1] if len(s) == 2 and not n.startswith(("wte", "wpe")) else s), n


@pytest.mark.parametrize("pos", C.CHOICES["position_encoding"])
@pytest.mark.parametrize("backend", C.CHOICES["attention_backend"])
def test_causal_by_gradients(pos, backend):
    """d logits[:, t] / d embedding[:, t'] must be exactly zero for t' > t."""
    torch.manual_seed(0)
    m = ConfigurableGPT(tiny(position_encoding=pos, attention_backend=backend)).eval()
    T, t = 16, 7
    emb = m.wte(torch.randint(0, 65, (1, T))).detach().requires_grad_(True)
    x = m.pos.embed(emb, m.wpe)
    for b in m.blocks:
        x = b(x)
    x[0, t].sum().backward()
    g = emb.grad[0].abs().sum(-1)  # (T,)
    assert (g[t + 1:] == 0).all() and (g[:t + 1] > 0).all()


@pytest.mark.parametrize("pos", C.CHOICES["position_encoding"])
def test_sdpa_equals_manual(pos):
    """Same weights, fp32: only summation order differs (SDPA's math kernel vs explicit matmuls),
    so logits agree to float32 rounding of O(1) values (atol 2e-6)."""
    torch.manual_seed(0)
    a = ConfigurableGPT(tiny(position_encoding=pos, attention_backend="sdpa")).eval()
    b = ConfigurableGPT(tiny(position_encoding=pos, attention_backend="manual")).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 65, (2, 64))
    la, lb = a(x)[0], b(x)[0]
    torch.testing.assert_close(la, lb, atol=2e-6, rtol=1e-5)


def test_init_statistics():
    torch.manual_seed(0)
    cfg = C.from_flat({**TINY, "n_embd": 128, "n_layer": 4, "n_head": 4, "bias": True}).model
    m = ConfigurableGPT(cfg)
    std = cfg.init_std
    assert abs(m.wte.weight.std().item() - std) < 0.002
    assert abs(m.blocks[0].attn.proj.weight.std().item() - std / (2 * 4) ** 0.5) < 0.001
    assert (m.blocks[0].attn.qkv.bias == 0).all() and (m.blocks[0].norm1.weight == 1).all()


def test_generate_shapes_and_greedy_determinism():
    torch.manual_seed(0)
    m = ConfigurableGPT(tiny()).eval()
    idx = torch.zeros((2, 3), dtype=torch.long)
    out = m.generate(idx, 70, temperature=1.0, top_k=5)  # runs past block_size: context is cropped
    assert out.shape == (2, 73) and (out[:, :3] == 0).all() and out.max() < 65
    g1, g2 = m.generate(idx, 5, temperature=0), m.generate(idx, 5, temperature=0)
    assert torch.equal(g1, g2)
