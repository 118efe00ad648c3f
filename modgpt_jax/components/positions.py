"""Position encodings as hooks that default to no-ops: embed (learned), rotate (rope), bias (ALiBi).

A component that needs a learned table says how many rows via `embedding_rows(cfg)`; the model owns
that table as `wpe` (the canonical name) and passes it to `embed`, so these hold no parameters.
q and k here are (B, T, nh, hd), the layout of jax.nn.dot_product_attention; pos_T: (T,) positions.
"""
from __future__ import annotations

import jax.numpy as jnp

from modgpt.config import ModelConfig
from modgpt.positions import alibi_slopes
from modgpt.registry import Registry

POSITIONS = Registry("position_encoding")


class PositionEncoding:
    """Base: every hook is a no-op (a plain object without state, so not an nnx.Module)."""

    def __init__(self, cfg: ModelConfig):
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
        return x_BxTxD + wpe(pos_T).astype(x_BxTxD.dtype)  # (T, D) broadcast over B


def rope_cos_sin(pos_T, hd: int, theta: float):
    """(T, hd) cos and sin in float32, half-split layout: angles concatenated twice."""
    inv_freq = theta ** (-jnp.arange(0, hd, 2, dtype=jnp.float32) / hd)  # (hd/2,)
    ang = pos_T.astype(jnp.float32)[:, None] * inv_freq[None, :]  # (T, hd/2)
    ang = jnp.concatenate([ang, ang], axis=-1)  # (T, hd)
    return jnp.cos(ang), jnp.sin(ang)


@POSITIONS.register("rope")
class RoPE(PositionEncoding):
    """Rotary embeddings (GPT-NeoX / HF llama half-split layout) on q and k, in float32."""

    def rotate(self, q, k, pos_T):
        cos, sin = rope_cos_sin(pos_T, q.shape[-1], self.cfg.rope_theta)
        half = q.shape[-1] // 2
        c, s = cos[:, None, :half], sin[:, None, :half]  # (T, 1, hd/2): both halves hold the same angles

        def rot(x):  # x * cos + rotate_half(x) * sin, half by half: [x1 c - x2 s, x2 c + x1 s]
            x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
            return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)
        return rot(q), rot(k)


@POSITIONS.register("alibi")
class ALiBi(PositionEncoding):
    """Attention with linear biases: head h adds slope_h * (j - i) to the score of query i, key j."""

    def bias(self, pos_T):
        slopes = jnp.asarray(alibi_slopes(self.cfg.n_head), dtype=jnp.float32)  # (nh,)
        pos = pos_T.astype(jnp.float32)
        rel = pos[None, :] - pos[:, None]  # (T, T): j - i, <= 0 where attention is allowed
        return slopes[:, None, None] * rel  # (nh, T, T) float32
