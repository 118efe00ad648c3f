"""Position encodings as hooks that default to no-ops: embed (learned), rotate (rope), bias (ALiBi).

A component that needs a learned table says how many rows via `embedding_rows(cfg)`; the model owns
that table as `wpe` (the canonical name) and passes it to `embed`, so these hold no parameters.
q and k here are (B, nh, T, hd), the layout of F.scaled_dot_product_attention; pos_T: (T,) positions.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from modgpt.config import ModelConfig
from modgpt.positions import alibi_slopes
from modgpt.registry import Registry

POSITIONS = Registry("position_encoding")


class PositionEncoding(nn.Module):
    """Base: every hook is a no-op."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg

    @staticmethod
    def embedding_rows(cfg: ModelConfig) -> int:
        """Rows of the learned position table the model must own as `wpe` (0 = none)."""
        return 0

    def embed(self, x_BxTxD, wpe, pos_T):
        return x_BxTxD

    def rotate(self, q, k, pos_T):
        return q, k

    def bias(self, pos_T):
        """An additive (T, T) or (nh, T, T) float32 attention bias, or None."""
        return None


@POSITIONS.register("none")
class NoPositions(PositionEncoding):
    """NoPE: causal attention alone carries position."""


@POSITIONS.register("learned_absolute")
class LearnedAbsolute(PositionEncoding):
    """GPT-2: add wpe[pos] to the token embeddings."""

    @staticmethod
    def embedding_rows(cfg: ModelConfig) -> int:
        return cfg.block_size

    def embed(self, x_BxTxD, wpe, pos_T):
        return x_BxTxD + wpe(pos_T)  # (T, D) broadcast over B


def rope_cos_sin(pos_T, hd: int, theta: float):
    """(T, hd) cos and sin in float32, half-split layout: angles concatenated twice."""
    inv_freq = theta ** (-torch.arange(0, hd, 2, device=pos_T.device, dtype=torch.float32) / hd)  # (hd/2,)
    ang = torch.outer(pos_T.float(), inv_freq)  # (T, hd/2)
    ang = torch.cat([ang, ang], dim=-1)  # (T, hd)
    return ang.cos(), ang.sin()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


@POSITIONS.register("rope")
class RoPE(PositionEncoding):
    """Rotary embeddings (GPT-NeoX / HF llama half-split layout) on q and k, in float32."""

    def tables(self, pos_T):
        return rope_cos_sin(pos_T, self.cfg.head_dim, self.cfg.rope_theta)

    def rotate(self, q, k, pos_T):
        cos, sin = self.tables(pos_T)  # (T, hd): broadcast over B and heads

        def rot(x):
            x32 = x.float()
            return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)
        return rot(q), rot(k)


@POSITIONS.register("alibi")
class ALiBi(PositionEncoding):
    """Attention with linear biases: head h adds slope_h * (j - i) to the score of query i, key j."""

    def bias(self, pos_T):
        slopes = torch.tensor(alibi_slopes(self.cfg.n_head), dtype=torch.float32, device=pos_T.device)  # (nh,)
        pos = pos_T.float()
        rel = pos[None, :] - pos[:, None]  # (T, T): j - i, <= 0 where attention is allowed
        return slopes[:, None, None] * rel  # (nh, T, T) float32
