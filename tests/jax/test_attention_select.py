"""What sdpa runs with each kernel set: the cudnn_attention kernel (a GPU's --kernels=auto) names
cuDNN flash attention where cuDNN takes the call and runs the reference (XLA's attention) where it
does not; the CPU's causal block kernel on a CPU.

jax.nn.dot_product_attention's default (implementation=None, the reference) is XLA's attention, which
builds the T x S scores, so the kernel must name cuDNN and must fall back when cuDNN refuses a shape.
CI has no GPU: the kernel is driven here by patching its probe and jax.nn.dot_product_attention (a
spy that records the implementation asked for and computes with XLA's); the probe itself
(check_kernel) runs for real on the CPU with kernels that work, fail or raise.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modgpt_jax.components import attention as reference
from modgpt_jax.components.dropout import AttentionDropout
from modgpt_jax.kernels import cudnn as A


def xla(q, k, v, b):
    return jax.nn.dot_product_attention(q, k, v, bias=b, is_causal=True, implementation="xla")


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])  # XLA:CPU has no float16 attention
@pytest.mark.parametrize("n_kv,bias", [(4, False), (2, False), (4, True)])
def test_check_kernel_accepts_a_correct_kernel(dtype, n_kv, bias):
    """XLA's own attention in a 16-bit dtype passes the 5e-2 guard (the rounding a correct 16-bit
    kernel shows), with grouped-query heads and with a bias."""
    assert A.check_kernel(xla, dtype, 64, 4, n_kv, 16, bias) is None


def test_check_kernel_rejects_wrong_values_and_gradients():
    """A kernel off by a wrong scale (forward) or with a wrong backward is refused, named by what differs."""
    def wrong_scale(q, k, v, b):
        return jax.nn.dot_product_attention(q, k, v, bias=b, is_causal=True, scale=2.0 / math.sqrt(q.shape[-1]))

    why = A.check_kernel(wrong_scale, "bfloat16", 64, 4, 4, 16, False)
    assert why is not None and why.startswith("its output is off")

    @jax.custom_vjp
    def bad_backward(q, k, v):
        return xla(q, k, v, None)

    bad_backward.defvjp(lambda q, k, v: (xla(q, k, v, None), (q, k, v)),
                        lambda res, dy: (res[0], jnp.zeros_like(res[1]), jnp.zeros_like(res[2])))
    why = A.check_kernel(lambda q, k, v, b: bad_backward(q, k, v), "bfloat16", 64, 4, 4, 16, False)
    assert why is not None and why.startswith("its dq is off"), why

    def nan(q, k, v, b):
        return xla(q, k, v, b) * jnp.nan

    assert "is off" in A.check_kernel(nan, "bfloat16", 64, 4, 4, 16, False)


def test_check_kernel_reports_a_refusal_and_runs_inside_a_trace():
    """An exception (cuDNN refusing a shape raises at trace or compile time) becomes the reason; the
    probe runs eagerly when called while another function is being traced (sdpa calls it there)."""
    def refuses(q, k, v, b):
        raise ValueError("head size 17 is not supported\nsecond line")

    assert A.check_kernel(refuses, "bfloat16", 64, 4, 4, 16, False) == "ValueError: head size 17 is not supported"
    seen = []

    @jax.jit
    def outer(x):
        seen.append(A.check_kernel(xla, "bfloat16", 32, 2, 2, 8, False))
        return x + 1

    outer(jnp.zeros(3))
    assert seen == [None]


def test_cudnn_refusal_without_a_gpu():
    A.cudnn_refusal.cache_clear()
    assert A.cudnn_refusal("bfloat16", 64, 4, 4, 16, False).startswith("no GPU")


@pytest.fixture
def on_gpu(monkeypatch):
    """The cuDNN kernel as on a GPU: the probe answers `refusal[0]`, and jax.nn.dot_product_attention
    records the implementation asked for, then computes with XLA's."""
    asked, refusal = [], [None]
    real = jax.nn.dot_product_attention

    def spy(*args, implementation=None, **kw):
        asked.append(implementation)
        return real(*args, implementation="xla", **kw)

    monkeypatch.setattr(A, "cudnn_refusal", lambda *key: refusal[0])
    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    return asked, refusal


def qkv(n_kv=4):
    ks = jax.random.split(jax.random.key(1), 3)
    return (jax.random.normal(ks[0], (2, 32, 4, 8)), jax.random.normal(ks[1], (2, 32, n_kv, 8)),
            jax.random.normal(ks[2], (2, 32, n_kv, 8)))


def test_sdpa_asks_for_cudnn_on_a_gpu_and_falls_back(on_gpu):
    """Plain causal and biased calls name cuDNN when the probe accepts them and run the reference
    (XLA's default, implementation None) when it refuses; the sampler's masked call stays on the
    reference; attention dropout goes to manual. The values are the reference manual backend's in
    every case (to the float32 tolerance of test_kernels)."""
    asked, refusal = on_gpu
    q, k, v = qkv(2)
    ref = reference.manual(q, k, v)
    np.testing.assert_allclose(A.sdpa(q, k, v), ref, rtol=2e-5, atol=2e-6)
    bias = jnp.zeros((32, 32))
    A.sdpa(q, k, v, bias=bias)
    assert asked == ["cudnn", "cudnn"]
    refusal[0] = "ValueError: not supported"
    np.testing.assert_allclose(A.sdpa(q, k, v), ref, rtol=2e-5, atol=2e-6)
    mask = reference.causal_mask(32)
    A.sdpa(q, k, v, mask=mask)
    refusal[0] = None
    A.sdpa(q, k, v, mask=mask)
    assert asked == ["cudnn", "cudnn", None, None, None]
    d = AttentionDropout(0.1, jax.random.key(3))
    np.testing.assert_array_equal(A.sdpa(q, k, v, dropout=d), reference.manual(q, k, v, dropout=d))
    assert len(asked) == 5  # not through dot_product_attention


def test_sdpa_kernel_names_what_runs(on_gpu):
    asked, refusal = on_gpu
    assert A.describe(jnp.bfloat16, 1024, 12, 12, 64, False, 0.0) == "cuDNN flash attention"
    refusal[0] = "ValueError: fp32 is not supported"
    assert A.describe(jnp.float32, 1024, 12, 12, 64, False, 0.0) == (
        "XLA attention (T x S scores; cuDNN refused: ValueError: fp32 is not supported)")
    assert A.describe(jnp.bfloat16, 1024, 12, 12, 64, False, 0.1).startswith("manual")


def test_describe_attention_per_kernel_set(tiny):
    """The report's attention line says what runs: the reference's XLA attention (or manual with
    attention dropout), the CPU kernel's block kernel (with a bias and with dropout too)."""
    from modgpt_jax.kernels import AUTO, describe_attention
    m = tiny(block_size=256, n_head=4, n_embd=64).model
    assert describe_attention(m, "float32", ()) == "XLA attention (T x S scores)"
    assert describe_attention(m.__class__(**{**m.__dict__, "dropout": 0.2}), "float32", ()).startswith("manual")
    cpu = AUTO["cpu"]
    assert describe_attention(m, "float32", cpu) == "causal block kernel (CPU)"
    alibi = m.__class__(**{**m.__dict__, "position_encoding": "alibi"})
    assert describe_attention(alibi, "float32", cpu) == "causal block kernel (CPU)"  # a bias too
    dropped = m.__class__(**{**m.__dict__, "dropout": 0.2})
    assert describe_attention(dropped, "float32", cpu).startswith("causal block kernel (CPU; attention dropout")
