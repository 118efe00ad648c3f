"""Kernel cudnn_attention (GPU): sdpa as cuDNN's flash attention wherever cuDNN takes the call.

jax.nn.dot_product_attention's default (the reference) is XLA's attention, which builds the T x S
scores in memory. Whether cuDNN takes a call (16-bit dtypes, head size, GPU generation, cuDNN
version, bias) is settled by trying it once per shape; where it does not, the reference runs.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from modgpt_jax.components import attention as reference


def check_kernel(attend, dtype: str, T: int, nh: int, n_kv: int, hd: int, bias: bool) -> str | None:
    """Try attend(q, k, v, bias) (B, T, nh, hd) causal, forward and backward, on one sequence of this
    shape: None when it compiles, runs and agrees with XLA's attention in float32 (relative L2 error of
    the output and of dq, dk, dv at most 5e-2: XLA's own attention in bfloat16 lands at 2.3e-3, a
    broken kernel near 1; a guard, not a parity test), else why not. Runs eagerly even while a step is traced."""
    f32 = jnp.float32

    def xla(q, k, v, b):
        return jax.nn.dot_product_attention(q, k, v, bias=b, is_causal=True, implementation="xla")

    def value_and_vjp(f):
        return jax.jit(lambda q, k, v, b: jax.vjp(lambda q, k, v: f(q, k, v, b), q, k, v))

    try:
        with jax.ensure_compile_time_eval():
            keys = jax.random.split(jax.random.key(0), 5)
            q = jax.random.normal(keys[0], (1, T, nh, hd), f32)
            k, v = (jax.random.normal(kk, (1, T, n_kv, hd), f32) for kk in keys[1:3])
            dy = jax.random.normal(keys[3], (1, T, nh, hd), f32)
            b = jax.random.normal(keys[4], (1, nh, T, T), f32) if bias else None
            low = [x if x is None else x.astype(dtype) for x in (q, k, v, b, dy)]
            y, vjp = value_and_vjp(attend)(*low[:4])
            got = (y,) + tuple(vjp(low[4]))
            y, vjp = value_and_vjp(xla)(*[x if x is None else x.astype(f32) for x in low[:4]])
            want = (y,) + tuple(vjp(low[4].astype(f32)))
            for name, g, w in zip(("output", "dq", "dk", "dv"), got, want):
                err = float(jnp.linalg.norm(g.astype(f32) - w) / jnp.linalg.norm(w))
                if not err <= 5e-2:  # NaN fails too
                    return f"its {name} is off from XLA's attention by {err:.3g} (relative L2, at most 5e-2)"
    except Exception as e:  # noqa: BLE001 - any refusal (shape, dtype, version, compile) means: not this kernel
        first = (str(e).strip().splitlines() or [""])[0]
        return f"{type(e).__name__}: {first[:200]}"
    return None


@functools.lru_cache(maxsize=None)
def cudnn_refusal(dtype: str, T: int, nh: int, n_kv: int, hd: int, bias: bool) -> str | None:
    """Why cuDNN flash attention cannot serve sdpa's causal training call of this shape here, or None
    when it can. jax.nn.dot_product_attention's default (implementation=None) is XLA's attention,
    which builds the T x S scores in memory, so sdpa names cuDNN. Whether cuDNN takes a call (16-bit
    dtypes only, head size, GPU generation, cuDNN version, bias) is settled by trying it once per
    shape (check_kernel)."""
    if jax.default_backend() != "gpu":
        return f"no GPU (JAX platform: {jax.default_backend()})"

    def cudnn(q, k, v, b):
        return jax.nn.dot_product_attention(q, k, v, bias=b, is_causal=True, implementation="cudnn")

    return check_kernel(cudnn, dtype, T, nh, n_kv, hd, bias)


def sdpa(q, k, v, bias=None, mask=None, dropout=None):
    """reference.sdpa, in cuDNN for causal training calls cuDNN takes."""
    B, T, nh, hd = q.shape
    if dropout is not None or mask is not None or cudnn_refusal(
            jnp.dtype(q.dtype).name, T, nh, k.shape[2], hd, bias is not None) is not None:
        return reference.sdpa(q, k, v, bias, mask, dropout)
    if bias is not None:
        bias = jnp.broadcast_to(bias, (nh,) + bias.shape[-2:])[None].astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=True, implementation="cudnn")


def describe(dtype, T: int, nh: int, n_kv: int, hd: int, bias: bool, dropout: float) -> str:
    """What sdpa runs on this GPU for a training call of this shape, in words."""
    if dropout:
        return "manual (the fused kernels take no attention dropout: T x S probabilities kept)"
    why = cudnn_refusal(jnp.dtype(dtype).name, T, nh, n_kv, hd, bias)
    return "cuDNN flash attention" if why is None else f"XLA attention (T x S scores; cuDNN refused: {why})"
