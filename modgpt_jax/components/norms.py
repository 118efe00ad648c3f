"""Normalization layers over the last dim; math in float32, output in the input's dtype.

Parameters are named `weight` (and `bias`) like the canonical format; eps is config.norm_eps for
every kind (nnx.LayerNorm's default 1e-6 differs from torch's 1e-5, so these are written out).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from modgpt.config import ModelConfig
from modgpt.registry import Registry

NORMS = Registry("normalization")


def _param(init, shape):
    return nnx.Param(nnx.with_partitioning(init, ("norm",))(jax.random.key(0), shape, jnp.float32))


class _LayerNorm(nnx.Module):
    """(x - mean) / sqrt(var + eps) * weight (+ bias)."""
    has_bias = True

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs | None = None):
        self.eps = cfg.norm_eps
        self.weight = _param(nnx.initializers.ones, (cfg.n_embd,))
        self.bias = _param(nnx.initializers.zeros, (cfg.n_embd,)) if self.has_bias else None

    def __call__(self, x_BxTxD):
        x = x_BxTxD.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)  # biased, like torch
        y = (x - mean) * jax.lax.rsqrt(var + self.eps) * self.weight[...]
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(x_BxTxD.dtype)


@NORMS.register("layernorm")
class LayerNorm(_LayerNorm):
    """LayerNorm with weight and bias."""


@NORMS.register("layernorm_nobias")
class LayerNormNoBias(_LayerNorm):
    """LayerNorm with weight only."""
    has_bias = False


@NORMS.register("rmsnorm")
class RMSNorm(nnx.Module):
    """x * rsqrt(mean(x^2) + eps) * weight."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs | None = None):
        self.eps = cfg.norm_eps
        self.weight = _param(nnx.initializers.ones, (cfg.n_embd,))

    def __call__(self, x_BxTxD):
        x = x_BxTxD.astype(jnp.float32)
        y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.eps) * self.weight[...]
        return y.astype(x_BxTxD.dtype)
