"""modgpt.flops.count against torch.utils.flop_counter.FlopCounterMode, fwd + bwd, every preset.

What each side counts:
- ours: 6 x N_matmul per token (qkv, out proj, FFN matrices, LM head once even when tied) plus the
  attention score and value matmuls 12 x L x H x hd x T over the full T x T square (not halved).
- FlopCounterMode: matmuls only (mm/addmm/bmm, 2 FLOPs per multiply-add; addmm's bias add is not
  counted), forward plus both backward matmuls. The tied head is F.linear(x, wte.weight), a real
  matmul, so it is counted; the embedding lookups and their backward are not matmuls on either side.
  With attention_backend=manual the attention matmuls are explicit bmm's, computed over the full
  square (the mask is added after), so the counts must agree exactly (tolerance 0).
  With sdpa on CPU, torch dispatches to _scaled_dot_product_flash_attention_for_cpu, for which
  FlopCounterMode (torch 2.13) has no formula: it counts nothing for attention, so the counter must
  equal our total minus exactly the attention terms.
"""
import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from modgpt import config as C
from modgpt.flops import count
from modgpt.presets import PRESETS
from modgpt_torch.model import GPT

torch.set_num_threads(1)


@pytest.mark.parametrize("backend", C.CHOICES["attention_backend"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_flops_match_flop_counter(preset, backend):
    cfg = C.from_flat({**PRESETS[preset], "n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64,
                       "vocab_size": 65, "attention_backend": backend}).model
    m = GPT(cfg)
    B, T = 2, cfg.block_size
    x = torch.randint(0, cfg.vocab_size, (B, T))
    with FlopCounterMode(display=False) as fc:
        m(x, x)[1].backward()
    c = count(cfg)
    want = c.flops_per_token * B * T
    attn = (c.breakdown["attn_scores"] + c.breakdown["attn_values"]) * B * T
    if backend == "manual" or fc.get_total_flops() == want:  # the latter: a torch that counts sdpa
        assert fc.get_total_flops() == want
    else:
        assert fc.get_total_flops() == want - attn


@pytest.mark.parametrize("backend", C.CHOICES["attention_backend"])
@pytest.mark.parametrize("extra", [dict(n_kv_head=1), dict(n_kv_head=2, qk_norm=True, position_encoding="alibi")],
                         ids=["mqa", "gqa2-qknorm-alibi"])
def test_flops_match_flop_counter_grouped_query(extra, backend):
    """GQA shrinks the k/v projections (counted by both) and not the attention matmuls: every query
    head still scores every key (manual repeats the kv heads, then bmm's over all 4 heads)."""
    cfg = C.from_flat({**PRESETS["llama"], "n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 64,
                       "vocab_size": 65, "attention_backend": backend, **extra}).model
    m = GPT(cfg)
    B, T = 2, cfg.block_size
    x = torch.randint(0, cfg.vocab_size, (B, T))
    with FlopCounterMode(display=False) as fc:
        m(x, x)[1].backward()
    c = count(cfg)
    want = c.flops_per_token * B * T
    attn = (c.breakdown["attn_scores"] + c.breakdown["attn_values"]) * B * T
    assert c.matmul_params < count(dataclasses.replace(cfg, n_kv_head=0)).matmul_params  # k/v shrank
    if backend == "manual" or fc.get_total_flops() == want:
        assert fc.get_total_flops() == want
    else:
        assert fc.get_total_flops() == want - attn
