"""The [core] FLOPs calculator against XLA's own count of the compiled forward+backward.

What each side counts:
- modgpt.flops.count: matmul FLOPs only, 6 x N_matmul + 12 x L x H x hd x T per token (PaLM
  convention: the full T x T attention square, LM head once, no embedding lookups), x B x T tokens.
- XLA (`jit(value_and_grad(loss)).lower(...).compile()`): every `dot` instruction of the optimized
  HLO is 2 x (output elements) x (contracted size), which we add up from the HLO text; and
  cost_analysis()['flops'], which is those dots plus one FLOP per element of every elementwise op
  (norms, softmax, activations, RoPE, the loss, the embedding-gradient scatter).
Checks: the dot FLOPs equal the calculator exactly (both are integer counts of the same matmuls),
less, for the CPU sdpa kernel, exactly the above-diagonal attention blocks it skips;
the cost-analysis total is above it by the elementwise work only, under 15% at this tiny width
(measured 2.6% for llama/team, 10.6% for gpt2/hybrid, where exact GELU's erf polynomial is
costed element by element; the share falls as n_embd grows, since matmuls scale with D^2).
"""
from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from modgpt import flops as F
from modgpt.config import Config
from modgpt.presets import PRESETS, SIZES
from modgpt_jax.kernels.cpu_attention import _query_blocks
from modgpt_jax.kernels import apply_kernels
from modgpt_jax.model import build

SHAPE = re.compile(r"%([\w.\-]+) = [a-z][a-z0-9]*\[([\d,]*)\]")
DOT = re.compile(r"= [a-z][a-z0-9]*\[([\d,]*)\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\)[^\n]*?"
                 r"lhs_contracting_dims=\{([\d,]*)\}")


def dims(s: str) -> list[int]:
    return [int(d) for d in s.split(",") if d]


def hlo_dot_flops(hlo: str) -> tuple[int, int]:
    """(sum of 2 x out elements x contracted size over every dot, number of dots) of an HLO text."""
    shapes = {m.group(1): dims(m.group(2)) for m in SHAPE.finditer(hlo)}
    total = n = 0
    for m in DOT.finditer(hlo):
        lhs = shapes[m.group(2)]
        k = math.prod(lhs[int(i)] for i in m.group(4).split(","))
        total += 2 * math.prod(dims(m.group(1))) * k
        n += 1
    assert n == hlo.count(" dot("), "a dot instruction the pattern did not parse"
    return total, n


def compiled_train_step(cfg: Config, B: int):
    model = build(cfg, 0)
    apply_kernels(model, cfg)
    g, params = nnx.split(model, nnx.Param)
    x = jnp.zeros((B, cfg.model.block_size), jnp.int32)
    f = jax.value_and_grad(lambda p, x, y: nnx.merge(g, p)(x, y)[1])
    return jax.jit(f).lower(params, x, x).compile()


# every preset with the CPU kernels, plus the explicit-softmax attention on one (sdpa is the presets'
# default) and the reference model (XLA's attention) on two
CASES = ([(p, "sdpa", "auto") for p in sorted(PRESETS)] + [("gpt2", "manual", "auto")]
         + [(p, "sdpa", "reference") for p in ("gpt2", "llama")])


@pytest.mark.parametrize("preset,attention,kernels", CASES)
def test_calculator_matches_xla(preset, attention, kernels):
    cfg = Config().replace(**PRESETS[preset], **SIZES["tiny"], vocab_size=65, dropout=0.0,
                           attention_backend=attention, kernels=kernels)
    B, T = 2, cfg.model.block_size
    comp = compiled_train_step(cfg, B)
    calc = F.count(cfg.model).flops_per_token * B * T
    dots, n = hlo_dot_flops(comp.as_text())
    # On CPU, sdpa's causal kernel runs the query rows in nb blocks and skips the blocks above the
    # diagonal, so it performs (nb+1)/(2nb) of the T x T score and value matmuls; the calculator
    # keeps the PaLM convention (the full square) whatever the kernel skips. manual is the full square.
    kernel = attention == "sdpa" and kernels == "auto"  # the CPU causal kernel (ALiBi's bias included)
    nb = _query_blocks(T) if kernel else 1
    L = cfg.model.n_layer
    # With the CPU kernels under RoPE the qkv projection is two matmuls ([q|k] and v: CPULinear.split).
    qkv = 2 if kernels == "auto" and cfg.model.position_encoding == "rope" and not cfg.model.qk_norm else 1
    # per layer: qkv, proj, 2-3 ffn matmuls (x3 with backward) + per query block the attention's
    # forward scores and values and backward dP, dQ, dK, dV, and for the CPU kernel the scores
    # once more (its backward computes P again rather than keeping it); plus the head (x3)
    assert n == 3 * (L * (qkv + 1 + (3 if cfg.model.gated else 2)) + 1) + (7 if kernel else 6) * L * nb
    bd = F.count(cfg.model).breakdown
    attn = (bd["attn_scores"] + bd["attn_values"]) * B * T
    skipped = attn - attn * (nb + 1) // (2 * nb)
    # the recomputed scores (one forward's worth: the breakdown counts forward + backward, 3x) are
    # work the model's FLOPs leave out (PaLM's convention, as for remat)
    again = bd["attn_scores"] // 3 * B * T * (nb + 1) // (2 * nb) if kernel else 0
    assert dots == calc - skipped + again, (dots, calc, skipped, again)
    ca = comp.cost_analysis()
    ca = ca[0] if isinstance(ca, list) else ca
    assert calc - skipped < ca["flops"] < 1.15 * calc, (ca["flops"], calc)
