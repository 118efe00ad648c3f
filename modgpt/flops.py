"""Parameters and training FLOPs per token from the config alone, with a per-component breakdown.

Convention (PaLM, Chowdhery et al. 2022, appendix B):
    train FLOPs/token = 6 x N_matmul + 12 x L x H x hd x T
where N_matmul counts the weights of every matmul a token passes through: q/k/v (n_embd x
(n_head + 2 n_kv_head) hd: grouped-query attention shrinks the k and v projections only) and output
projections, the FFN matrices (2 for standard, 3 for gated), and the LM head, counted once whether
tied to the embedding or not. Embedding lookups are not matmuls and are not counted. The attention
term counts the score (QK^T) and value (AV) matmuls over the full T x T square, not halved for the
causal mask; `flops_per_token_causal` halves it. H is the number of query heads: with grouped-
query attention every query head still scores every key, so the attention term does not shrink.
The factor 6 = 2 (multiply-add) x 3 (forward, plus backward w.r.t. inputs and weights). Biases,
norms (qk_norm included), RoPE, the ALiBi bias add, activations and softmax are non-matmul FLOPs:
estimated and reported separately, never added to the MFU numerator.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

from modgpt.config import ModelConfig

# Rough non-matmul FLOPs per element, forward pass (estimates, shown separately; backward ~2x).
NORM_FLOPS = {"layernorm": 8, "layernorm_nobias": 7, "rmsnorm": 5}
ACT_FLOPS = {"gelu": 8, "gelu_tanh": 9, "silu": 4, "relu": 1, "leaky_relu": 2}
ROPE_FLOPS = 3  # per rotated element: two multiplies and an add
SOFTMAX_FLOPS = 5  # per score: max, sub, exp, sum, div
ALIBI_FLOPS = 1  # per score: the bias add


@dataclass(frozen=True)
class Count:
    params: int  # all trainable parameters (tied LM head counted once)
    params_embedding: int  # wte (+ wpe)
    params_non_embedding: int
    matmul_params: int  # N_matmul of the convention above
    flops_per_token: float  # training, PaLM convention
    flops_per_token_causal: float  # same with the attention term halved
    forward_flops_per_token: float  # one third of flops_per_token
    breakdown: dict  # training FLOPs/token by matmul component (sums to flops_per_token)
    non_matmul: dict  # estimated training FLOPs/token of norms, activation, rope, softmax, bias
    seq_len: int

    def to_dict(self) -> dict:
        return asdict(self)


def param_count(m: ModelConfig) -> int:
    from modgpt.weights import canonical_shapes
    total = 0
    for shape in canonical_shapes(m).values():
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


@functools.lru_cache(maxsize=256)
def count(m: ModelConfig, seq_len: int | None = None) -> Count:
    """Params and FLOPs per token for sequences of seq_len (default block_size)."""
    T = seq_len or m.block_size
    L, D, H, V, F = m.n_layer, m.n_embd, m.n_head, m.vocab_size, m.ffn_hidden_size
    hd, KV = m.head_dim, m.kv_heads
    n_ffn = 3 if m.gated else 2
    mm = {
        "attn_qkv": L * D * m.qkv_size,  # (H + 2 KV) hd columns; 3 D for multi-head attention
        "attn_out": L * D * D,
        "ffn": L * n_ffn * D * F,
        "lm_head": D * V,
    }
    matmul_params = sum(mm.values())
    attn_scores = 6 * L * H * hd * T  # QK^T: 2*T*hd per head per token forward, x3 for training
    attn_values = 6 * L * H * hd * T  # AV: same
    breakdown = {
        "attn_qkv": 6 * mm["attn_qkv"],
        "attn_scores": attn_scores,
        "attn_values": attn_values,
        "attn_out": 6 * mm["attn_out"],
        "ffn": 6 * mm["ffn"],
        "lm_head": 6 * mm["lm_head"],
    }
    total = float(sum(breakdown.values()))
    n_norms = 2 * L + (1 if m.final_norm else 0)
    qk_elems = (H + KV) * hd  # q and k elements per token per layer (rope and qk_norm touch them)
    non_matmul = {
        "norms": 3 * NORM_FLOPS[m.normalization] * (D * n_norms + (qk_elems * L if m.qk_norm else 0)),
        "activation": 3 * ACT_FLOPS[m.ffn_activation] * F * L + (3 * F * L if m.gated else 0),
        "rope": 3 * ROPE_FLOPS * qk_elems * L if m.position_encoding == "rope" else 0,
        "alibi": 3 * ALIBI_FLOPS * H * T * L if m.position_encoding == "alibi" else 0,
        "softmax": 3 * SOFTMAX_FLOPS * H * T * L,
        "bias": 3 * (m.qkv_size + D + (n_ffn - 1) * F + D) * L if m.bias else 0,
        "residual": 3 * 2 * D * L,
    }
    params = param_count(m)
    emb = V * D + (m.block_size * D if m.position_encoding == "learned_absolute" else 0)
    return Count(params=params, params_embedding=emb, params_non_embedding=params - emb,
                 matmul_params=matmul_params, flops_per_token=total,
                 flops_per_token_causal=total - (attn_scores + attn_values) / 2,
                 forward_flops_per_token=total / 3, breakdown=breakdown, non_matmul=non_matmul,
                 seq_len=T)


def format_count(c: Count) -> str:
    lines = [f"params:                 {c.params:,} ({c.params / 1e6:.2f}M; non-embedding "
             f"{c.params_non_embedding:,})",
             f"matmul params (N):      {c.matmul_params:,} (LM head counted once)",
             f"FLOPs/token (train):    {c.flops_per_token:,.0f}  (= 6N + 12*L*H*hd*T, T={c.seq_len})",
             f"  causal-halved:        {c.flops_per_token_causal:,.0f}",
             f"  forward only:         {c.forward_flops_per_token:,.0f}",
             "breakdown (training FLOPs/token):"]
    for k, v in c.breakdown.items():
        lines.append(f"  {k:<20}{v:>18,.0f}  {100 * v / c.flops_per_token:5.1f}%")
    lines.append("non-matmul estimates (not in the total):")
    for k, v in c.non_matmul.items():
        lines.append(f"  {k:<20}{v:>18,.0f}")
    return "\n".join(lines)


if __name__ == "__main__":
    from modgpt.commands import flops_main
    raise SystemExit(flops_main())
