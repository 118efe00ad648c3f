"""Feed-forward blocks: standard = proj(act(fc(x))); gated = proj(act(gate(x)) * fc(x))."""
from __future__ import annotations

import torch
import torch.nn as nn

from modgpt.config import ModelConfig
from modgpt.registry import Registry
from modgpt_torch.components.activations import ACTIVATIONS

FFNS = Registry("ffn_type")


@FFNS.register("standard")
class StandardFFN(nn.Module):
    """fc -> activation -> proj -> dropout (GPT-2 MLP)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H = cfg.ffn_hidden_size
        self.fc = nn.Linear(cfg.n_embd, H, bias=cfg.bias)
        self.act = ACTIVATIONS.get(cfg.ffn_activation)()
        self.proj = nn.Linear(H, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.proj(self.act(self.fc(x))))  # (B, T, D) -> (B, T, H) -> (B, T, D)


class GatedFFN(nn.Module):
    """Gate from the activation registry (SwiGLU = silu gate; GeGLU/ReGLU via `activation`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H = cfg.ffn_hidden_size
        self.fc = nn.Linear(cfg.n_embd, H, bias=cfg.bias)  # value / up projection
        self.gate = nn.Linear(cfg.n_embd, H, bias=cfg.bias)
        self.act = ACTIVATIONS.get(cfg.ffn_activation)()
        self.proj = nn.Linear(H, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.proj(_GatedProduct.apply(self.gate(x), self.fc(x), self.act)))  # (B, T, H) inside


class _GatedProduct(torch.autograd.Function):
    """act(gate) * up, keeping only gate and up for the backward and recomputing act(gate) there.
    Autograd of the formula also kept act(gate), a fourth (B, T, H) tensor besides gate, up and the
    product the output projection keeps (modgpt.memory's floor counts three). The gradients are the
    ones autograd computes: the activation's own backward op (`input_grad`) on dy * up, and dy * act."""

    @staticmethod
    def forward(ctx, gate, up, act):
        ctx.act = act
        ctx.save_for_backward(gate, up)
        return act(gate) * up

    @staticmethod
    def backward(ctx, dy):
        gate, up = ctx.saved_tensors
        return ctx.act.input_grad(dy * up, gate), dy * ctx.act(gate), None


# swiglu and glu differ only in the activation, which cfg.ffn_activation already resolves.
FFNS.register("swiglu")(GatedFFN)
FFNS.register("glu")(GatedFFN)
