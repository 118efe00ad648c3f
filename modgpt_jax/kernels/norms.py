"""Kernel norm_backward (CPU): the norms with the textbook backward written out.

Autodiff of the formula gave XLA a long elementwise chain (the residual-stream gradient through every
norm) that it fused, and so recomputed, into many consumers: about a fifth of a CPU training step
(docs/performance.md). The same math evaluated once, in float32. The backward keeps x in its own dtype
and the float32 row statistics (the floor's norm activations, modgpt.memory) and rebuilds xhat.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from modgpt_jax.components.norms import LayerNorm, LayerNormNoBias, RMSNorm
from modgpt_jax.kernels.backward import fresh


def _anew(res, dy, all_of_them: bool):
    """The norm's residuals (x, row statistics, weight, bias) for the backward: x read anew
    (backward.fresh), and with all_of_them the statistics (tied to dy's (..., 1) slice) and the
    weight and bias too. For the per-head q/k norms XLA otherwise kept what its forward fusions
    made of them, the row statistics and the weight broadcast to x's whole (B, T, heads, head_dim)
    shape; the main norms plan the same either way and are a little faster reading only x anew. The weight and bias are tied to dy's first
    position of every sequence, (B, 1, ..., 1, D), and come back that shape: the batch axis kept,
    so no communication under batch sharding (a (D,) slice of one sequence would need some)."""
    row = dy[..., :1]
    first = dy[(slice(None),) + (slice(0, 1),) * (dy.ndim - 2)]

    def tie(r):
        return fresh(r, dy if r.shape == dy.shape else row if r.ndim == dy.ndim else first)
    return tuple(None if r is None else tie(r) if all_of_them or i == 0 else r for i, r in enumerate(res))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x, weight, bias, eps: float, per_head: bool):
    """(x - mean) / sqrt(var + eps) * weight (+ bias) over the last dim; var biased, like torch.
    per_head: a q/k norm over head_dim (its backward reads every residual anew, _anew)."""
    return _ln_fwd(x, weight, bias, eps, per_head)[0]


def _ln_fwd(x, weight, bias, eps, per_head):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    xc = x32 - mean
    rstd = jax.lax.rsqrt(jnp.square(xc).mean(-1, keepdims=True) + eps)
    xhat = xc * rstd
    y = xhat * weight if bias is None else xhat * weight + bias
    return y.astype(x.dtype), (x, mean, rstd, weight, bias)


def _ln_bwd(eps, per_head, res, dy):
    x, mean, rstd, weight, bias = _anew(res, dy, per_head)
    xhat = (x.astype(jnp.float32) - mean) * rstd  # the forward's xhat, bit for bit
    dtype, dy = dy.dtype, dy.astype(jnp.float32)  # dy has y's dtype, which is x's
    lead = tuple(range(dy.ndim - 1))
    g = dy * weight
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    return (dx.astype(dtype), jnp.sum(dy * xhat, axis=lead).astype(weight.dtype),
            None if bias is None else jnp.sum(dy, axis=lead).astype(bias.dtype))


layer_norm.defvjp(_ln_fwd, _ln_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def rms_norm(x, weight, eps: float, per_head: bool):
    """x * rsqrt(mean(x^2) + eps) * weight over the last dim (per_head: as for layer_norm)."""
    return _rms_fwd(x, weight, eps, per_head)[0]


def _rms_fwd(x, weight, eps, per_head):
    x32 = x.astype(jnp.float32)
    rstd = jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + eps)
    return (x32 * rstd * weight).astype(x.dtype), (x, rstd, weight)


def _rms_bwd(eps, per_head, res, dy):
    x, rstd, weight = _anew(res, dy, per_head)
    xhat = x.astype(jnp.float32) * rstd  # the forward's xhat, bit for bit
    dtype, dy = dy.dtype, dy.astype(jnp.float32)
    g = dy * weight
    dx = rstd * (g - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx.astype(dtype), jnp.sum(dy * xhat, axis=tuple(range(dy.ndim - 1))).astype(weight.dtype)


rms_norm.defvjp(_rms_fwd, _rms_bwd)


def _per_head(x) -> bool:
    return x.ndim == 4  # a q/k norm's input (B, T, nh, hd); the block norms' is (B, T, D)


class FastLayerNorm(LayerNorm):
    def __call__(self, x):
        return layer_norm(x, self.weight[...], None if self.bias is None else self.bias[...], self.eps, _per_head(x))


class FastLayerNormNoBias(LayerNormNoBias):
    __call__ = FastLayerNorm.__call__


class FastRMSNorm(RMSNorm):
    def __call__(self, x):
        return rms_norm(x, self.weight[...], self.eps, _per_head(x))


SWAPS = {LayerNorm: FastLayerNorm, LayerNormNoBias: FastLayerNormNoBias, RMSNorm: FastRMSNorm}
