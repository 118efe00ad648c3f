"""Elementwise activations by name, as modules taking no arguments; gated FFNs take their gate from
here too."""
from __future__ import annotations

import torch.nn as nn

from modgpt.config import LEAKY_RELU_SLOPE
from modgpt.registry import Registry

ACTIVATIONS = Registry("activation")


@ACTIVATIONS.register("gelu")
class GELU(nn.GELU):
    """Exact (erf) GELU, the JAX backend's too."""


@ACTIVATIONS.register("gelu_tanh")
class GELUTanh(nn.GELU):
    """GPT-2's tanh-approximated GELU (transformers' gelu_new), the JAX backend's too."""

    def __init__(self):
        super().__init__(approximate="tanh")


ACTIVATIONS.register("silu")(nn.SiLU)
ACTIVATIONS.register("relu")(nn.ReLU)


@ACTIVATIONS.register("leaky_relu")
class LeakyReLU(nn.LeakyReLU):
    """LeakyReLU with the schema's fixed slope."""

    def __init__(self):
        super().__init__(LEAKY_RELU_SLOPE)
