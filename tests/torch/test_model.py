"""Model properties on tiny CPU models: registries, every option runs, causality, sdpa == manual; the
reference model, and with the CPU kernels swapped in (`model_of(..., kernels="auto")`) where a
property must hold for both."""
import itertools

import pytest
import torch

from modgpt import config as C
from modgpt_torch.components import REGISTRIES
from modgpt_torch.model import GPT

torch.set_num_threads(1)
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=65)


def tiny(**kw) -> C.ModelConfig:
    return C.from_flat({**TINY, **kw}).model


def model_of(m: C.ModelConfig, kernels: str = "reference") -> GPT:
    """GPT(m), with --kernels applied as a CPU run applies them."""
    from modgpt_torch.kernels import apply_kernels
    model = GPT(m)
    apply_kernels(model, C.Config(model=m).replace(kernels=kernels), "cpu")
    return model


@pytest.mark.parametrize("kind", C.COMPONENT_KINDS)
def test_registries_cover_schema(kind):
    assert set(REGISTRIES[kind].names()) == set(C.CHOICES[kind])


OPTIONS = [(kind, name) for kind in C.COMPONENT_KINDS for name in C.CHOICES[kind]]
OPTIONS += [("norm_position", "post"), ("bias", False), ("weight_tying", False), ("dropout", 0.1)]
OPTIONS += [("n_kv_head", v) for v in C.OPTION_VALUES["n_kv_head"]] + [("qk_norm", True)]


@pytest.mark.parametrize("kernels", ["reference", "auto"])
@pytest.mark.parametrize("key,value", OPTIONS, ids=[f"{k}={v}" for k, v in OPTIONS])
def test_every_option_forward_backward(key, value, kernels):
    torch.manual_seed(0)
    m = model_of(tiny(**{key: value}), kernels)
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
        m = GPT(cfg)
        shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
        want = canonical_shapes(cfg)
        assert set(shapes) == set(want)
        for n, s in want.items():  # torch Linear keeps (out, in): canonical is (in, out)
            assert shapes[n] == (s[::-1] if len(s) == 2 and not n.startswith(("wte", "wpe")) else s), n


@pytest.mark.parametrize("kernels", ["reference", "auto"])
@pytest.mark.parametrize("pos", C.CHOICES["position_encoding"])
@pytest.mark.parametrize("backend", C.CHOICES["attention_backend"])
def test_causal_by_gradients(pos, backend, kernels):
    """d logits[:, t] / d embedding[:, t'] must be exactly zero for t' > t."""
    torch.manual_seed(0)
    m = model_of(tiny(position_encoding=pos, attention_backend=backend), kernels).eval()
    T, t = 16, 7
    emb = m.wte(torch.randint(0, 65, (1, T))).detach().requires_grad_(True)
    pos_T = torch.arange(T)
    x = m.pos.embed(emb, m.wpe, pos_T)
    for b in m.blocks:
        x = b(x, pos_T)
    x[0, t].sum().backward()
    g = emb.grad[0].abs().sum(-1)  # (T,)
    assert (g[t + 1:] == 0).all() and (g[:t + 1] > 0).all()


@pytest.mark.parametrize("pos", C.CHOICES["position_encoding"])
def test_sdpa_equals_manual(pos):
    """Same weights, fp32: only summation order differs (SDPA's math kernel vs explicit matmuls),
    so logits agree to float32 rounding of O(1) values (atol 2e-6)."""
    torch.manual_seed(0)
    a = GPT(tiny(position_encoding=pos, attention_backend="sdpa")).eval()
    b = GPT(tiny(position_encoding=pos, attention_backend="manual")).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 65, (2, 64))
    la, lb = a(x)[0], b(x)[0]
    torch.testing.assert_close(la, lb, atol=2e-6, rtol=1e-5)


def test_init_statistics():
    torch.manual_seed(0)
    cfg = C.from_flat({**TINY, "n_embd": 128, "n_layer": 4, "n_head": 4, "bias": True}).model
    m = GPT(cfg)
    std = cfg.init_std
    assert abs(m.wte.weight.std().item() - std) < 0.002
    assert abs(m.blocks[0].attn.proj.weight.std().item() - std / (2 * 4) ** 0.5) < 0.001
    assert (m.blocks[0].attn.qkv.bias == 0).all() and (m.blocks[0].norm1.weight == 1).all()


