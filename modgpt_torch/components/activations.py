"""Elementwise activations, as module classes taking no arguments.

Each has `input_grad(dy, x)`: the gradient with respect to its input, computed by the same backward
op autograd uses, for code that recomputes the activation in the backward pass (the gated FFN).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from modgpt.config import LEAKY_RELU_SLOPE
from modgpt.registry import Registry

ACTIVATIONS = Registry("activation")


@ACTIVATIONS.register("gelu")
class GELU(nn.GELU):
    """Exact (erf) GELU, the same as the JAX backend's."""

    @staticmethod
    def input_grad(dy, x):
        return torch.ops.aten.gelu_backward(dy, x, approximate="none")


@ACTIVATIONS.register("silu")
class SiLU(nn.SiLU):
    @staticmethod
    def input_grad(dy, x):
        return torch.ops.aten.silu_backward(dy, x)


@ACTIVATIONS.register("relu")
class ReLU(nn.ReLU):
    @staticmethod
    def input_grad(dy, x):
        return torch.ops.aten.threshold_backward(dy, x, 0)  # autograd passes relu(x): the same sign


@ACTIVATIONS.register("leaky_relu")
class LeakyReLU(nn.LeakyReLU):
    """LeakyReLU with the schema's fixed slope."""

    def __init__(self):
        super().__init__(LEAKY_RELU_SLOPE)

    @staticmethod
    def input_grad(dy, x):
        return torch.ops.aten.leaky_relu_backward(dy, x, LEAKY_RELU_SLOPE, False)
