"""Causal attention kernels: (q, k, v, bias, dropout_p) -> y, all (B, nh, T, hs); scale 1/sqrt(hs).

k and v may have fewer heads than q (grouped-query attention, n_kv_head dividing nh): query head h
reads kv head h // (nh / n_kv_head), i.e. consecutive query heads share one kv head.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from modgpt.registry import Registry
from modgpt_torch.components.positions import POSITIONS

ATTENTION = Registry("attention_backend")


def causal_mask(T: int, device, bias=None):
    """Additive float32 mask: 0 on and below the diagonal, -inf above, plus the optional bias."""
    m = torch.full((T, T), float("-inf"), device=device).triu(1)
    return m if bias is None else m + bias


@ATTENTION.register("sdpa")
def sdpa(q, k, v, bias=None, dropout_p: float = 0.0):
    """torch's fused kernel (flash / memory-efficient on CUDA, math on CPU)."""
    gqa = k.shape[1] != q.shape[1]  # sdpa groups query heads onto kv heads itself
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=gqa)
    mask = causal_mask(q.shape[-2], q.device, bias).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)


SDPA_KERNELS = {"FLASH_ATTENTION": "flash attention", "EFFICIENT_ATTENTION": "memory-efficient attention",
                "CUDNN_ATTENTION": "cuDNN attention", "MATH": "math: T x S probabilities"}


def describe(m, dtype: torch.dtype, device) -> str:
    """The attention kernel a training step of model config m runs on `device` in `dtype`, for the
    start-up report and the run log. For sdpa, torch's own choice for a call of the training shape
    (torch._fused_sdp_choice, the dispatcher's pick; private, so a failure only loses the detail)."""
    if m.attention_backend != "sdpa":
        return f"{m.attention_backend} (explicit softmax: T x S probabilities)"
    try:
        from torch.nn.attention import SDPBackend
        q = torch.zeros(1, m.n_head, m.block_size, m.head_dim, dtype=dtype, device=device, requires_grad=True)
        k = torch.zeros(1, m.kv_heads, m.block_size, m.head_dim, dtype=dtype, device=device, requires_grad=True)
        bias = POSITIONS.get(m.position_encoding)(m).bias(m.block_size, device)
        mask = None if bias is None else causal_mask(m.block_size, device, bias).to(dtype)
        name = SDPBackend(torch._fused_sdp_choice(q, k, k, mask, m.dropout, mask is None,
                                                  enable_gqa=m.kv_heads != m.n_head)).name
    except Exception as e:  # noqa: BLE001
        return f"sdpa (torch picks the kernel per call; its choice unknown here: {type(e).__name__})"
    return f"sdpa ({SDPA_KERNELS.get(name, name.lower())})"


@ATTENTION.register("manual")
def manual(q, k, v, bias=None, dropout_p: float = 0.0):
    """Explicit q @ k^T, additive -inf mask, float32 softmax, dropout, @ v."""
    T, hs = q.shape[-2], q.shape[-1]
    if k.shape[1] != q.shape[1]:  # grouped-query: repeat each kv head for its group of query heads
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    att = (q @ k.transpose(-2, -1)).float() * (1.0 / math.sqrt(hs))  # (B, nh, T, T)
    att = att + causal_mask(T, q.device, bias)
    att = torch.softmax(att, dim=-1).to(q.dtype)
    if dropout_p > 0:
        att = F.dropout(att, p=dropout_p, training=True)
    return att @ v  # (B, nh, T, hs)
