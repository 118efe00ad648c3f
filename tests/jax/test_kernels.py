"""The kernels (modgpt_jax/kernels, --kernels=auto) against the reference pieces they replace:
the hand-written backwards against autodiff of the plain formulas, apply_kernels' swaps.

Every check compares values and gradients of the fast path with jax.grad of the textbook math in
float32. Tolerances: the two compute the same sums in a different order (and the attention kernel
scales q before q @ k^T instead of the scores after), so they agree to a few float32 ulps of the
largest magnitude involved; 2e-5 relative (about 170 ulps) leaves room for accumulation over up
to 256 terms yet fails on any wrong term (a missing or doubled contribution is O(1) relative).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from modgpt_jax.components.activations import ACTIVATIONS
from modgpt_jax.components.dropout import AttentionDropout
from modgpt_jax.components.layers import dense
from modgpt_jax.kernels import cpu_attention as A
from modgpt_jax.kernels.backward import recomputed
from modgpt_jax.kernels.cpu_linear import CPULinear
from modgpt_jax.kernels.ffn import gated
from modgpt_jax.kernels.norms import layer_norm, rms_norm

RTOL = 2e-5


def close(a, b, rtol=RTOL, floor=1e-30):
    """|a - b| <= rtol * max(max|b|, floor) (scale-aware: gradients span orders of magnitude; floor
    is the inputs' scale where the reference can be exactly zero, e.g. dq for a single token)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    err, scale = np.abs(a - b).max(), max(np.abs(b).max(), floor)
    assert err <= rtol * scale, f"max abs err {err:.3g} > {rtol} x {scale:.3g}"


def rand(key, *shape):
    return jax.random.normal(jax.random.key(key), shape, jnp.float32)


def ref_attention(q, k, v):
    """Causal attention on (B, nh, T, hd) as the contract writes it; autodiff backward."""
    T, S, hd = q.shape[-2], k.shape[-2], q.shape[-1]
    s = (q @ jnp.swapaxes(k, -1, -2)) / math.sqrt(hd)
    s = jnp.where(jnp.tril(jnp.ones((T, S), bool)), s, -jnp.inf)
    return jax.nn.softmax(s, axis=-1) @ v


def test_query_blocks():
    assert [A._query_blocks(T) for T in (1024, 256, 128, 96, 64, 48, 40, 1)] == [4, 4, 4, 2, 2, 1, 1, 1]


@pytest.mark.parametrize("T,blocks", [(256, 4), (128, 2), (96, 2), (40, 1), (1, 1)])
def test_causal_attention_matches_autodiff(T, blocks):
    q, k, v, dy = (rand(i, 2, 3, T, 16) for i in range(4))
    y, vjp = jax.vjp(lambda *a: A.causal_attention(*a, blocks), q, k, v)
    y_ref, vjp_ref = jax.vjp(ref_attention, q, k, v)
    close(y, y_ref)
    for g, g_ref in zip(vjp(dy), vjp_ref(dy)):
        close(g, g_ref, floor=1.0)  # unit-normal inputs


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("per_head", [False, True])
def test_causal_attention_with_a_bias_matches_autodiff(keep, per_head):
    """An additive score bias (ALiBi's (nh, T, T), or one (T, T) for every head) inside the kernel:
    values and q/k/v gradients as autodiff of the plain formula, the bias without gradient."""
    q, k, v, dy = (rand(i, 2, 4, 128, 16) for i in range(4))
    pos = jnp.arange(128, dtype=jnp.float32)
    slopes = jnp.array([0.5, 0.25, 0.125, 0.0625]) if per_head else jnp.array(0.3)
    bias = (slopes[..., None, None] if per_head else slopes) * (pos[None, :] - pos[:, None])
    y, vjp = jax.vjp(lambda *a: A.causal_attention(*a, 4, None, keep, bias=bias), q, k, v)

    def ref(q, k, v):
        s = (q @ jnp.swapaxes(k, -1, -2)) / math.sqrt(16) + bias
        s = jnp.where(jnp.tril(jnp.ones((128, 128), bool)), s, -jnp.inf)
        return jax.nn.softmax(s, axis=-1) @ v
    y_ref, vjp_ref = jax.vjp(ref, q, k, v)
    close(y, y_ref)
    for g, g_ref in zip(vjp(dy), vjp_ref(dy)):
        close(g, g_ref, floor=1.0)  # unit-normal inputs


LAYERS = 4  # stacked attention layers in the memory checks


def stacked_temps(kernel: str, rate: float = 0.0, keep: bool = True, layers: int = LAYERS) -> tuple[int, int]:
    """(temporary bytes XLA plans for the forward+backward of `layers` stacked residual layers
    x + attention(x, x / 2, 2 x), one layer's float32 probability bytes) at B 2, nh 4, T 256, hd 16.
    kernel: "causal" (causal_attention, 4 query blocks: 5/8 of T x T, keeping its probabilities
    unless keep is False) or "manual" (T x T); with rate > 0 each layer drops its probabilities
    with its own key."""
    B, nh, T, hd = 2, 4, 256, 16
    if kernel == "causal":
        attend = lambda x, d: A.causal_attention(x, x * 0.5, x * 2.0, 4, d, keep)  # noqa: E731
        x0 = jnp.zeros((B, nh, T, hd))
        p_bytes = B * nh * (5 * T * T // 8) * 4
    else:
        attend, x0 = (lambda x, d: A.manual(x, x * 0.5, x * 2.0, dropout=d)), jnp.zeros((B, T, nh, hd))
        p_bytes = B * nh * T * T * 4

    def f(x, key):
        for i in range(layers):
            x = x + attend(x, AttentionDropout(rate, jax.random.fold_in(key, i)) if rate else None)
        return jnp.sum(jnp.sin(x))
    compiled = jax.jit(jax.grad(f)).lower(x0, jax.random.key(0)).compile()
    return compiled.memory_analysis().temp_size_in_bytes, p_bytes


@pytest.mark.xla_memory
@pytest.mark.parametrize("kernel,most", [("causal", 1.6), ("manual", 1.8)])
def test_attention_keeps_the_probabilities_once(kernel, most):
    """What the compiled backward of 4 stacked attention layers keeps: each layer's probabilities
    (5/8 of T x T per head for the causal kernel's query blocks, T x T for manual), q, k, v and
    little else (measured about 1.5 x those bytes for both)."""
    temps, p_bytes = stacked_temps(kernel)
    assert temps <= most * LAYERS * p_bytes, temps / (LAYERS * p_bytes)


@pytest.mark.xla_memory
def test_recomputed_probabilities_are_the_kept_ones():
    """keep=False (the model's choice): the backward makes P again from the scores and the
    forward's row max and log-sum. Same formula on the same numbers, so values and gradients are
    the keeping kernel's bit for bit, with and without dropout; and the 4 stacked layers keep no
    probabilities (measured about 0.64 x one layer's probability bytes per layer: q, k, v, the
    statistics and the backward's working blocks)."""
    q, k, v = (rand(i, 2, 4, 128, 16) for i in range(3))
    for d in (None, AttentionDropout(0.2, jax.random.key(3))):
        f = lambda keep: lambda q, k, v: jnp.sum(jnp.sin(A.causal_attention(q, k, v, 4, d, keep)))  # noqa: E731
        got = jax.jit(jax.value_and_grad(f(False), argnums=(0, 1, 2)))(q, k, v)
        want = jax.jit(jax.value_and_grad(f(True), argnums=(0, 1, 2)))(q, k, v)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    temps, p_bytes = stacked_temps("causal", keep=False)
    assert temps <= 0.75 * LAYERS * p_bytes, temps / (LAYERS * p_bytes)


def test_softmax_matches_autodiff():
    """The manual path's softmax (exp((s - max) - log(sum)), backward from P alone) against
    jax.nn.softmax with autodiff, rows with masked (-inf) entries included."""
    s, dp = rand(0, 3, 5, 40) * 4, rand(1, 3, 5, 40)
    s = jnp.where(jnp.tril(jnp.ones((5, 40), bool), 35), s, -jnp.inf)
    close(A.softmax(s), jax.nn.softmax(s, axis=-1))
    got = jax.grad(lambda s: jnp.sum(A.softmax(s) * dp))(s)
    want = jax.grad(lambda s: jnp.sum(jax.nn.softmax(s, axis=-1) * dp))(s)
    close(got, want)


def test_causal_attention_grads_are_causal():
    """dL/dk and dL/dv at position j only come from queries i >= j: a loss on the first query
    row gives zero gradient to every later key and value."""
    q, k, v = (rand(i, 1, 2, 64, 8) for i in range(3))
    gk, gv = jax.grad(lambda k, v: A.causal_attention(q, k, v, 2)[..., 0, :].sum(), argnums=(0, 1))(k, v)
    assert np.all(np.asarray(gk)[..., 1:, :] == 0) and np.all(np.asarray(gv)[..., 1:, :] == 0)
    assert np.abs(np.asarray(gv)[..., 0, :]).min() > 0


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_sdpa_cpu_path_matches_manual_with_gqa(n_kv):
    """The CPU sdpa (causal_attention) and manual equal the reference's manual, values and grads,
    (B, T, nh, hd)."""
    from modgpt_jax.components import attention as reference
    q = rand(0, 2, 64, 4, 8)
    k, v = rand(1, 2, 64, n_kv, 8), rand(2, 2, 64, n_kv, 8)
    f = lambda kern: lambda q, k, v: jnp.sum(jnp.sin(kern(q, k, v)))  # noqa: E731
    want = jax.grad(f(reference.manual), argnums=(0, 1, 2))(q, k, v)
    for kern in (A.sdpa, A.manual):
        for g, g_ref in zip(jax.grad(f(kern), argnums=(0, 1, 2))(q, k, v), want):
            close(g, g_ref)


def ref_layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(jnp.square(x - mean).mean(-1, keepdims=True) + eps) * w
    return y if b is None else y + b


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape,per_head", [((3, 5, 32), False), ((2, 4, 3, 8), True)])  # activations; qk_norm
def test_layer_norm_matches_autodiff(bias, shape, per_head):
    x, dy = rand(0, *shape) * 3 + 1, rand(1, *shape)
    w, b = rand(2, shape[-1]), (rand(3, shape[-1]) if bias else None)
    ln = lambda x, w, b, eps: layer_norm(x, w, b, eps, per_head)  # noqa: E731
    loss = lambda f: lambda x, w, b: jnp.sum(f(x, w, b, 1e-5) * dy)  # noqa: E731
    close(ln(x, w, b, 1e-5), ref_layer_norm(x, w, b, 1e-5))
    got = jax.grad(loss(ln), argnums=(0, 1, 2) if bias else (0, 1))(x, w, b)
    want = jax.grad(loss(ref_layer_norm), argnums=(0, 1, 2) if bias else (0, 1))(x, w, b)
    for g, g_ref in zip(got, want):
        close(g, g_ref)


@pytest.mark.parametrize("shape,per_head", [((3, 5, 32), False), ((2, 4, 3, 8), True)])
def test_rms_norm_matches_autodiff(shape, per_head):
    x, dy, w = rand(0, *shape) * 3 + 1, rand(1, *shape), rand(2, shape[-1])
    ref = lambda x, w, eps: x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + eps) * w  # noqa: E731
    rms = lambda x, w, eps: rms_norm(x, w, eps, per_head)  # noqa: E731
    loss = lambda f: lambda x, w: jnp.sum(f(x, w, 1e-5) * dy)  # noqa: E731
    close(rms(x, w, 1e-5), ref(x, w, 1e-5))
    for g, g_ref in zip(jax.grad(loss(rms), argnums=(0, 1))(x, w), jax.grad(loss(ref), argnums=(0, 1))(x, w)):
        close(g, g_ref)


@pytest.mark.xla_memory
@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("dtype,most", [("float32", 1.25), ("bfloat16", 2.0)])
def test_norm_backward_keeps_its_input_not_xhat(norm, dtype, most):
    """The norms keep x in its own dtype and the float32 row statistics for the backward (the
    floor's norm activations, modgpt.memory) and rebuild xhat there. What the compiled backward of 6
    stacked residual norms x + norm(x) / 2 plans, in units of one x (measured 1.0 in float32 and
    1.7 in bfloat16; keeping the float32 xhat instead, XLA keeps x as well)."""
    if norm == "layer":
        f = lambda x, w: layer_norm(x, w, w, 1e-5, False)  # noqa: E731
    else:
        f = lambda x, w: rms_norm(x, w, 1e-5, False)  # noqa: E731
    L, shape = 6, (4, 128, 256)

    def loss(x, w):
        for _ in range(L):
            x = x + f(x, w) * 0.5
        return jnp.sum(x.astype(jnp.float32) ** 2)
    x0, w = jnp.zeros(shape, dtype), jnp.ones(shape[-1:], jnp.float32)
    temps = jax.jit(jax.grad(loss)).lower(x0, w).compile().memory_analysis().temp_size_in_bytes
    ratio = temps / (L * math.prod(shape) * jnp.dtype(dtype).itemsize)
    assert ratio <= most, ratio


@pytest.mark.parametrize("n_in,n_out", [(16, 48), (48, 16)])  # both branches of the weight gradient
def test_linear_matches_autodiff(n_in, n_out):
    with nnx.use_eager_sharding(False):
        layer = dense(n_in, n_out, True, 0.5, ("embed", "mlp"), nnx.Rngs(0))
    layer.__class__ = CPULinear  # as apply_kernels swaps it
    graph, params = nnx.split(layer)
    x, dy = rand(1, 3, 7, n_in), rand(2, 3, 7, n_out)

    def fast(params, x):
        return jnp.sum(nnx.merge(graph, params)(x) * dy)

    def ref(params, x):
        return jnp.sum((x @ params["kernel"][...] + params["bias"][...]) * dy)
    close(fast(params, x), ref(params, x))
    (gp, gx), (rp, rx) = jax.grad(fast, argnums=(0, 1))(params, x), jax.grad(ref, argnums=(0, 1))(params, x)
    close(gx, rx)
    close(gp["kernel"][...], rp["kernel"][...])
    close(gp["bias"][...], rp["bias"][...])


@pytest.mark.parametrize("name", ["gelu", "silu", "relu", "leaky_relu"])
def test_recomputed_activations_equal_autodiff(name):
    """recomputed(act) and gated(act) (the FFN's, keeping only their inputs for the backward) give
    autodiff's values and gradients bit for bit: the backward evaluates autodiff's own derivative
    at x + 0 * ct, which is x. Checked op by op (eager) and compiled (jit; XLA may fuse the two
    programs differently, so there within RTOL). Inputs include exact zeros (ReLU's kink)."""
    act = ACTIVATIONS.get(name)
    x, u, dy = rand(0, 4, 8, 24) * 3, rand(1, 4, 8, 24), rand(2, 4, 8, 24)
    x = x.at[0, 0, :4].set(0.0)
    pairs = [(lambda x, u: recomputed(act)(x) * u, lambda x, u: act(x) * u),
             (gated(act), lambda g, u: act(g) * u)]
    for fast, ref in pairs:
        loss = lambda f: lambda x, u: jnp.sum(f(x, u) * dy)  # noqa: E731
        got = jax.value_and_grad(loss(fast), argnums=(0, 1))(x, u)
        want = jax.value_and_grad(loss(ref), argnums=(0, 1))(x, u)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert np.array_equal(np.asarray(a), np.asarray(b))
        got = jax.jit(jax.grad(loss(fast), argnums=(0, 1)))(x, u)
        for a, b in zip(got, want[1]):
            close(a, b)


def test_recomputed_propagates_non_finite_cotangents():
    """A non-finite cotangent still gives a non-finite gradient (the step's guard then skips it):
    tying the recomputation to ct (x + 0 * ct) turns inf into nan, never into a finite number."""
    x = jnp.ones((3,))
    _, vjp = jax.vjp(recomputed(ACTIVATIONS.get("gelu")), x)
    g = np.asarray(vjp(jnp.array([1.0, jnp.inf, jnp.nan]))[0])
    assert np.isfinite(g[0]) and not np.isfinite(g[1]) and not np.isfinite(g[2])


@pytest.mark.parametrize("bias", [False, True])
def test_linear_split_is_the_layer_in_two_blocks(bias):
    """CPULinear.split (the CPU attention's projection under RoPE): the layer's output cut at a
    column, values and gradients."""
    lin = CPULinear(32, 96, use_bias=bias, bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (3, 7, 32))
    g, p = nnx.split(lin)

    def loss(p, split):
        m = nnx.merge(g, p)
        y = jnp.concatenate(m.split(x, 64), axis=-1) if split else m(x)
        return jnp.sum(jnp.sin(y)), y
    (_, y1), g1 = jax.value_and_grad(loss, has_aux=True)(p, True)
    (_, y2), g2 = jax.value_and_grad(loss, has_aux=True)(p, False)
    np.testing.assert_allclose(np.asarray(y1), np.asarray(y2), rtol=1e-6, atol=1e-7)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):  # sums of 21 float32 products, orders
        b = np.asarray(b)  # may differ: rounding of the gradient's own scale, not of each entry
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6 * np.abs(b).max())


