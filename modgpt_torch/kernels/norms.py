"""Kernel norm_backward: RMSNorm that keeps only x (in its own dtype) and the float32 rstd for the
backward, as F.layer_norm does (autograd of the formula keeps x, its float32 copy and the normalized
x: three tensors of the input's size per norm where the memory floor counts one). The backward is the
textbook one, the same as the JAX kernel's."""
from __future__ import annotations

import torch

from modgpt_torch.components.norms import RMSNorm


class _RMSNorm(torch.autograd.Function):
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


class LeanRMSNorm(RMSNorm):
    def forward(self, x):
        return _RMSNorm.apply(x, self.weight, self.eps)


SWAPS = {RMSNorm: LeanRMSNorm}
