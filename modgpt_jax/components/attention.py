"""Causal attention kernels: (q, k, v, bias, mask, dropout) -> y, all (B, T, nh, hd); scale 1/sqrt(hd).

`mask` is an optional boolean (T, S) "may attend" matrix; None means plain causal over T == S.
The sampler passes one for its fixed-size buffer. Softmax runs in float32.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from modgpt.registry import Registry

ATTENTION = Registry("attention_backend")


def causal_mask(T: int, S: int | None = None):
    """(T, S) bool, True on and below the diagonal."""
    return jnp.tril(jnp.ones((T, S or T), dtype=bool))


@ATTENTION.register("sdpa")
def sdpa(q, k, v, bias=None, mask=None, dropout=None):
    """jax.nn.dot_product_attention: cuDNN flash on GPU when it applies, XLA otherwise."""
    if dropout is not None:  # the fused kernel has no attention dropout: use the explicit path
        return manual(q, k, v, bias, mask, dropout)
    if bias is not None:
        bias = jnp.broadcast_to(bias, (q.shape[2],) + bias.shape[-2:])[None].astype(q.dtype)
    if mask is None:
        return jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=True, implementation=None)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask[None, None], implementation=None)


@ATTENTION.register("manual")
def manual(q, k, v, bias=None, mask=None, dropout=None):
    """Explicit q @ k^T, -inf above the diagonal, float32 softmax, dropout, @ v."""
    T, S, hd = q.shape[1], k.shape[1], q.shape[-1]
    att = jnp.einsum("btnh,bsnh->bnts", q, k).astype(jnp.float32) * (1.0 / math.sqrt(hd))  # (B, nh, T, S)
    if bias is not None:
        att = att + bias.astype(jnp.float32)
    allowed = causal_mask(T, S) if mask is None else mask
    att = jnp.where(allowed, att, -jnp.inf)
    att = jax.nn.softmax(att, axis=-1).astype(q.dtype)
    if dropout is not None:
        att = dropout(att)
    return jnp.einsum("bnts,bsnh->btnh", att, v)
