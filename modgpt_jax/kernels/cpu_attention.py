"""Kernel cpu_attention (CPU): causal attention in query blocks with a hand-written backward, and
memory-lean manual attention.

The block kernel computes the scores below the diagonal only (4 blocks: 5/8 of the T x T work) and
keeps each row's max and log-sum instead of the probabilities, which the backward computes again,
bit for bit (the floor's attention activations, modgpt.memory). XLA:CPU's matmul library takes a
row-major left operand only, so the transposed products are written out (_tn).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from modgpt_jax.components import attention as reference
from modgpt_jax.components.attention import causal_mask
from modgpt_jax.components.positions import PositionEncoding
from modgpt_jax.kernels.backward import fresh
from modgpt_jax.kernels.dropout import drop, fusable
from modgpt_jax.model import CausalSelfAttention


def _query_blocks(T: int) -> int:
    """Query blocks for the causal kernel: 4, 2 or 1, each of at least 32 rows."""
    return next(c for c in (4, 2, 1) if c == 1 or (T % c == 0 and T // c >= 32))


def _tn(a, b):
    """a^T @ b over the leading dims: a (..., t, S), b (..., t, H) -> (..., S, H).

    Computed as (b^T @ a)^T with the narrow b^T materialized: XLA:CPU's library matmul takes a
    row-major left operand only; the transposed-left form falls back to a slower generic matmul.
    The barriers keep XLA from folding the transposes back into the dot."""
    bt = jax.lax.optimization_barrier(jnp.swapaxes(b, -1, -2))
    return jnp.swapaxes(jax.lax.optimization_barrier(bt @ a), -1, -2)


def _row_stats(s):
    """(max, log-sum) of each row of the scores s: P = exp((s - max) - log-sum) (below)."""
    m = jnp.max(s, axis=-1, keepdims=True)
    return m, jnp.log(jnp.sum(jnp.exp(s - m), axis=-1, keepdims=True))


def _from_stats(s, m, ls):
    return jnp.exp((s - m) - ls)


def _probabilities(s):
    """Softmax over the last dim as exp((s - max) - log(sum)), not exp(s - max) / sum: XLA:CPU fused
    that division into the backward's use of P and so kept the exponentials as well as P
    (docs/performance.md, Memory). Within float32 rounding of the division (mean relative error
    1.5e-7 against 0.9e-7); exp(s - lse) would be coarser (2.6e-7), enough to flip a ReLU kink in
    the parity suite."""
    return _from_stats(s, *_row_stats(s))


def _window(p, row, T):
    """(start, full) of the probability block p (B, nh, c, S) whose first row is `row`, within the
    (B, nh, T, T) mask the manual path draws: both paths drop the same entries."""
    return (0, 0, row, 0), p.shape[:2] + (T, T)


def _dropped_again(p, dpd, key, rate, start=None, full=None):
    """The backward of drop(P) @ V on P's side: drop(P) for dV, made anew from `fresh(P)` (not merged
    with the forward's, which is then freed), and dP = drop(dY V^T) (same mask and scale)."""
    return drop(fresh(p, dpd), key, rate, start, full), drop(dpd, key, rate, start, full)


def _scores(qs, k, i: int, c: int, bias=None):
    """Scaled scores of query block i (rows i*c..(i+1)*c) against keys 0..(i+1)*c, plus that window
    of the additive bias (T, T) or (nh, T, T) if any, causally masked, float32: (B, nh, c, (i+1)*c)."""
    S = (i + 1) * c
    s = jnp.matmul(qs[..., i * c:S, :], jnp.swapaxes(k[..., :S, :], -1, -2), preferred_element_type=jnp.float32)
    if bias is not None:
        s = s + bias[..., i * c:S, :S].astype(jnp.float32)
    return jnp.where(jnp.tril(jnp.ones((c, S), bool), S - c), s, -jnp.inf)


def _causal_fwd(q, k, v, bias, n_blocks, rate, keep, key):
    """q, k, v (B, nh, T, hd); bias None or an additive (T, T) / (nh, T, T) score bias (ALiBi's:
    a constant, so it gets no gradient). Query block i (rows i*c..(i+1)*c) sees keys 0..(i+1)*c
    only, so the fully masked blocks above the diagonal are never computed (4 blocks: 5/8 of the
    T x T work).
    keep: the backward reads the probabilities kept here; else (the model's choice) only each row's
    max and log-sum are kept (the floor's attention activations, modgpt.memory) and the backward
    computes the scores again and P from them with the same formula, the forward's P bit for bit.
    rate > 0: attention dropout on P with `key`; the backward draws the masks again instead of
    keeping them (an elementwise hash XLA fuses into the matmul inputs; dropout.keep_mask)."""
    T = q.shape[-2]
    c = T // n_blocks
    qs = q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    ys, kept = [], []
    for i in range(n_blocks):
        S = (i + 1) * c
        s = _scores(qs, k, i, c, bias)
        m, ls = _row_stats(s)
        p = _from_stats(s, m, ls).astype(v.dtype)
        kept.append(p if keep else (m, ls))
        pd = drop(p, key, rate, *_window(p, i * c, T)) if rate else p
        ys.append(pd @ v[..., :S, :])
    return jnp.concatenate(ys, axis=-2), (qs, k, v, bias, kept, key)