def test_generate_shapes_and_greedy_determinism():
    torch.manual_seed(0)
    m = GPT(tiny()).eval()
    idx = torch.zeros((2, 3), dtype=torch.long)
    out = m.generate(idx, 70, temperature=1.0, top_k=5)  # runs past block_size: context is cropped
    assert out.shape == (2, 73) and (out[:, :3] == 0).all() and out.max() < 65
    g1, g2 = m.generate(idx, 5, temperature=0), m.generate(idx, 5, temperature=0)
    assert torch.equal(g1, g2)


# ---- grouped-query attention, qk_norm, ALiBi, gated FFNs -------------------------------------
def _repeat_kv_heads(t, cfg):
    """Canonical GQA tensors -> the equivalent multi-head ones: each kv head's columns repeated for
    its n_head/n_kv_head query heads (query head h reads kv head h // group)."""
    import numpy as np
    out = dict(t)
    nh, kv, hd, G = cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.n_head // cfg.kv_heads
    for name in [n for n in t if n.endswith(("attn.qkv.weight", "attn.qkv.bias"))]:
        a = t[name]
        q, k, v = np.split(a, [nh * hd, (nh + kv) * hd], axis=-1)
        rep = [np.repeat(x.reshape(x.shape[:-1] + (kv, hd)), G, axis=-2).reshape(x.shape[:-1] + (nh * hd,))
               for x in (k, v)]
        out[name] = np.concatenate([q] + rep, axis=-1)
    return out


@pytest.mark.parametrize("n_kv_head", [1, 2])
@pytest.mark.parametrize("backend", C.CHOICES["attention_backend"])
@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_gqa_equals_mha_with_repeated_kv_heads(n_kv_head, backend, pos):
    """Same function, different storage: fp32, only summation order differs (atol 2e-6 on O(1) logits)."""
    from modgpt_torch.weights import load_canonical, to_canonical
    torch.manual_seed(0)
    kw = dict(n_head=4, position_encoding=pos, attention_backend=backend, qk_norm=True)
    gqa = GPT(tiny(n_kv_head=n_kv_head, **kw)).eval()
    mha = GPT(tiny(**kw)).eval()
    assert gqa.blocks[0].attn.qkv.weight.shape == ((4 + 2 * n_kv_head) * 8, 32)
    load_canonical(mha, _repeat_kv_heads(to_canonical(gqa), gqa.cfg))
    x = torch.randint(0, 65, (2, 64))
    torch.testing.assert_close(gqa(x)[0], mha(x)[0], atol=2e-6, rtol=1e-5)


def test_qk_norm_makes_attention_scale_invariant_in_q_and_k():
    """With qk_norm (rmsnorm, eps ~ 0, no bias) scaling the q and k columns of qkv cannot change the
    output; without it, it must (the scores scale by 25). atol 1e-5: eps 1e-12 vs rms ~0.1."""
    torch.manual_seed(0)
    outs = {}
    for qkn in (True, False):
        m = GPT(tiny(qk_norm=qkn, normalization="rmsnorm", norm_eps=1e-12, bias=False)).eval()
        x = torch.randint(0, 65, (2, 32))
        before = m(x)[0]
        with torch.no_grad():
            for b in m.blocks:
                b.attn.qkv.weight[:64] *= 5.0  # rows = output columns: q (32) and k (32)
        outs[qkn] = (before - m(x)[0]).abs().max().item()
    assert outs[True] < 1e-5 and outs[False] > 1e-3, outs
    m = GPT(tiny(qk_norm=True, normalization="layernorm"))
    assert m.blocks[0].attn.q_norm.weight.shape == (16,) and (m.blocks[0].attn.k_norm.weight == 1).all()
    assert (m.blocks[0].attn.q_norm.bias == 0).all()


def test_new_parameter_names_are_canonical():
    from modgpt.weights import canonical_shapes
    for cfg in (tiny(qk_norm=True, normalization="layernorm", n_head=4, n_kv_head=2),
                tiny(qk_norm=True, normalization="rmsnorm", n_kv_head=1, position_encoding="alibi")):
        shapes = {n: tuple(p.shape) for n, p in GPT(cfg).named_parameters()}
        want = canonical_shapes(cfg)
        assert set(shapes) == set(want)
        assert want["blocks.1.attn.qkv.weight"] == (32, cfg.qkv_size) == shapes["blocks.1.attn.qkv.weight"][::-1]
        assert want["blocks.1.attn.k_norm.weight"] == (cfg.head_dim,) == shapes["blocks.1.attn.k_norm.weight"]


