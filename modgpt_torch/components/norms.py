"""Normalization layers; math in float32, output in the input's dtype. eps = config.norm_eps.

Built as Norm(cfg) over n_embd, or Norm(cfg, dim=head_dim) for qk_norm (normalizes the last dim).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from modgpt.config import ModelConfig
from modgpt.registry import Registry

NORMS = Registry("normalization")


class _LayerNorm(nn.Module):
    """LayerNorm over the last dim, with or without a bias."""
    has_bias = True

    def __init__(self, cfg: ModelConfig, dim: int | None = None):
        super().__init__()
        dim = dim or cfg.n_embd
        self.eps = cfg.norm_eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if self.has_bias else None

    def forward(self, x):
        b = self.bias.float() if self.bias is not None else None
        y = F.layer_norm(x.float(), (x.shape[-1],), self.weight.float(), b, self.eps)
        return y.to(x.dtype)


@NORMS.register("layernorm")
class LayerNorm(_LayerNorm):
    """LayerNorm with weight and bias (GPT-2)."""
    has_bias = True


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
        return _RMSNorm.apply(x, self.weight, self.eps)


class _RMSNorm(torch.autograd.Function):
    """x * rsqrt(mean(x^2) + eps) * weight in float32 that keeps only x (in its own dtype) and the
    float32 rstd for the backward, like F.layer_norm: autograd of the formula kept x, its float32
    copy and the normalized x (three tensors of the input's size per norm; modgpt.memory's floor is
    one). The backward is the textbook one, the same as the JAX backend's."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        x32 = x.float()
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, rstd, weight)
        return (x32 * rstd * weight.float()).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, rstd, weight = ctx.saved_tensors
        xhat = x.float() * rstd
        dy32 = dy.float()
        g = dy32 * weight.float()
        dx = rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))
        dw = (dy32 * xhat).reshape(-1, xhat.shape[-1]).sum(0)
        return dx.to(x.dtype), dw.to(weight.dtype), None
