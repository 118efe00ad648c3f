"""Causal attention kernels: (q, k, v, bias, dropout_p) -> y, all (B, nh, T, hd); scale 1/sqrt(hd).

k and v may have fewer heads than q (grouped-query attention): query head h reads kv head
h // (nh / n_kv_head), i.e. consecutive query heads share one kv head.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from modgpt.registry import Registry

ATTENTION = Registry("attention_backend")


def causal_mask(T: int, device, bias=None):
    """Additive float32 mask: 0 on and below the diagonal, -inf above, plus the optional bias."""
    m = torch.full((T, T), float("-inf"), device=device).triu(1)
    return m if bias is None else m + bias


@ATTENTION.register("sdpa")
def sdpa(q, k, v, bias=None, dropout_p: float = 0.0):
    """torch's fused kernel (flash / memory-efficient on CUDA, its own choice per call)."""
    gqa = k.shape[1] != q.shape[1]  # sdpa groups query heads onto kv heads itself
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=gqa)
    mask = causal_mask(q.shape[-2], q.device, bias).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)


@ATTENTION.register("manual")
def manual(q, k, v, bias=None, dropout_p: float = 0.0):
    """Explicit q @ k^T, additive -inf mask, float32 softmax, dropout, @ v."""
    T, hd = q.shape[-2], q.shape[-1]
    if k.shape[1] != q.shape[1]:  # grouped-query: repeat each kv head for its group of query heads
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    att = (q @ k.transpose(-2, -1)).float() * (1.0 / math.sqrt(hd))  # (B, nh, T, T)
    att = torch.softmax(att + causal_mask(T, q.device, bias), dim=-1).to(q.dtype)
    if dropout_p > 0:
        att = F.dropout(att, p=dropout_p, training=True)
    return att @ v  # (B, nh, T, hd)
