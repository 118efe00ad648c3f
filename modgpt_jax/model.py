"""GPT as Flax NNX modules, the reference: the math and nothing else. Components are resolved once
from the registries; names and call contract as in modgpt_torch/model.py.

Parameters carry logical axis names; sharding.py maps them to the mesh after the model is built,
and kernels.apply_kernels swaps in faster pieces for the machine (--kernels). Construction never
shards eagerly, so GPT(cfg, rngs=...) works with or without a mesh.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from modgpt.config import ModelConfig
from modgpt_jax.components import ATTENTION, FFNS, NORMS, POSITIONS
from modgpt_jax.components.dropout import AttentionDropout
from modgpt_jax.components.layers import dense, embed

LAYER_AXIS = "layers"  # logical name of the stacked-layer dim when scan_layers=True


def split_key(key, n: int):
    return (None,) * n if key is None else tuple(jax.random.split(key, n))


class CausalSelfAttention(nnx.Module):
    """Causal self-attention (multi-head, grouped- or multi-query); q/k rotation and attention bias
    come from the position hooks."""

    def __init__(self, cfg: ModelConfig, pos, *, rngs: nnx.Rngs):
        D = cfg.n_embd
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.qkv = dense(D, cfg.qkv_size, cfg.bias, cfg.init_std, ("embed", "heads"), rngs)  # [q | k | v] (weights.py)
        if cfg.qk_norm:  # per-head norms over head_dim, shared by all heads
            self.q_norm = NORMS.get(cfg.normalization)(cfg, cfg.head_dim)
            self.k_norm = NORMS.get(cfg.normalization)(cfg, cfg.head_dim)
        self.qk_norm = cfg.qk_norm
        self.proj = dense(D, D, cfg.bias, cfg.init_std / math.sqrt(2 * cfg.n_layer), ("heads", "embed"), rngs)
        self.dropout = cfg.dropout  # attention dropout: the kernel draws it on the probabilities
        self.resid_drop = nnx.Dropout(cfg.dropout)
        self.kernel = ATTENTION.get(cfg.attention_backend)
        self.pos = pos  # the shared, parameter-free position hooks

    def project(self, x_BxTxD):
        """q (B, T, nh, hd), k and v (B, T, nkv, hd): the qkv projection's column blocks."""
        B, T, D = x_BxTxD.shape
        nh, nkv, hd = self.n_head, self.n_kv, self.hd
        q, k, v = jnp.split(self.qkv(x_BxTxD), [nh * hd, (nh + nkv) * hd], axis=-1)  # head h = cols h*hd..
        return q.reshape(B, T, nh, hd), k.reshape(B, T, nkv, hd), v.reshape(B, T, nkv, hd)

    def __call__(self, x_BxTxD, pos_T, mask=None, key=None):
        B, T, D = x_BxTxD.shape
        q, k, v = self.project(x_BxTxD)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.pos.rotate(q, k, pos_T)
        k_att, k_res = split_key(key, 2)
        drop = AttentionDropout(self.dropout, k_att) if key is not None and self.dropout > 0 else None
        y = self.kernel(q, k, v, self.pos.bias(pos_T), mask, drop).reshape(B, T, D)
        return self.resid_drop(self.proj(y), deterministic=key is None, rngs=k_res)


class Block(nnx.Module):
    """One transformer block, pre- or post-norm."""

    def __init__(self, cfg: ModelConfig, pos, *, rngs: nnx.Rngs):
        Norm = NORMS.get(cfg.normalization)
        self.norm1 = Norm(cfg)
        self.attn = CausalSelfAttention(cfg, pos, rngs=rngs)
        self.norm2 = Norm(cfg)
        self.ffn = FFNS.get(cfg.ffn_type)(cfg, rngs=rngs)
        self.pre = cfg.norm_position == "pre"

    def __call__(self, x_BxTxD, pos_T, mask=None, key=None):
        ka, kf = split_key(key, 2)
        if self.pre:
            x = x_BxTxD + self.attn(self.norm1(x_BxTxD), pos_T, mask, ka)
            return x + self.ffn(self.norm2(x), kf)
        x = self.norm1(x_BxTxD + self.attn(x_BxTxD, pos_T, mask, ka))
        return self.norm2(x + self.ffn(x, kf))


def stack_blocks(blocks: list[Block]) -> Block:
    """One Block whose parameters are the per-layer ones stacked on a leading `layers` dim."""
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(nnx.state(b) for b in blocks))
    out = blocks[0]
    nnx.update(out, stacked)
    for _, var in nnx.iter_graph(out):
        if isinstance(var, nnx.Variable) and "out_sharding" in var.get_metadata():
            var.set_metadata("out_sharding", (LAYER_AXIS,) + tuple(var.get_metadata()["out_sharding"]))
    return out


