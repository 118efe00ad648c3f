"""Elementwise activations by name; gated FFNs take their gate function from here too. The FFN wraps
them (components/backward.recomputed, and `gated` below) so that its backward keeps only their inputs."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from modgpt.config import LEAKY_RELU_SLOPE
from modgpt.registry import Registry
from modgpt_jax.components.backward import recomputed

ACTIVATIONS = Registry("activation")



@ACTIVATIONS.register("gelu")
def gelu(x):
    """Exact (erf) GELU, x * (1 + erf(x / sqrt(2))) / 2: torch nn.GELU()'s default and its formula
    (jax.nn.gelu defaults to the tanh approximation). Written with erf rather than jax.nn.gelu's
    erfc form: the same function, and XLA:CPU's erf is a short polynomial while its erfc has
    branches and an exp (the whole step ~8% faster on CPU, docs/performance.md)."""
    return x * 0.5 * (1 + jax.lax.erf(x * jnp.asarray(1 / math.sqrt(2), x.dtype)))


ACTIVATIONS.register("silu")(jax.nn.silu)
ACTIVATIONS.register("relu")(jax.nn.relu)
ACTIVATIONS.register("leaky_relu")(functools.partial(jax.nn.leaky_relu, negative_slope=LEAKY_RELU_SLOPE))


@functools.lru_cache(maxsize=None)
def gated(act):
    """(gate, up) -> act(gate) * up, keeping gate and up for the backward (act(gate) recomputed)."""
    return recomputed(lambda g, u: act(g) * u)
