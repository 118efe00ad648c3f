"""Normalization over the last dim, written as formulas; math in float32, output in the input's
dtype. eps = config.norm_eps. Built as Norm(cfg) over n_embd, or Norm(cfg, dim=head_dim) for qk_norm.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from modgpt.config import ModelConfig
from modgpt.registry import Registry

NORMS = Registry("normalization")


class _LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * weight (+ bias); var biased."""
    has_bias = True

    def __init__(self, cfg: ModelConfig, dim: int | None = None):
        super().__init__()
        dim = dim or cfg.n_embd
        self.eps = cfg.norm_eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if self.has_bias else None

    def forward(self, x):
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), (x.shape[-1],), self.weight.float(), b, self.eps).to(x.dtype)


@NORMS.register("layernorm")
class LayerNorm(_LayerNorm):
    """LayerNorm with weight and bias (GPT-2)."""


@NORMS.register("layernorm_nobias")
class LayerNormNoBias(_LayerNorm):
    """LayerNorm with a weight only."""
    has_bias = False


@NORMS.register("rmsnorm")
class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight (llama)."""

    def __init__(self, cfg: ModelConfig, dim: int | None = None):
        super().__init__()
        self.eps = cfg.norm_eps
        self.weight = nn.Parameter(torch.ones(dim or cfg.n_embd))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(x.dtype)
