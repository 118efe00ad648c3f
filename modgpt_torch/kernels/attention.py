"""Kernel v_apart: under RoPE, which rotates q and k into new tensors, v is copied out of the qkv
projection's output, so that output (2/3 of it dead once q and k are rotated) is freed rather than
kept for the backward through v, a view of it."""
from __future__ import annotations

from modgpt_torch.components.positions import PositionEncoding
from modgpt_torch.model import CausalSelfAttention


class VApartAttention(CausalSelfAttention):
    def project(self, x_BxTxD):
        q, k, v = super().project(x_BxTxD)
        rotates = type(self.pos).rotate is not PositionEncoding.rotate
        return (q, k, v.contiguous()) if rotates and not self.qk_norm else (q, k, v)


SWAPS = {CausalSelfAttention: VApartAttention}