def _causal_bwd(n_blocks, rate, keep, res, dy):
    """The softmax-attention backward, written out: dP = dY V^T, dS = P * (dP - rowsum(P * dP)),
    dQ = dS K / sqrt(hd), dK = dS^T Q / sqrt(hd), dV = P^T dY. Each query block holds whole rows of
    P, so rowsum(P * dP) is taken there; flash kernels use the equal rowsum(dY * Y) instead, but
    reading Y kept the attention output twice for the backward (here and, transposed, for the output
    projection's weight gradient).
    With dropout, Y = drop(P) V: dV = drop(P)^T dY and dP = drop(dY V^T) (the same mask and
    scale), and rowsum(P * dP) is still rowsum(dY * Y)."""
    qs, k, v, bias, kept, key = res
    k, v = fresh(k, dy), fresh(v, dy)  # slice k and v anew here, so the forward's slices are freed
    if not keep:  # q's blocks too (XLA kept a transposed copy of them otherwise)
        qs = fresh(qs, dy)
    T = qs.shape[-2]
    c = T // n_blocks
    scale = jnp.asarray(1.0 / math.sqrt(qs.shape[-1]), qs.dtype)
    dq, dk, dv = [], 0, 0
    for i in range(n_blocks):
        S = (i + 1) * c
        dyi = dy[..., i * c:S, :]
        if keep:
            p = kept[i]
        else:  # the statistics anew too: XLA otherwise keeps the forward's row max broadcast to the
            # whole block (its fusion's output) for this use, a block-sized buffer per layer
            m, ls = (fresh(a, dyi[..., :1]) for a in kept[i])
            p = _from_stats(_scores(qs, k, i, c, bias), m, ls).astype(v.dtype)
        dp = jnp.matmul(dyi, jnp.swapaxes(v[..., :S, :], -1, -2), preferred_element_type=jnp.float32)
        pd = p
        if rate:
            pd, dp = _dropped_again(p, dp, key, rate, *_window(p, i * c, T))
        pf = p.astype(jnp.float32)
        delta = jnp.sum(pf * dp, axis=-1, keepdims=True)
        ds = (pf * (dp - delta)).astype(qs.dtype)  # (B, nh, c, S)
        dq.append((ds @ k[..., :S, :]) * scale)
        pad = [(0, 0)] * (qs.ndim - 2) + [(0, T - S), (0, 0)]  # keys past S got nothing from block i
        dk = dk + jnp.pad(_tn(ds, qs[..., i * c:S, :]), pad)
        dv = dv + jnp.pad(_tn(pd, dyi), pad)
    return jnp.concatenate(dq, axis=-2), dk, dv, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _causal(q, k, v, bias, n_blocks, rate, keep, key):
    return _causal_fwd(q, k, v, bias, n_blocks, rate, keep, key)[0]


_causal.defvjp(_causal_fwd, _causal_bwd)


def causal_attention(q, k, v, n_blocks: int = 1, dropout=None, keep: bool = False, bias=None):
    """Causal softmax attention on (B, nh, T, hd), T == S, scale 1/sqrt(hd), float32 softmax, with a
    hand-written backward; n_blocks query blocks (dividing T) skip the masked upper blocks.
    dropout: an AttentionDropout (rate and key) applied to the probabilities. keep: the backward
    reads the forward's probabilities rather than computing them again (the same numbers, a little
    faster, further above the memory floor: not the model's choice). bias: an additive (T, T) or
    (nh, T, T) score bias without gradient (ALiBi's), or None."""
    if dropout is None:
        return _causal(q, k, v, bias, n_blocks, 0.0, keep, None)
    return _causal(q, k, v, bias, n_blocks, dropout.rate, keep, dropout.key)


def cpu_causal(q, k, v, dropout=None, bias=None):
    """(B, T, nh, hd) wrapper of causal_attention (kv heads repeated for grouped-query); bias (T, T)
    or (nh, T, T), or None."""
    if k.shape[2] != q.shape[2]:
        k, v = (jnp.repeat(t, q.shape[2] // k.shape[2], axis=2) for t in (k, v))
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))  # (B, nh, T, hd)
    return jnp.swapaxes(causal_attention(q, k, v, _query_blocks(q.shape[-2]), dropout, bias=bias), 1, 2)


