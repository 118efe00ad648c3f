"""modgpt.memory: the step's memory floor from the config, checked against hand counts; the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from modgpt import memory
from modgpt.config import Config
from modgpt.flops import param_count
from modgpt.presets import PRESETS, SIZES

D, L, H, T, B, V = 64, 2, 2, 32, 4, 65


def cfg(preset="gpt2", **kw) -> Config:
    return Config().replace(**{**PRESETS[preset], **SIZES["tiny"], "block_size": T, "vocab_size": V,
                               "batch_size": B, **kw})


def test_gpt2_float32_by_hand():
    c = cfg()
    e = memory.estimate(c)
    n = param_count(c.model)
    assert (e.params, e.grads, e.optimizer, e.compute_copy) == (4 * n, 4 * n, 8 * n, 0)
    assert e.batch == 2 * 4 * B * T
    # per token and layer, float32: two norm inputs (+ mean, rstd), qkv input, q k v, attention output,
    # its log-sum-exp per head, FFN input, FFN hidden before and after GELU (4 D each)
    per_layer = 4 * (D + 2) * 2 + 4 * D + 4 * 3 * D + 4 * D + 4 * H + 4 * D + 4 * 2 * 4 * D
    head = 4 * (D + 2) + 4 * D + 2 * 4 * V  # final norm, LM-head input, logits and their gradient
    assert sum(e.per_layer.values()) == B * T * per_layer
    assert e.activations == B * T * (L * per_layer + head)
    assert e.total == e.params + e.grads + e.optimizer + e.batch + e.activations
    assert e.state == 16 * n


def test_bfloat16_halves_the_activations_not_the_float32_parts():
    f32, bf16 = memory.estimate(cfg()), memory.estimate(cfg(dtype="bfloat16"))
    assert bf16.compute_copy == 2 * param_count(cfg().model) and bf16.params == f32.params
    # logits/gradient and norm statistics stay float32, everything else halves
    assert bf16.head["logits_and_grad"] == f32.head["logits_and_grad"]
    assert bf16.per_layer["ffn_hidden"] * 2 == f32.per_layer["ffn_hidden"]
    assert f32.activations / 2 < bf16.activations < f32.activations


def test_remat_keeps_block_inputs_and_one_block():
    full, remat = memory.estimate(cfg()), memory.estimate(cfg(remat=True))
    layer = sum(full.per_layer.values())
    head = sum(full.head.values())
    assert full.activations == L * layer + head
    assert remat.activations == L * 4 * B * T * D + layer + head
    assert remat.activations < full.activations


def test_components_change_the_count():
    base = memory.estimate(cfg())
    llama = memory.estimate(cfg("llama"))
    F = llama.per_layer["ffn_hidden"] // (3 * 4 * B * T)  # gated: gate, up and their product
    assert F == cfg("llama").model.ffn_hidden_size
    assert llama.per_layer["norm1"] == B * T * (4 * D + 4)  # rmsnorm: one statistic per row
    manual = memory.estimate(cfg(attention_backend="manual"))
    assert manual.per_layer["attention_probs"] == B * T * 4 * H * T and "attention_lse" not in manual.per_layer
    gqa = memory.estimate(cfg("llama", n_head=4, n_kv_head=1))
    assert gqa.per_layer["qkv"] == B * T * 4 * (4 + 2) * (D // 4)  # 4 query heads, 1 key and 1 value head
    qk = memory.estimate(cfg(qk_norm=True))
    assert qk.per_layer["qk_norm"] == B * T * (4 * 2 * D + 4 * 2 * 2 * H)  # pre-norm q, k + their stats
    drop = memory.estimate(cfg(dropout=0.1))
    assert drop.per_layer["dropout_masks"] == B * T * (H * T + 2 * D) and drop.head["dropout_masks"] == B * T * D
    assert base.activations < drop.activations
    # a flash-style kernel drops its probabilities without keeping them: the sdpa floor keeps the
    # log-sum-exp under dropout (the masks are counted above), the manual one the T x S square
    assert "attention_lse" in drop.per_layer and "attention_probs" not in drop.per_layer
    manual_drop = memory.estimate(cfg(dropout=0.1, attention_backend="manual"))
    assert manual_drop.per_layer["attention_probs"] == manual.per_layer["attention_probs"]


def test_sharding_and_accumulation():
    c = cfg()
    one = memory.estimate(c)
    n = param_count(c.model)
    fsdp = memory.for_run(c.replace(mesh_fsdp=4), "jax", 4)
    assert fsdp.params == 4 * (-(-n // 4)) and fsdp.optimizer == 8 * (-(-n // 4))
    assert fsdp.activations * 4 == one.activations  # the global batch of 4 split over 4 devices
    zero1 = memory.for_run(c.replace(parallel="zero1"), "torch", 2)
    assert zero1.params == one.params and zero1.optimizer == 8 * (-(-n // 2))
    ddp = memory.for_run(c.replace(parallel="ddp"), "torch", 2)
    assert ddp.params == one.params and ddp.optimizer == one.optimizer
    torch_remat = memory.for_run(c.replace(remat=True), "torch", 1)
    assert not torch_remat.remat  # remat is a JAX option
    acc = memory.estimate(c.replace(gradient_accumulation_steps=4))
    assert acc.grads == 2 * one.grads and acc.batch == 4 * one.batch and acc.activations == one.activations


def test_cli_json_and_report():
    out = subprocess.run([sys.executable, "-m", "modgpt.memory", "--preset", "gpt2", "--size=124M",
                          "--dataset=shakespeare", "--batch_size=16", "--dtype=bfloat16", "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["params"] == 4 * 124_475_904 and d["tokens"] == 16 * 1024
    assert d["head"]["logits_and_grad"] == 16 * 1024 * 2 * 4 * 50304
    text = subprocess.run([sys.executable, "-m", "modgpt.memory", "--preset", "llama", "--size=tiny"],
                          capture_output=True, text=True).stdout
    assert text.startswith("resolved as a training run here would") and "ffn_hidden" in text
    assert "\nmemory floor of one training step, per device" in text


@pytest.mark.parametrize("argv,option", [(["--shards=0"], "--shards"), (["--dtype=float64"], "dtype")])
def test_cli_bad_input(argv, option):
    out = subprocess.run([sys.executable, "-m", "modgpt.memory", "--size=tiny", *argv], capture_output=True,
                         text=True)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and option in lines[0]
