"""Elementwise activations by name; gated FFNs take their gate function from here too."""
from __future__ import annotations

import functools

import jax

from modgpt.config import LEAKY_RELU_SLOPE
from modgpt.registry import Registry

ACTIVATIONS = Registry("activation")

# exact (erf) gelu: torch nn.GELU()'s default; jax's default is the tanh approximation
ACTIVATIONS.register("gelu")(functools.partial(jax.nn.gelu, approximate=False))
ACTIVATIONS.register("silu")(jax.nn.silu)
ACTIVATIONS.register("relu")(jax.nn.relu)
ACTIVATIONS.register("leaky_relu")(functools.partial(jax.nn.leaky_relu, negative_slope=LEAKY_RELU_SLOPE))