class GPT(nnx.Module):
    """A GPT whose components are named in the config (docs/backend_contract.md). remat: recompute
    each block in the backward pass; scan_layers: the blocks' parameters stacked (leading dim n_layer)
    and run with lax.scan, which compiles one block instead of n_layer. Neither changes the numbers."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, remat: bool = False, scan_layers: bool = False):
        self.cfg = cfg
        self.remat, self.scan_layers = remat, scan_layers
        with nnx.use_eager_sharding(False):
            Pos = POSITIONS.get(cfg.position_encoding)
            self.pos = Pos(cfg)
            self.wte = embed(cfg.vocab_size, cfg.n_embd, cfg.init_std, ("vocab", "embed"), rngs)
            rows = Pos.embedding_rows(cfg)
            self.wpe = embed(rows, cfg.n_embd, cfg.init_std, ("positions", "embed"), rngs) if rows else None
            self.drop = nnx.Dropout(cfg.dropout)
            # the same draws in the same order either way, so scan and plain models start identical
            blocks = [Block(cfg, self.pos, rngs=rngs) for _ in range(cfg.n_layer)]
            self.blocks = stack_blocks(blocks) if scan_layers else nnx.List(blocks)
            self.norm_f = NORMS.get(cfg.normalization)(cfg) if cfg.final_norm else None
            self.lm_head = (None if cfg.weight_tying else
                            dense(cfg.n_embd, cfg.vocab_size, False, cfg.init_std, ("embed", "vocab"), rngs))

    def run_block(self, block, x, pos_T, mask, key):
        """One block of the unrolled stack; under remat its backward recomputes it from its input."""
        if not self.remat:
            return block(x, pos_T, mask, key)
        g, st = nnx.split(block)
        return jax.checkpoint(lambda st, x: nnx.merge(g, st)(x, pos_T, mask, key))(st, x)

    def run_blocks(self, x, pos_T, mask, key):
        keys = None if key is None else jax.random.split(key, self.cfg.n_layer)
        if self.scan_layers:
            g, st = nnx.split(self.blocks)

            def body(h, s_k):
                return nnx.merge(g, s_k[0])(h, pos_T, mask, s_k[1]), None
            x, _ = jax.lax.scan(jax.checkpoint(body) if self.remat else body, x, (st, keys))
            return x
        for i, block in enumerate(self.blocks):
            x = self.run_block(block, x, pos_T, mask, None if keys is None else keys[i])
        return x

    def __call__(self, idx_BxT, targets_BxT=None, *, key=None, pos_T=None, mask=None):
        """idx (B, T) int -> (logits (B, T, V) float32, mean cross-entropy or None). key: the dropout
        PRNG key (None: deterministic, eval mode); pos_T and mask: the sampler's fixed buffer."""
        logits = self.head(self.features(idx_BxT, key=key, pos_T=pos_T, mask=mask))
        return logits, None if targets_BxT is None else cross_entropy(logits, targets_BxT)

    def features(self, idx_BxT, *, key=None, pos_T=None, mask=None):
        """idx (B, T) int -> the final norm's output (B, T, D): everything before the LM head."""
        T = idx_BxT.shape[1]
        pos_T = jnp.arange(T) if pos_T is None else pos_T
        k_emb, k_blocks = split_key(key, 2)
        x = self.pos.embed(self.wte(idx_BxT), self.wpe, pos_T)  # (B, T, D)
        x = self.drop(x, deterministic=key is None, rngs=k_emb)
        x = self.run_blocks(x, pos_T, mask, k_blocks)
        return x if self.norm_f is None else self.norm_f(x)

    def head(self, x_BxTxD):
        """(B, T, D) -> logits (B, T, V) float32; tied: the token embedding is the LM head (x @ wte.T)."""
        logits = self.lm_head(x_BxTxD) if self.lm_head is not None else self.wte.attend(x_BxTxD)
        return logits.astype(jnp.float32)


def cross_entropy(logits_BxTxV, targets_BxT):
    """Mean cross-entropy over all B*T targets, in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV.astype(jnp.float32), targets_BxT).mean()


def build(cfg, seed: int = 0) -> GPT:
    """GPT from a whole Config (system.remat / scan_layers honoured) or a ModelConfig, seeded."""
    if isinstance(cfg, ModelConfig):
        return GPT(cfg, rngs=nnx.Rngs(params=seed))
    return GPT(cfg.model, rngs=nnx.Rngs(params=seed), remat=cfg.system.remat, scan_layers=cfg.system.scan_layers)
