"""Elementwise activations, as module classes taking no arguments."""
from __future__ import annotations

import torch.nn as nn

from modgpt.config import LEAKY_RELU_SLOPE
from modgpt.registry import Registry

ACTIVATIONS = Registry("activation")

ACTIVATIONS.register("gelu")(nn.GELU)  # exact (erf) GELU, same as jax.nn.gelu(approximate=False)
ACTIVATIONS.register("silu")(nn.SiLU)
ACTIVATIONS.register("relu")(nn.ReLU)


@ACTIVATIONS.register("leaky_relu")
class LeakyReLU(nn.LeakyReLU):
    """LeakyReLU with the schema's fixed slope."""

    def __init__(self):
        super().__init__(LEAKY_RELU_SLOPE)
