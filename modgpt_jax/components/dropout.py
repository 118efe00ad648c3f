"""Dropout: the residual-stream kind is nnx.Dropout; attention dropout is drawn by the attention
kernel on the probabilities, from a key the block hands it (AttentionDropout)."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class AttentionDropout(NamedTuple):
    """Dropout on the attention probabilities: its rate and the key the kernel draws the mask from."""
    rate: float
    key: jax.Array


def drop(x, key, rate: float):
    """Inverted dropout with jax.random.bernoulli's mask: x / (1 - rate) where kept, 0 elsewhere (the
    arithmetic of nnx.Dropout; rate 1 gives zeros, without 0/0 in the gradient)."""
    if rate >= 1.0:
        return jnp.zeros_like(x)
    keep = 1.0 - rate
    return jax.lax.select(jax.random.bernoulli(key, keep, x.shape), x / keep, jnp.zeros_like(x))
