"""Normalization over the last dim, written as formulas; math in float32, output in the input's dtype.

Parameters are named `weight` (and `bias`) like the canonical format; eps is config.norm_eps for
every kind (nnx.LayerNorm's default 1e-6 differs from torch's 1e-5). Built as Norm(cfg) over n_embd,
or Norm(cfg, dim=head_dim) for qk_norm.
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
    """(x - mean) / sqrt(var + eps) * weight (+ bias); var biased, like torch."""
    has_bias = True

    def __init__(self, cfg: ModelConfig, dim: int | None = None, *, rngs: nnx.Rngs | None = None):
        dim = dim or cfg.n_embd
        self.eps = cfg.norm_eps
        self.weight = _param(nnx.initializers.ones, (dim,))
        self.bias = _param(nnx.initializers.zeros, (dim,)) if self.has_bias else None

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        xc = x32 - mean
        y = xc * jax.lax.rsqrt(jnp.square(xc).mean(-1, keepdims=True) + self.eps) * self.weight[...]
        return (y if self.bias is None else y + self.bias[...]).astype(x.dtype)


@NORMS.register("layernorm")
class LayerNorm(_LayerNorm):
    """LayerNorm with weight and bias (GPT-2)."""


@NORMS.register("layernorm_nobias")
class LayerNormNoBias(_LayerNorm):
    """LayerNorm with a weight only."""
    has_bias = False


@NORMS.register("rmsnorm")
class RMSNorm(nnx.Module):
    """x * rsqrt(mean(x^2) + eps) * weight (llama)."""

    def __init__(self, cfg: ModelConfig, dim: int | None = None, *, rngs: nnx.Rngs | None = None):
        self.eps = cfg.norm_eps
        self.weight = _param(nnx.initializers.ones, (dim or cfg.n_embd,))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        return (x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps) * self.weight[...]).astype(x.dtype)
