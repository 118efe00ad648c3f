"""Position encodings as hooks that default to no-ops: embed (learned), rotate (rope), bias (ALiBi).

A component that needs a learned table says how many rows via `embedding_rows(cfg)`; the model owns
that table as `wpe` (the canonical name) and passes it to `embed`, so the component holds no params.
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

    def embed(self, x_BxTxD, wpe):
        return x_BxTxD

    def rotate(self, q, k):
        return q, k

    def bias(self, T: int, device=None):
        """An additive (T, T) or (nh, T, T) attention bias, or None."""
        return None


@POSITIONS.register("none")
class NoPositions(PositionEncoding):
    """NoPE: causal attention alone carries position."""


@POSITIONS.register("learned_absolute")
class LearnedAbsolute(PositionEncoding):
    """GPT-2: add wpe[0..T-1] to the token embeddings."""

    @staticmethod
    def embedding_rows(cfg: ModelConfig) -> int:
        return cfg.block_size

    def embed(self, x_BxTxD, wpe):
        T = x_BxTxD.shape[1]
        pos = torch.arange(T, device=x_BxTxD.device)
        return x_BxTxD + wpe(pos)  # (T, D) broadcast over B


def rope_cos_sin(T: int, hd: int, theta: float, device=None):
    """(T, hd) cos and sin in float32, half-split layout: angles concatenated twice."""
    inv_freq = theta ** (-torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd)  # (hd/2,)
    t = torch.arange(T, device=device, dtype=torch.float32)
    ang = torch.outer(t, inv_freq)  # (T, hd/2)
    ang = torch.cat([ang, ang], dim=-1)  # (T, hd)
    return ang.cos(), ang.sin()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


@POSITIONS.register("rope")
class RoPE(PositionEncoding):
    """Rotary embeddings (GPT-NeoX / HF llama half-split layout) on q and k, in float32."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self._tables = None  # (cos, sin) for block_size rows, made on first use on the device

    def tables(self, T: int, device):
        """cos, sin for positions 0..T-1: rows of one table shared by every layer and step (made per
        call, each layer's copy was kept for its backward)."""
        c = self._tables
        if c is None or c[0].shape[0] < T or c[0].device != device:
            c = self._tables = rope_cos_sin(max(T, self.cfg.block_size), self.cfg.head_dim,
                                            self.cfg.rope_theta, device)
        return c[0][:T], c[1][:T]

    def rotate(self, q, k):
        # q, k: (B, nh, T, hs)
        cos, sin = self.tables(q.shape[-2], q.device)

        def rot(x):
            x32 = x.float()
            return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)
        return rot(q), rot(k)


@POSITIONS.register("alibi")
class ALiBi(PositionEncoding):
    """Attention with linear biases: head h adds slope_h * (j - i) to the score of query i, key j."""

    def bias(self, T: int, device=None):
        slopes = torch.tensor(alibi_slopes(self.cfg.n_head), dtype=torch.float32, device=device)  # (nh,)
        pos = torch.arange(T, device=device, dtype=torch.float32)
        rel = pos[None, :] - pos[:, None]  # (T, T): j - i, <= 0 where attention is allowed
        return slopes[:, None, None] * rel  # (nh, T, T) float32
