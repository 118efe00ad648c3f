"""With its CPU kernels (--kernels=auto, modgpt_torch/kernels) the torch backend keeps what
modgpt.memory's floor says and no more; the kernels (RMSNorm, the gated FFN product, the loss)
compute the gradients autograd of the reference's plain formulas computes."""
from __future__ import annotations

import pytest
import torch

from modgpt import memory
from modgpt.config import Config
from modgpt.presets import PRESETS, SIZES
from modgpt_torch.components.activations import ACTIVATIONS
from modgpt_torch.kernels import apply_kernels
from modgpt_torch.kernels.ffn import _GatedProduct
from modgpt_torch.kernels.norms import LeanRMSNorm
from modgpt_torch.model import build

B, T, V = 4, 32, 65


def cfg(preset: str, **kw) -> Config:
    return Config().replace(**{**PRESETS[preset], **SIZES["tiny"], "block_size": T, "vocab_size": V,
                               "batch_size": B, **kw})


def saved_bytes(model, idx) -> int:
    """Bytes of every distinct storage autograd keeps for the backward, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, idx)
    return sum(seen.values())


@pytest.mark.parametrize("preset,kw", [
    ("gpt2", {}), ("llama", {}), ("gpt2", {"attention_backend": "manual"}),
    ("llama", {"n_head": 4, "n_kv_head": 2, "qk_norm": True}),
    ("gpt2", {"ffn_type": "glu", "activation": "relu", "norm_position": "post"}),
    ("gpt2", {"position_encoding": "rope", "normalization": "layernorm_nobias", "bias": False}),
])
def test_saved_activations_are_the_floor(preset, kw):
    """On the CPU (float32) the eager model keeps exactly the floor's activations: everything but the
    logits' gradient, which exists only during the backward. 1% covers what the floor leaves out: the
    int64 token and target indices and the loss scalar (under 0.3% here). The flash-style CPU sdpa
    keeps the log-sum-exp; alibi (an attention bias) takes the math path on the CPU and is left out."""
    c = cfg(preset, **kw)
    torch.manual_seed(0)
    model = build(c.model)
    assert apply_kernels(model, c, "cpu")
    got = saved_bytes(model, torch.randint(0, V, (B, T)))
    e = memory.estimate(c)
    want = e.activations - e.head["logits_and_grad"] // 2
    assert got == pytest.approx(want, rel=0.01), (got, want)


def plain_rms(x, w, eps):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)


def test_rmsnorm_matches_autograd_of_the_formula():
    """The output is the formula's, bit for bit (same ops, same order). The gradients are written out:
    float32 rounding of a differently ordered sum, 2e-6 relative (a few ulps after a 64-element
    mean); the JAX backend uses the same written-out backward."""
    c = cfg("llama")
    norm = LeanRMSNorm(c.model)
    torch.manual_seed(0)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, c.model.n_embd, requires_grad=True)
    dy = torch.randn(3, 5, c.model.n_embd)
    y = norm(x)
    gx, gw = torch.autograd.grad(y, (x, norm.weight), dy)
    y0 = plain_rms(x, norm.weight, c.model.norm_eps)
    gx0, gw0 = torch.autograd.grad(y0, (x, norm.weight), dy)
    assert torch.equal(y, y0)
    for a, b in ((gx, gx0), (gw, gw0)):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6 * b.abs().max().item())


@pytest.mark.parametrize("act", ["gelu", "silu", "relu", "leaky_relu"])
def test_gated_product_gradients_are_autograds(act):
    """The recomputing gated product against act(g) * u under autograd, in float32: the same backward
    ops on the same inputs, so the gradients agree bit for bit."""
    a = ACTIVATIONS.get(act)()
    torch.manual_seed(0)
    g = torch.randn(4, 7, 24, requires_grad=True)
    u = torch.randn(4, 7, 24, requires_grad=True)
    dy = torch.randn(4, 7, 24)
    y = _GatedProduct.apply(g, u, a)
    grads = torch.autograd.grad(y, (g, u), dy)
    y0 = a(g) * u
    grads0 = torch.autograd.grad(y0, (g, u), dy)
    assert torch.equal(y, y0)
    for x, x0 in zip(grads, grads0):
        assert torch.equal(x, x0)


@pytest.mark.slow
def test_compiled_llama_matches_eager():
    """torch.compile traces the custom autograd functions (RMSNorm, gated product) without graph
    breaks and gives eager's loss and gradients. 1e-5 relative: inductor fuses and reorders float32
    arithmetic (measured 9e-7). About a minute of compilation on the CPU."""
    import torch._dynamo
    c = cfg("llama")
    torch.manual_seed(0)
    model = build(c.model)
    apply_kernels(model, c, "cpu")
    x = torch.randint(0, V, (B, T))
    _, loss = model(x, x)
    loss.backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    _, loss_c = torch.compile(model)(x, x)
    loss_c.backward()
    assert not torch._dynamo.utils.counters["graph_break"]
    torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=0)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager[n], rtol=1e-5, atol=1e-5 * eager[n].abs().max().item(), msg=n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_matches_torch_and_keeps_the_logits_only(dtype, monkeypatch):
    """The blocked_cross_entropy kernel: F.cross_entropy(logits.float())'s loss and gradient, computed
    a block of rows at a time (several blocks here), keeping for the backward only the logits in
    their own dtype, the targets and one float32 log-sum-exp per row (F.cross_entropy kept the
    float32 log-probabilities: twice the logits' bytes in bf16). Tolerances: loss 1e-6 relative
    (one float32 log-sum-exp, summed in a different order); gradient 2e-5 of its largest entry:
    exp(x - lse) against exp(log_softmax(x)) differ by a few ulps of lse (measured 5e-6 at V 50304),
    and in bf16 both are rounded once to the logits' dtype, where one rounding may differ by an ulp."""
    from modgpt_torch.kernels import loss as L
    N, V = 96, 1000
    monkeypatch.setattr(L, "BLOCK_ELEMENTS", 7 * V)  # 14 blocks, the last one short
    torch.manual_seed(0)
    x = (torch.randn(N, V) * 3).to(dtype).requires_grad_()
    t = torch.randint(0, V, (N,))
    ref = torch.nn.functional.cross_entropy(x.float(), t)
    (g_ref,) = torch.autograd.grad(ref, x)
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda s: seen.append(s) or s, lambda s: s):
        got = L.BlockedCrossEntropy()(x, t)
    (g,) = torch.autograd.grad(got, x)
    assert got.dtype == torch.float32 and abs(got.item() - ref.item()) <= 1e-6 * ref.item()
    ulp = 0.0 if dtype == torch.float32 else 2.0 ** -8  # bf16: a rounding may land one ulp apart
    err, big = (g.float() - g_ref.float()).abs(), g_ref.float().abs()
    assert g.dtype == dtype and bool((err <= 2e-5 * big.max() + ulp * big).all()), err.max()
    kept = sum(s.numel() * s.element_size() for s in seen)
    assert kept == N * V * x.element_size() + N * 8 + N * 4, kept  # logits, int64 targets, lse


def test_the_reference_keeps_more_than_the_kernels():
    """The kernels are what holds the floor: the reference llama (autograd of the plain formulas)
    keeps more for its backward than the same model with the CPU kernels swapped in."""
    c = cfg("llama")
    x = torch.randint(0, V, (B, T))
    torch.manual_seed(0)
    plain = build(c.model)
    lean = build(c.model)
    apply_kernels(lean, c, "cpu")
    assert saved_bytes(plain, x) > 1.2 * saved_bytes(lean, x)