@pytest.mark.parametrize("n_head, slopes", [
    (8, [2.0 ** -i for i in range(1, 9)]),  # 2^(-8i/8)
    (4, [2.0 ** -(2 * i) for i in range(1, 5)]),  # 2^(-8i/4)
    # not a power of 2: the 4 slopes of n=4, then slopes 1 and 3 of n=8 (2^-1, 2^-3)
    (6, [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]),
])
def test_alibi_bias_values(n_head, slopes):
    from modgpt_torch.components.positions import ALiBi
    b = ALiBi(tiny(n_head=n_head, n_embd=8 * n_head, position_encoding="alibi")).bias(torch.arange(5))
    assert b.shape == (n_head, 5, 5) and b.dtype == torch.float32
    for h, s in enumerate(slopes):
        for i in range(5):
            for j in range(i + 1):  # the causal part: -slope * distance (exact in float32 here)
                assert b[h, i, j].item() == -s * (i - j), (h, i, j)


@pytest.mark.parametrize("act", C.CHOICES["activation"])
def test_glu_gates_with_every_activation(act):
    """ffn_type=glu: proj(act(gate(x)) * fc(x)) with the registered activation (GeGLU, ReGLU, ...)."""
    import torch.nn.functional as F
    ref = {"gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu, "relu": F.relu,
           "leaky_relu": lambda t: F.leaky_relu(t, C.LEAKY_RELU_SLOPE)}[act]
    torch.manual_seed(0)
    ffn = GPT(tiny(ffn_type="glu", activation=act)).blocks[0].ffn
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(ffn(x), ffn.proj(ref(ffn.gate(x)) * ffn.fc(x)), atol=0, rtol=0)


def test_describe_names_the_kernel_torch_picks():
    """The start-up report's `attention:` line is torch's own choice for the training call (on this
    CPU: flash for plain causal and grouped-query; math, which keeps the probabilities, under
    attention dropout or an ALiBi bias), and the manual backend says what it keeps."""
    from modgpt_torch.kernels import describe_attention as describe
    cpu = torch.device("cpu")
    assert describe(tiny(), torch.float32, cpu) == "sdpa (flash attention)"
    assert describe(tiny(n_kv_head=1), torch.bfloat16, cpu) == "sdpa (flash attention)"
    assert describe(tiny(dropout=0.1), torch.float32, cpu) == "sdpa (math: T x S probabilities)"
    assert describe(tiny(position_encoding="alibi"), torch.float32, cpu) == "sdpa (math: T x S probabilities)"
    assert describe(tiny(attention_backend="manual"), torch.float32, cpu).startswith("manual (")


def test_apply_kernels_swaps_classes_in_place():
    """auto on the CPU swaps each reference piece for its kernel in place (the same module objects and
    parameters, the kernels' classes); reference swaps nothing; a GPU's auto is the reference until
    kernels are measured there."""
    from modgpt_torch import kernels as K
    from modgpt_torch.components.norms import RMSNorm
    from modgpt_torch.kernels.norms import LeanRMSNorm
    cfg = C.Config(model=tiny(position_encoding="rope", normalization="rmsnorm", ffn_type="swiglu"))
    torch.manual_seed(0)
    model = GPT(cfg.model)
    before = {n: p for n, p in model.named_parameters()}
    block = model.blocks[0]
    assert K.apply_kernels(model, cfg.replace(kernels="reference"), "cpu") == () and type(block.norm1) is RMSNorm
    assert K.apply_kernels(model, cfg, "cpu") == K.AUTO["cpu"] and model.blocks[0] is block
    assert type(block.norm1) is LeanRMSNorm and type(model.pos).__name__ == "TabledRoPE"
    assert type(block.attn).__name__ == "VApartAttention" and type(model.loss).__name__ == "BlockedCrossEntropy"
    assert {n: p for n, p in model.named_parameters()} == before
    assert K.selected(cfg, "cuda") == ()
