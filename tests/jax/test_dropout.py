"""Dropout masks drawn by the fused_dropout kernel (modgpt_jax/kernels/dropout.py): jax.random.
bernoulli's bits (the reference's), without XLA:CPU's rolled threefry loop, and the causal block
kernel's attention dropout.

The masks must be bernoulli's bit for bit (the kernels and the reference draw the same; the
sharded tests in test_sharding.py train with dropout on four meshes). The kernel's attention
dropout must equal the reference's manual path: the same mask, so the same numbers up to the
kernel's summation order (RTOL of test_kernels.py, which gives its reasoning).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from modgpt_jax.components import attention as reference
from modgpt_jax.components.dropout import AttentionDropout
from modgpt_jax.kernels import cpu_attention as A
from modgpt_jax.kernels.dropout import FusedDropout as Dropout
from modgpt_jax.kernels.dropout import drop, fusable, keep_mask

from .test_kernels import LAYERS, close, rand, stacked_temps


@pytest.mark.parametrize("shape", [(7,), (3, 5, 11), (2, 3, 64, 64)])
@pytest.mark.parametrize("keep", [0.9, 0.5, 1e-3])
def test_keep_mask_is_jax_bernoulli(shape, keep):
    for seed in (0, 1, 2**31 + 5):
        key = jax.random.key(seed)
        want = np.asarray(jax.random.bernoulli(key, keep, shape))
        assert np.array_equal(np.asarray(keep_mask(key, keep, shape)), want)
        jitted = jax.jit(keep_mask, static_argnums=(1, 2))
        assert np.array_equal(np.asarray(jitted(key, keep, shape)), want)
    if want.size > 10_000:  # a real draw, neither all kept nor all dropped
        assert 0 < want.sum() < want.size


def test_windows_are_slices_of_the_full_mask():
    key, full = jax.random.key(3), (2, 3, 64, 64)
    whole = np.asarray(keep_mask(key, 0.7, full))
    for start, shape in [((0, 0, 16, 0), (2, 3, 16, 32)), ((1, 2, 48, 5), (1, 1, 16, 59)), ((0,) * 4, full)]:
        window = np.asarray(keep_mask(key, 0.7, shape, start, full))
        assert np.array_equal(window, whole[tuple(slice(o, o + n) for o, n in zip(start, shape))])


def test_other_prngs_fall_back_to_bernoulli():
    """Keys keep_mask cannot reproduce (here the rbg generator) get jax.random.bernoulli itself;
    a window of such a mask cannot be drawn alone, and asking for one is an error."""
    key = jax.random.key(0, impl="rbg")
    assert not fusable(key, (4, 8))
    assert np.array_equal(np.asarray(keep_mask(key, 0.5, (4, 8))),
                          np.asarray(jax.random.bernoulli(key, 0.5, (4, 8))))
    with pytest.raises(ValueError, match="window"):
        keep_mask(key, 0.5, (2, 8), (0, 0), (4, 8))
    assert not fusable(jax.random.key(0), (2**16, 2**16))  # counters past 32 bits
    assert not fusable(jax.random.key(0), (4, 8), jnp.float32(0.5))  # an array keep: bernoulli's dtype rules


def test_x64_falls_back_to_bernoulli():
    """Under jax_enable_x64 bernoulli draws float64 uniforms from 64-bit words: not keep_mask's."""
    key = jax.random.key(1)
    with jax.enable_x64(True):
        assert not fusable(key, (4, 8))
        assert np.array_equal(np.asarray(keep_mask(key, 0.5, (4, 8))),
                              np.asarray(jax.random.bernoulli(key, 0.5, (4, 8))))
    assert fusable(key, (4, 8))


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_module_equals_nnx(rate):
    x = rand(0, 4, 16, 8) + 2.0
    key = jax.random.key(7)
    got = Dropout(rate)(x, deterministic=False, rngs=key)
    want = nnx.Dropout(rate)(x, deterministic=False, rngs=key)
    assert np.array_equal(np.asarray(got), np.asarray(want))
    dropped = np.asarray(got) == 0
    assert 0 < dropped.mean() < 1
    assert np.array_equal(np.asarray(Dropout(rate)(x, deterministic=True, rngs=key)), np.asarray(x))
    assert np.array_equal(np.asarray(Dropout(1.0)(x, deterministic=False, rngs=key)), np.zeros(x.shape))
    with pytest.raises(ValueError, match="deterministic"):  # nnx's error when neither says
        Dropout(rate, deterministic=None)(x, rngs=key)
    g = jax.grad(lambda x: drop(x, key, 1.0).sum())(x)  # rate 1: zero gradient, not 0/0
    assert np.array_equal(np.asarray(g), np.zeros(x.shape))


def causal_inputs(n_kv=4):
    return rand(0, 2, 64, 4, 8), rand(1, 2, 64, n_kv, 8), rand(2, 2, 64, n_kv, 8)


