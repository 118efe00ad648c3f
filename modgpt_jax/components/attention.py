"""Causal attention kernels: (q, k, v, bias, mask, dropout) -> y, all (B, T, nh, hd); scale 1/sqrt(hd).

`mask` is an optional boolean (T, S) "may attend" matrix; None means plain causal over T == S (the
sampler passes one for its fixed-size buffer). Softmax runs in float32. k and v may have fewer heads
than q (grouped-query attention): query head h reads kv head h // (nh / n_kv_head), the grouping
jax.nn.dot_product_attention uses natively. Faster kernels for one machine live in modgpt_jax/kernels.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from modgpt.registry import Registry
from modgpt_jax.components.dropout import drop

ATTENTION = Registry("attention_backend")


def causal_mask(T: int, S: int | None = None):
    """(T, S) bool, True on and below the diagonal."""
    return jnp.tril(jnp.ones((T, S or T), dtype=bool))


@ATTENTION.register("sdpa")
def sdpa(q, k, v, bias=None, mask=None, dropout=None):
    """jax.nn.dot_product_attention (XLA's, float32 softmax). It takes no dropout: with attention
    dropout this is manual's math."""
    if dropout is not None:
        return manual(q, k, v, bias, mask, dropout)
    if bias is not None:  # (1, nh, T, S) for the kernel
        bias = jnp.broadcast_to(bias, (q.shape[2],) + bias.shape[-2:])[None]
    if mask is not None:
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask[None, None])
    return jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=True)


@ATTENTION.register("manual")
def manual(q, k, v, bias=None, mask=None, dropout=None):
    """Explicit q @ k^T, -inf above the diagonal, float32 softmax, dropout, @ v."""
    T, S, hd = q.shape[1], k.shape[1], q.shape[-1]
    if k.shape[2] != q.shape[2]:  # grouped-query: repeat each kv head for its group of query heads
        k, v = (jnp.repeat(t, q.shape[2] // k.shape[2], axis=2) for t in (k, v))
    att = jnp.einsum("btnh,bsnh->bnts", q, k).astype(jnp.float32) * (1.0 / math.sqrt(hd))  # (B, nh, T, S)
    if bias is not None:
        att = att + bias.astype(jnp.float32)
    att = jnp.where(causal_mask(T, S) if mask is None else mask, att, -jnp.inf)
    att = jax.nn.softmax(att, axis=-1).astype(q.dtype)
    if dropout is not None:
        att = drop(att, dropout.key, dropout.rate)
    return jnp.einsum("bnts,bsnh->btnh", att, v)