@jax.custom_vjp
def softmax(s):
    """Softmax over the last dim whose backward keeps only its output P: dS = P * (dP - rowsum(dP * P)).
    (jax.nn.softmax keeps P too, but XLA then kept the exponentials it is divided from as well, a
    second T x S tensor per layer.)"""
    return _probabilities(s)


def _softmax_fwd(s):
    p = _probabilities(s)
    return p, p


def _softmax_bwd(p, dp):
    return (p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _dropped_attend(p, v, key, rate):
    """drop(P) @ V for the manual path, (B, nh, T, S) x (B, S, nh, hd), with a backward that keeps P
    (the softmax keeps it anyway) and drops it again rather than keeping drop(P) too: dV =
    drop(P)^T dY, dP = drop(dY V^T), the masks drawn again from the key (dropout.keep_mask)."""
    return jnp.einsum("bnts,bsnh->btnh", drop(p, key, rate), v)


def _dropped_attend_fwd(p, v, key, rate):
    return _dropped_attend(p, v, key, rate), (p, v, key)


def _dropped_attend_bwd(rate, res, dy):
    p, v, key = res
    dyt, vt = jnp.swapaxes(dy, 1, 2), jnp.swapaxes(v, 1, 2)  # (B, nh, T, hd), (B, nh, S, hd)
    pd, dp = _dropped_again(p, dyt @ jnp.swapaxes(vt, -1, -2), key, rate)
    return dp, jnp.swapaxes(_tn(pd, dyt), 1, 2), None


_dropped_attend.defvjp(_dropped_attend_fwd, _dropped_attend_bwd)


def manual(q, k, v, bias=None, mask=None, dropout=None):
    """components.attention.manual with backwards that keep the probabilities once: the softmax's
    (above) and drop(P) @ V's (_dropped_attend), the masks drawn again."""
    T, S, hd = q.shape[1], k.shape[1], q.shape[-1]
    if k.shape[2] != q.shape[2]:
        k, v = (jnp.repeat(t, q.shape[2] // k.shape[2], axis=2) for t in (k, v))
    att = jnp.einsum("btnh,bsnh->bnts", q, k).astype(jnp.float32) * (1.0 / math.sqrt(hd))  # (B, nh, T, S)
    if bias is not None:
        att = att + bias.astype(jnp.float32)
    att = jnp.where(causal_mask(T, S) if mask is None else mask, att, -jnp.inf)
    att = softmax(att).astype(q.dtype)
    if dropout is not None:
        return _dropped_attend(att, v, dropout.key, dropout.rate)
    return jnp.einsum("bnts,bsnh->btnh", att, v)


def sdpa(q, k, v, bias=None, mask=None, dropout=None):
    """Causal training attention (with or without a position bias or dropout) in the block kernel
    (XLA's own attention was about 2x slower here and keeps the T x S scores); the sampler's masked
    calls as the reference does them; dropout whose masks the kernel cannot draw in blocks (another
    PRNG) in manual above."""
    B, T, nh, hd = q.shape
    if mask is None and (dropout is None or fusable(dropout.key, (B, nh, T, T), 1.0 - dropout.rate)):
        return cpu_causal(q, k, v, dropout, bias)
    if dropout is not None:
        return manual(q, k, v, bias, mask, dropout)
    return reference.sdpa(q, k, v, bias, mask)


class CPUAttention(CausalSelfAttention):
    """The attention with q and k apart from v when RoPE rotates them into new tensors (CPULinear's
    split): v then keeps only its own columns alive for the backward, not the projection's whole
    output (XLA keeps a slice's source)."""

    def project(self, x_BxTxD):
        rotates = type(self.pos).rotate is not PositionEncoding.rotate
        if not (rotates and not self.qk_norm and hasattr(self.qkv, "split")):
            return super().project(x_BxTxD)
        B, T, _ = x_BxTxD.shape
        nh, nkv, hd = self.n_head, self.n_kv, self.hd
        qk, v = self.qkv.split(x_BxTxD, (nh + nkv) * hd)
        q, k = jnp.split(qk, [nh * hd], axis=-1)
        return q.reshape(B, T, nh, hd), k.reshape(B, T, nkv, hd), v.reshape(B, T, nkv, hd)


KERNELS = {"sdpa": sdpa, "manual": manual}
SWAPS = {CausalSelfAttention: CPUAttention}


def describe(backend: str, dtype, T: int, nh: int, dropout: float) -> str:
    """What the CPU attention runs for a training call of this shape, in words."""
    if backend == "manual":
        return "manual (explicit softmax: T x S probabilities, kept once)"
    if dropout and not fusable(jax.random.key(0), (1, nh, T, T), 1.0 - dropout):
        return "manual (T x S probabilities kept: the dropout masks cannot be drawn in blocks)"
    return "causal block kernel (CPU" + ("; attention dropout inside it)" if dropout else ")")