@pytest.mark.parametrize("n_kv", [4, 2])
def test_kernel_dropout_equals_manual(n_kv):
    """The CPU sdpa with attention dropout runs the causal kernel, which draws each query block's
    window of the mask; values and gradients equal the reference's manual path (jax.random.bernoulli
    on the whole T x T)."""
    q, k, v = causal_inputs(n_kv)
    d = AttentionDropout(0.3, jax.random.key(11))
    f = lambda kern, d: lambda q, k, v: jnp.sum(jnp.sin(kern(q, k, v, dropout=d)))  # noqa: E731
    close(A.sdpa(q, k, v, dropout=d), reference.manual(q, k, v, dropout=d))
    for g, g_ref in zip(jax.grad(f(A.sdpa, d), argnums=(0, 1, 2))(q, k, v),
                        jax.grad(f(reference.manual, d), argnums=(0, 1, 2))(q, k, v)):
        close(g, g_ref)
    # and the dropout is real: without it the output differs by O(1)
    assert np.abs(np.asarray(A.sdpa(q, k, v, dropout=d) - A.sdpa(q, k, v))).max() > 0.1


def test_kernel_dropout_uses_the_mask_it_draws():
    """dV is drop(P)^T dY: with value gradients taken through a single query row, a key position
    the mask drops for that row (and every head) gets exactly zero gradient, a kept one does not."""
    q, k, v = (rand(i, 1, 64, 1, 8) for i in range(3))
    d = AttentionDropout(0.5, jax.random.key(2))
    gv = jax.grad(lambda v: A.sdpa(q, k, v, dropout=d)[0, 63].sum())(v)
    kept = np.asarray(keep_mask(d.key, 0.5, (1, 1, 64, 64)))[0, 0, 63]
    assert 0 < kept.sum() < 64
    assert np.all(np.asarray(gv)[0, ~kept] == 0) and np.all(np.asarray(gv)[0, kept] != 0)


@pytest.mark.xla_memory
@pytest.mark.parametrize("keep", [False, True])
def test_kernel_dropout_keeps_nothing_more_per_layer(keep):
    """With attention dropout each layer of the kernel keeps what it keeps without (its row
    statistics, or with keep=True its probability blocks), not the masks nor the dropped blocks: the
    backward draws the masks again and drops P anew. Per layer = (plan of 8 stacked layers - plan of
    4) / 4, so the backward's transients cancel (measured, in probability bytes per layer: 0.11 with
    keep False and 1.2 with keep True, with and without dropout)."""
    def per_layer(rate):
        t4, p_bytes = stacked_temps("causal", rate, keep, layers=4)
        t8, _ = stacked_temps("causal", rate, keep, layers=8)
        return (t8 - t4) / (4 * p_bytes)
    plain, dropped = per_layer(0.0), per_layer(0.2)
    assert dropped <= plain + 0.05, (dropped, plain)
    assert dropped <= (1.3 if keep else 0.2), dropped


def test_manual_dropout_matches_autodiff():
    """The manual path's drop(P) @ V (a backward that drops P again instead of keeping drop(P))
    against autodiff of the plain formula with the same mask, values and gradients."""
    q, k, v = causal_inputs(2)
    d = AttentionDropout(0.3, jax.random.key(8))
    B, T, nh, hd = q.shape

    def plain(q, k, v):
        kk, vv = (jnp.repeat(t, 2, axis=2) for t in (k, v))
        s = jnp.einsum("btnh,bsnh->bnts", q, kk) / np.sqrt(hd)
        s = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, -jnp.inf)
        keep = keep_mask(d.key, 0.7, (B, nh, T, T))
        p = jnp.where(keep, jax.nn.softmax(s, axis=-1) / 0.7, 0.0)
        return jnp.einsum("bnts,bsnh->btnh", p, vv)
    close(A.manual(q, k, v, dropout=d), plain(q, k, v))
    loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))  # noqa: E731
    for g, g_ref in zip(jax.grad(loss(lambda q, k, v: A.manual(q, k, v, dropout=d)), argnums=(0, 1, 2))(q, k, v),
                        jax.grad(loss(plain), argnums=(0, 1, 2))(q, k, v)):
        close(g, g_ref)


@pytest.mark.xla_memory
def test_manual_dropout_keeps_no_dropped_probabilities():
    """4 stacked manual attention layers with dropout keep what they keep without plus transients
    (measured about 1.95 x one float32 T x T per layer, 1.48 without dropout): not drop(P) next to P."""
    temps, p_bytes = stacked_temps("manual", 0.2)
    assert temps <= 2.2 * LAYERS * p_bytes, temps / (LAYERS * p_bytes)


def test_drop_scales_like_nnx():
    x = jnp.ones((1000,))
    y = np.asarray(drop(x, jax.random.key(0), 0.2))
    assert set(np.unique(y)) == {0.0, np.float32(1.0) / np.float32(0.8)}


@pytest.mark.parametrize("backend", ["sdpa", "manual"])
def test_model_kernels_equal_reference_with_dropout(tiny, tokens, backend):
    """A whole model in train mode: with the CPU kernels and as the reference it draws the same
    dropout masks from the same per-layer keys, so logits agree (kernel summation order: test_model's
    test_sdpa_equals_manual tolerance), and differ from eval mode."""
    from modgpt_jax.kernels import apply_kernels
    from modgpt_jax.model import build
    cfg = tiny(dropout=0.2, attention_backend=backend)
    x, key = jnp.asarray(tokens), jax.random.key(4)
    fast = build(cfg, 0)
    assert apply_kernels(fast, cfg, "cpu")
    a, b = fast(x, key=key)[0], build(cfg, 0)(x, key=key)[0]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6, rtol=1e-5)
    assert np.abs(np.asarray(a) - np.asarray(fast(x)[0])).max() > 1e-2