def test_apply_kernels_swaps_classes_in_place(tiny):
    """auto on the CPU swaps each reference piece for its kernel in place: the same module objects
    and parameters (paths, values), the kernels' classes; reference swaps nothing; a GPU's auto takes
    only cuDNN attention (the CPU kernels never run on a GPU)."""
    from modgpt_jax import kernels as K
    from modgpt_jax.components.norms import RMSNorm
    from modgpt_jax.kernels.norms import FastRMSNorm
    from modgpt_jax.model import build
    cfg = tiny(position_encoding="rope", normalization="rmsnorm", ffn_type="swiglu", activation="silu")
    model = build(cfg, 0)
    before = {p: (id(v), np.asarray(v[...])) for p, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)}
    block = model.blocks[0]
    assert K.apply_kernels(model, cfg.replace(kernels="reference"), "cpu") == () and type(block.norm1) is RMSNorm
    assert K.apply_kernels(model, cfg, "cpu") == K.AUTO["cpu"]
    assert model.blocks[0] is block and type(block.norm1) is FastRMSNorm and type(block.attn) is A.CPUAttention
    assert type(block.attn.qkv) is CPULinear and block.attn.kernel is A.sdpa
    after = {p: (id(v), np.asarray(v[...])) for p, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)}
    assert before.keys() == after.keys() and all(before[p][0] == after[p][0] for p in before)
    assert K.selected(cfg, "gpu") == ("cudnn_attention",) and K.selected(cfg, "tpu") == ()
    assert not set(K.AUTO["gpu"]) & set(K.AUTO["cpu"])
