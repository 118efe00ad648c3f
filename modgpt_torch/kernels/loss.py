"""Kernel blocked_cross_entropy: the loss with the memory the floor allows.

F.cross_entropy(logits.float()) (the reference) keeps the float32 log-probabilities for its backward,
which holds three float32 N x V tensors at once (the saved log-probabilities, nll_loss's dense
gradient and log_softmax's) where the floor (modgpt.memory, "logits_and_grad") counts two. This one
keeps the logits in their own dtype and one float32 log-sum-exp per row, and its backward writes
softmax - onehot straight into a gradient of the logits' dtype, a block of rows at a time.
"""
from __future__ import annotations

import torch

from modgpt_torch.components.loss import CrossEntropy

BLOCK_ELEMENTS = 1 << 26  # float32 elements of one block's temporaries (256 MiB)


def _blocks(n_rows: int, n_cols: int):
    step = max(1, BLOCK_ELEMENTS // max(n_cols, 1))
    return [(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets):  # logits (N, V), targets (N,) int64
        N, V = logits.shape
        lse = torch.empty(N, dtype=torch.float32, device=logits.device)
        for a, b in _blocks(N, V):
            lse[a:b] = torch.logsumexp(logits[a:b].float(), dim=-1)
        picked = logits.gather(1, targets[:, None]).squeeze(1).float()
        ctx.save_for_backward(logits, targets, lse)
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx, g):
        logits, targets, lse = ctx.saved_tensors
        N, V = logits.shape
        grad = torch.empty_like(logits)
        scale = g.float() / N
        for a, b in _blocks(N, V):
            p = logits[a:b].to(torch.float32, copy=True).sub_(lse[a:b, None]).exp_()  # softmax rows
            p[torch.arange(b - a, device=p.device), targets[a:b]] -= 1.0
            grad[a:b] = p.mul_(scale)
        return grad, None


class BlockedCrossEntropy(CrossEntropy):
    def forward(self, logits, targets):
        return _CrossEntropy.apply(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long())


SWAPS = {CrossEntropy: BlockedCrossEntropy}
