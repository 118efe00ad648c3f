"""Elementwise activations by name; gated FFNs take their gate function from here too."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from modgpt.config import LEAKY_RELU_SLOPE
from modgpt.registry import Registry

ACTIVATIONS = Registry("activation")


@ACTIVATIONS.register("gelu")
def gelu(x):
    """Exact GELU, x * (1 + erf(x / sqrt(2))) / 2: torch nn.GELU()'s default and its formula
    (jax.nn.gelu defaults to the tanh approximation)."""
    return x * 0.5 * (1 + jax.lax.erf(x * jnp.asarray(1 / math.sqrt(2), x.dtype)))


@ACTIVATIONS.register("gelu_tanh")
def gelu_tanh(x):
    """GPT-2's GELU, x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) / 2 (transformers' gelu_new)."""
    return jax.nn.gelu(x, approximate=True)


ACTIVATIONS.register("silu")(jax.nn.silu)
ACTIVATIONS.register("relu")(jax.nn.relu)
ACTIVATIONS.register("leaky_relu")(functools.partial(jax.nn.leaky_relu, negative_slope=LEAKY_RELU_SLOPE))
