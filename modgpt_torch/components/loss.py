"""The training loss: mean cross-entropy over every position, in float32."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class CrossEntropy(nn.Module):
    """logits (B, T, V) in any float dtype, targets (B, T) -> a float32 scalar."""

    def forward(self, logits, targets):
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1).long())
