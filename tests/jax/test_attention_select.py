"""Which kernel the sdpa backend runs: cuDNN flash attention on a GPU where cuDNN takes the call, else
XLA's attention; the CPU's causal block kernel on a CPU.

jax.nn.dot_product_attention's default (implementation=None) is XLA's attention, which builds the
T x S scores, so sdpa must name cuDNN and must fall back when cuDNN refuses a shape. CI has no GPU:
the GPU branch is driven here by patching the platform, the probe and jax.nn.dot_product_attention
(a spy that records the implementation asked for and computes with XLA's); the probe itself
(check_kernel) runs for real on the CPU with kernels that work, fail or raise.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modgpt_jax.components import attention as A
from modgpt_jax.components.dropout import AttentionDropout


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
    """sdpa as on a GPU: the platform says gpu, the probe answers `refusal[0]`, and
    jax.nn.dot_product_attention records the implementation asked for, then computes with XLA's."""
    asked, refusal = [], [None]
    real = jax.nn.dot_product_attention

    def spy(*args, implementation=None, **kw):
        asked.append(implementation)
        return real(*args, implementation="xla", **kw)

    monkeypatch.setattr(A, "_platform", lambda: "gpu")
    monkeypatch.setattr(A, "cudnn_refusal", lambda *key: refusal[0])
    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    return asked, refusal


def qkv(n_kv=4):
    ks = jax.random.split(jax.random.key(1), 3)
    return (jax.random.normal(ks[0], (2, 32, 4, 8)), jax.random.normal(ks[1], (2, 32, n_kv, 8)),
            jax.random.normal(ks[2], (2, 32, n_kv, 8)))


def test_sdpa_asks_for_cudnn_on_a_gpu_and_falls_back(on_gpu):
    """Plain causal and biased calls name cuDNN when the probe accepts them and XLA when it refuses;
    the sampler's masked call stays on XLA; attention dropout goes to manual. The values are the
    manual backend's in every case (to the float32 tolerance of test_fast_kernels)."""
    asked, refusal = on_gpu
    q, k, v = qkv(2)
    ref = A.manual(q, k, v)
    np.testing.assert_allclose(A.sdpa(q, k, v), ref, rtol=2e-5, atol=2e-6)
    bias = jnp.zeros((32, 32))
    A.sdpa(q, k, v, bias=bias)
    assert asked == ["cudnn", "cudnn"]
    refusal[0] = "ValueError: not supported"
    np.testing.assert_allclose(A.sdpa(q, k, v), ref, rtol=2e-5, atol=2e-6)
    mask = A.causal_mask(32)
    A.sdpa(q, k, v, mask=mask)
    refusal[0] = None
    A.sdpa(q, k, v, mask=mask)
    assert asked == ["cudnn", "cudnn", "xla", "xla", "xla"]
    d = AttentionDropout(0.1, jax.random.key(3))
    np.testing.assert_array_equal(A.sdpa(q, k, v, dropout=d), A.manual(q, k, v, dropout=d))
    assert len(asked) == 5  # not through dot_product_attention


def test_sdpa_kernel_names_what_runs(on_gpu):
    asked, refusal = on_gpu
    assert A.sdpa_kernel(jnp.bfloat16, 1024, 12, 12, 64, False, 0.0) == "cuDNN flash attention"
    refusal[0] = "ValueError: fp32 is not supported"
    assert A.sdpa_kernel(jnp.float32, 1024, 12, 12, 64, False, 0.0) == (
        "XLA attention (T x S scores; cuDNN refused: ValueError: fp32 is not supported)")
    assert A.sdpa_kernel(jnp.bfloat16, 1024, 12, 12, 64, False, 0.1).startswith("manual")


def test_sdpa_kernel_on_the_cpu():
    assert A.sdpa_kernel(jnp.float32, 256, 6, 6, 64, False, 0.0) == "causal block kernel (CPU)"
    assert A.sdpa_kernel(jnp.float32, 256, 6, 6, 64, False, 0.2).startswith("causal block kernel")
    assert A.sdpa_kernel(jnp.float32, 256, 6, 6, 64, True, 0.0) == "causal block kernel (CPU)"  # a bias too
