"""Feed-forward blocks: standard = proj(act(fc(x))); gated = proj(act(gate(x)) * fc(x))."""
from __future__ import annotations

import torch.nn as nn

from modgpt.config import ModelConfig
from modgpt.registry import Registry
from modgpt_torch.components.activations import ACTIVATIONS

FFNS = Registry("ffn_type")


@FFNS.register("standard")
class StandardFFN(nn.Module):
    """fc -> activation -> proj -> dropout (GPT-2 MLP)."""
    gated = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, F = cfg.n_embd, cfg.ffn_hidden_size
        self.act = ACTIVATIONS.get(cfg.ffn_activation)()
        self.fc = nn.Linear(D, F, bias=cfg.bias)  # value / up projection
        if self.gated:
            self.gate = nn.Linear(D, F, bias=cfg.bias)
        self.proj = nn.Linear(F, D, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def hidden(self, x_BxTxD):
        return self.act(self.fc(x_BxTxD))  # (B, T, F)

    def forward(self, x_BxTxD):
        return self.drop(self.proj(self.hidden(x_BxTxD)))


@FFNS.register("swiglu")
class SwiGLU(StandardFFN):
    """proj(silu(gate(x)) * fc(x)) (config.ffn_activation is silu for swiglu)."""
    gated = True

    def hidden(self, x_BxTxD):
        return self.act(self.gate(x_BxTxD)) * self.fc(x_BxTxD)  # (B, T, F)


@FFNS.register("glu")
class GLU(SwiGLU):
    """proj(act(gate(x)) * fc(x)) with the configured activation (GeGLU, ReGLU, ...)."""
