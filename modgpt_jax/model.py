"""GPT as Flax NNX modules: components resolved once from the registries; names per the contract.

No mesh axis names here: parameters carry logical axis names and sharding.py maps them.
Construction never shards eagerly (`nnx.use_eager_sharding(False)`), so GPT(cfg, rngs=...) works with
or without a mesh; sharding.shard_model places the parameters afterwards.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from modgpt.config import ModelConfig
from modgpt_jax.components import ATTENTION, FFNS, NORMS, POSITIONS
from modgpt_jax.components.backward import fresh
from modgpt_jax.components.dropout import AttentionDropout, Dropout
from modgpt_jax.components.layers import dense, embed
from modgpt_jax.components.positions import PositionEncoding

LAYER_AXIS = "layers"  # logical name of the stacked-layer dim when scan_layers=True


def _split(key, n):
    return (None,) * n if key is None else tuple(jax.random.split(key, n))


class CausalSelfAttention(nnx.Module):
    """Causal self-attention (multi-head, grouped- or multi-query); q/k rotation and attention bias
    come from the position hooks."""

    def __init__(self, cfg: ModelConfig, pos, *, rngs: nnx.Rngs):
        D = cfg.n_embd
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        # out = [q | k | v] column blocks (modgpt/weights.py)
        self.qkv = dense(D, cfg.qkv_size, cfg.bias, cfg.init_std, ("embed", "heads"), rngs)
        if cfg.qk_norm:  # per-head norms over head_dim, shared by all heads
            self.q_norm = NORMS.get(cfg.normalization)(cfg, cfg.head_dim)
            self.k_norm = NORMS.get(cfg.normalization)(cfg, cfg.head_dim)
        self.qk_norm = cfg.qk_norm
        self.proj = dense(D, D, cfg.bias, cfg.init_std / math.sqrt(2 * cfg.n_layer), ("heads", "embed"), rngs)
        self.attn_drop = Dropout(cfg.dropout)  # its rate; the kernel draws the mask (AttentionDropout)
        self.resid_drop = Dropout(cfg.dropout)
        self.kernel = ATTENTION.get(cfg.attention_backend)
        self.pos = pos  # param-free hooks object (static)
        # rotated q and k are new tensors (a q/k norm's backward reads the projection's q and k)
        self.v_apart = type(pos).rotate is not PositionEncoding.rotate and not cfg.qk_norm

    def __call__(self, x_BxTxD, pos_T, mask=None, key=None):
        B, T, D = x_BxTxD.shape
        nh, nkv, hd = self.n_head, self.n_kv, self.hd
        if self.v_apart:  # q and k become new tensors below; v its own (Linear.split)
            qk, v = self.qkv.split(x_BxTxD, (nh + nkv) * hd)
            q, k = jnp.split(qk, [nh * hd], axis=-1)
        else:
            q, k, v = jnp.split(self.qkv(x_BxTxD), [nh * hd, (nh + nkv) * hd], axis=-1)  # head h = cols h*hd..
        q = q.reshape(B, T, nh, hd)  # (B, T, nh, hd)
        k, v = (t.reshape(B, T, nkv, hd) for t in (k, v))  # (B, T, nkv, hd)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.pos.rotate(q, k, pos_T)
        k_att, k_res = _split(key, 2)
        rate = self.attn_drop.rate
        drop = AttentionDropout(rate, k_att) if key is not None and rate > 0 else None
        y = self.kernel(q, k, v, self.pos.bias(T), mask, drop).reshape(B, T, D)
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
        ka, kf = _split(key, 2)
        if self.pre:
            x = x_BxTxD + self.attn(self.norm1(x_BxTxD), pos_T, mask, ka)
            return x + self.ffn(self.norm2(x), kf)
        x = self.norm1(x_BxTxD + self.attn(x_BxTxD, pos_T, mask, ka))
        return self.norm2(x + self.ffn(x, kf))


def _stack_blocks(blocks: list[Block]) -> Block:
    """One Block whose parameters are the per-layer ones stacked on a leading `layers` dim."""
    states = [nnx.state(b) for b in blocks]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    out = blocks[0]
    nnx.update(out, stacked)
    for _, var in nnx.iter_graph(out):
        if isinstance(var, nnx.Variable) and "out_sharding" in var.get_metadata():
            var.set_metadata("out_sharding", (LAYER_AXIS,) + tuple(var.get_metadata()["out_sharding"]))
    return out


def _recomputed(graphdef, state, x, pos_T, mask, key):
    """One block whose backward recomputes it (remat), keeping only its inputs from the forward.

    The backward ties the block's input to the incoming gradient (backward.fresh) before it
    recomputes, so XLA can neither merge the recomputation with the forward's (and keep the
    forward's activations) nor schedule it before the blocks after it are done. jax.checkpoint on
    each block of this unrolled loop left XLA:CPU's plan unchanged; a scan over the blocks' weights
    stacked for the call worked but copied the weights and their gradients every step (gpt2 at the
    CPU size: 1.19 x the floor that way, 1.08 this way; docs/performance.md). Numbers equal to the
    plain model's (tests/jax/test_model.py)."""
    def run(state, x):
        return nnx.merge(graphdef, state)(x, pos_T, mask, key)

    @jax.custom_vjp
    def block(state, x):
        return run(state, x)

    def fwd(state, x):
        return run(state, x), (state, x)

    def bwd(res, dy):
        state, x = res
        return jax.vjp(run, state, fresh(x, dy))[1](dy)

    block.defvjp(fwd, bwd)
    return block(state, x)


