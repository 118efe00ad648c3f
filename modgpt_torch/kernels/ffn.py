"""Kernel ffn_recompute: gated FFNs whose product act(gate) * up keeps only gate and up for the
backward and recomputes act(gate) there (autograd of the formula keeps act(gate) too, a fourth
hidden-size tensor where the memory floor counts three). The gradients are autograd's: the
activation's own backward op on dy * up, and dy * act(gate)."""
from __future__ import annotations

import torch
import torch.nn as nn

from modgpt.config import LEAKY_RELU_SLOPE
from modgpt_torch.components.activations import GELU, GELUTanh, LeakyReLU
from modgpt_torch.components.ffn import GLU, SwiGLU

# activation class -> its input gradient by the backward op autograd itself uses: (dy, x) -> dx
INPUT_GRAD = {
    GELU: lambda dy, x: torch.ops.aten.gelu_backward(dy, x, approximate="none"),
    GELUTanh: lambda dy, x: torch.ops.aten.gelu_backward(dy, x, approximate="tanh"),
    nn.SiLU: torch.ops.aten.silu_backward,
    nn.ReLU: lambda dy, x: torch.ops.aten.threshold_backward(dy, x, 0),  # autograd passes relu(x): the same sign
    LeakyReLU: lambda dy, x: torch.ops.aten.leaky_relu_backward(dy, x, LEAKY_RELU_SLOPE, False),
}


class _GatedProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, act):
        ctx.act = act
        ctx.save_for_backward(gate, up)
        return act(gate) * up

    @staticmethod
    def backward(ctx, dy):
        gate, up = ctx.saved_tensors
        return INPUT_GRAD[type(ctx.act)](dy * up, gate), dy * ctx.act(gate), None


class LeanSwiGLU(SwiGLU):
    def hidden(self, x_BxTxD):
        return _GatedProduct.apply(self.gate(x_BxTxD), self.fc(x_BxTxD), self.act)


class LeanGLU(GLU):
    hidden = LeanSwiGLU.hidden


SWAPS = {SwiGLU: LeanSwiGLU, GLU: LeanGLU}
