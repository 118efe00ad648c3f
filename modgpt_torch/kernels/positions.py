"""Kernel rope_tables: one cos/sin table for every layer and step, made once per device (computed per
call, each layer's copy was kept for its backward). The torch model's positions are always 0..T-1."""
from __future__ import annotations

import torch

from modgpt_torch.components.positions import RoPE, rope_cos_sin


class TabledRoPE(RoPE):
    def tables(self, pos_T):
        T = pos_T.shape[0]
        c = getattr(self, "_tables", None)
        if c is None or c[0].shape[0] < T or c[0].device != pos_T.device:
            rows = torch.arange(max(T, self.cfg.block_size), device=pos_T.device)
            c = self._tables = rope_cos_sin(rows, self.cfg.head_dim, self.cfg.rope_theta)
        return c[0][:T], c[1][:T]


SWAPS = {RoPE: TabledRoPE}