class GPT(nnx.Module):
    """A GPT whose components are named in the config (see docs/backend_contract.md).

    remat: recompute each block in the backward pass. scan_layers: the blocks' parameters are stacked
    (leading dim n_layer) and run with lax.scan, which compiles one block instead of n_layer.
    Both change memory/compile time only, never the numbers (tests/jax/test_model.py).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, remat: bool = False, scan_layers: bool = False):
        self.cfg = cfg
        self.remat, self.scan_layers = remat, scan_layers
        with nnx.use_eager_sharding(False):
            Pos = POSITIONS.get(cfg.position_encoding)
            self.pos = Pos(cfg)
            self.wte = embed(cfg.vocab_size, cfg.n_embd, cfg.init_std, ("vocab", "embed"), rngs)
            rows = Pos.embedding_rows(cfg)
            self.wpe = embed(rows, cfg.n_embd, cfg.init_std, ("positions", "embed"), rngs) if rows else None
            self.drop = Dropout(cfg.dropout)
            # the same draws in the same order either way, so scan and plain models start identical
            blocks = [Block(cfg, self.pos, rngs=rngs) for _ in range(cfg.n_layer)]
            self.blocks = _stack_blocks(blocks) if scan_layers else nnx.List(blocks)
            self.norm_f = NORMS.get(cfg.normalization)(cfg) if cfg.final_norm else None
            self.lm_head = (None if cfg.weight_tying else
                            dense(cfg.n_embd, cfg.vocab_size, False, cfg.init_std, ("embed", "vocab"), rngs))

    def _blocks(self, x, pos_T, mask, key):
        L = self.cfg.n_layer
        keys = None if key is None else jax.random.split(key, L)
        if self.scan_layers:
            g, st = nnx.split(self.blocks)

            def body(h, s_k):
                s, k = s_k
                return nnx.merge(g, s)(h, pos_T, mask, k), None
            if self.remat:
                body = jax.checkpoint(body)
            x, _ = jax.lax.scan(body, x, (st, keys))
            return x
        if self.remat:
            for i, block in enumerate(self.blocks):
                g, st = nnx.split(block)
                x = _recomputed(g, st, x, pos_T, mask, None if keys is None else keys[i])
            return x
        for i, block in enumerate(self.blocks):
            x = block(x, pos_T, mask, None if keys is None else keys[i])
        return x

    def __call__(self, idx_BxT, key=None, pos_T=None, mask=None):
        """idx (B, T) int -> logits (B, T, V) float32. key: dropout PRNG key (None = deterministic)."""
        return self.head(self.features(idx_BxT, key, pos_T, mask))

    def features(self, idx_BxT, key=None, pos_T=None, mask=None):
        """idx (B, T) int -> the final norm's output (B, T, D): everything before the LM head."""
        B, T = idx_BxT.shape
        if pos_T is None:
            pos_T = jnp.arange(T)
        k_emb, k_blocks = _split(key, 2)
        x = self.pos.embed(self.wte(idx_BxT), self.wpe, pos_T)  # (B, T, D)
        x = self.drop(x, deterministic=key is None, rngs=k_emb)
        x = self._blocks(x, pos_T, mask, k_blocks)
        if self.norm_f is not None:
            x = self.norm_f(x)
        return x

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
