"""GPT as torch modules, the reference: the math and nothing else, read side by side with
modgpt_jax/model.py (the same class, attribute and hook names). Components are resolved once from
the registries. Imports nothing from torch.distributed: parallel.py wraps the model after it is
built, and kernels.apply_kernels swaps in leaner pieces for the machine (--kernels).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from modgpt.config import ModelConfig
from modgpt_torch.components import ATTENTION, FFNS, NORMS, POSITIONS
from modgpt_torch.components.loss import CrossEntropy


class CausalSelfAttention(nn.Module):
    """Causal self-attention (multi-head, grouped- or multi-query); q/k rotation and attention bias
    come from the position hooks."""

    def __init__(self, cfg: ModelConfig, pos):
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.n_embd, cfg.qkv_size, bias=cfg.bias)  # [q | k | v] (weights.py)
        if cfg.qk_norm:  # per-head norms over head_dim, shared by all heads
            self.q_norm = NORMS.get(cfg.normalization)(cfg, cfg.head_dim)
            self.k_norm = NORMS.get(cfg.normalization)(cfg, cfg.head_dim)
        self.qk_norm = cfg.qk_norm
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout  # attention dropout: the kernel draws it on the probabilities
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.kernel = ATTENTION.get(cfg.attention_backend)
        self._pos = [pos]  # the shared, parameter-free position hooks (a list: not a child module)

    @property
    def pos(self):
        return self._pos[0]

    def project(self, x_BxTxD):
        """q (B, nh, T, hd), k and v (B, nkv, T, hd): the qkv projection's column blocks."""
        B, T, D = x_BxTxD.shape
        nh, nkv, hd = self.n_head, self.n_kv, self.hd
        q, k, v = self.qkv(x_BxTxD).split([nh * hd, nkv * hd, nkv * hd], dim=2)  # head h = cols h*hd..
        return (q.view(B, T, nh, hd).transpose(1, 2), k.view(B, T, nkv, hd).transpose(1, 2),
                v.view(B, T, nkv, hd).transpose(1, 2))

    def forward(self, x_BxTxD, pos_T):
        B, T, D = x_BxTxD.shape
        q, k, v = self.project(x_BxTxD)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.pos.rotate(q, k, pos_T)
        p = self.dropout if self.training else 0.0
        y = self.kernel(q, k, v, self.pos.bias(pos_T), p)  # (B, nh, T, hd)
        return self.resid_drop(self.proj(y.transpose(1, 2).contiguous().view(B, T, D)))


class Block(nn.Module):
    """One transformer block, pre- or post-norm."""

    def __init__(self, cfg: ModelConfig, pos):
        super().__init__()
        Norm = NORMS.get(cfg.normalization)
        self.norm1 = Norm(cfg)
        self.attn = CausalSelfAttention(cfg, pos)
        self.norm2 = Norm(cfg)
        self.ffn = FFNS.get(cfg.ffn_type)(cfg)
        self.pre = cfg.norm_position == "pre"

    def forward(self, x_BxTxD, pos_T):
        if self.pre:
            x = x_BxTxD + self.attn(self.norm1(x_BxTxD), pos_T)
            return x + self.ffn(self.norm2(x))
        x = self.norm1(x_BxTxD + self.attn(x_BxTxD, pos_T))
        return self.norm2(x + self.ffn(x))


class GPT(nn.Module):
    """A GPT whose components are named in the config (docs/backend_contract.md)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        Pos = POSITIONS.get(cfg.position_encoding)
        self.pos = Pos(cfg)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        rows = Pos.embedding_rows(cfg)
        self.wpe = nn.Embedding(rows, cfg.n_embd) if rows else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg, self.pos) for _ in range(cfg.n_layer)])
        self.norm_f = NORMS.get(cfg.normalization)(cfg) if cfg.final_norm else None
        self.lm_head = None if cfg.weight_tying else nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.loss = CrossEntropy()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, std) for matrices and embeddings, std/sqrt(2L) for residual projections."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.ndim >= 2:
                scaled = name.endswith(("attn.proj.weight", "ffn.proj.weight"))
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.cfg.n_layer) if scaled else std)
            elif name.endswith("weight") and "norm" in name.split(".")[-2]:  # norm1, norm_f, q_norm
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)  # biases (linear and norm)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx_BxT, targets_BxT=None):
        """idx (B, T) int -> (logits (B, T, V), mean cross-entropy in float32 or None)."""
        T = idx_BxT.shape[1]
        assert T <= self.cfg.block_size, f"sequence length {T} > block_size {self.cfg.block_size}"
        pos_T = torch.arange(T, device=idx_BxT.device)
        x = self.drop(self.pos.embed(self.wte(idx_BxT), self.wpe, pos_T))  # (B, T, D)
        for block in self.blocks:
            x = block(x, pos_T)
        if self.norm_f is not None:
            x = self.norm_f(x)
        # tied: the token embedding is the LM head (logits = x @ wte.T)
        logits = self.lm_head(x) if self.lm_head is not None else F.linear(x, self.wte.weight)
        return logits, None if targets_BxT is None else self.loss(logits, targets_BxT)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None):
        """Append max_new_tokens sampled tokens to idx (B, T); temperature 0 = greedy."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.cfg.block_size:])
            logits = logits[:, -1, :].float()  # (B, V)
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                nxt = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


def build(cfg: ModelConfig, device=None) -> GPT:
    """Construct (and optionally move) a model from the model config."""
    model = GPT(cfg)
    return model.to(device) if device is not None else model
