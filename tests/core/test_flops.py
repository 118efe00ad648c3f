"""FLOPs and parameter counts against hand-computed values (PaLM appendix B convention)."""
import json
import subprocess
import sys

import pytest

from modgpt import config as C
from modgpt.flops import count
from modgpt.presets import PRESETS, SIZES


def model(preset, **kw):
    return C.from_flat({**PRESETS[preset], **SIZES["124M"], **kw}).model


def test_gpt2_124m_by_hand():
    c = count(model("gpt2"))
    L, D, V, T = 12, 768, 50304, 1024
    # per layer: qkv 3D^2 + out D^2 + ffn 8D^2 = 12 D^2; LM head D*V counted once although tied
    n_matmul = L * 12 * D * D + D * V
    assert c.matmul_params == n_matmul == 123_568_128
    assert c.flops_per_token == 6 * n_matmul + 12 * L * D * T == 854_654_976  # about 0.85 GFLOP
    assert c.flops_per_token_causal == 6 * n_matmul + 6 * L * D * T
    # params: wte + wpe + layers (weights + biases + 2 LayerNorms with bias) + final LayerNorm
    per_layer = 12 * D * D + (3 * D + D + 4 * D + D) + 2 * 2 * D
    assert c.params == V * D + T * D + L * per_layer + 2 * D == 124_475_904
    assert c.params_non_embedding == c.params - V * D - T * D
    assert sum(c.breakdown.values()) == c.flops_per_token


def test_llama_style_by_hand():
    c = count(model("llama"))
    L, D, V, T, F = 12, 768, 50304, 1024, 2048
    n_matmul = L * (4 * D * D + 3 * D * F) + D * V  # three FFN matmuls; untied head
    assert c.matmul_params == n_matmul
    assert c.flops_per_token == 6 * n_matmul + 12 * L * D * T
    # no biases, no position table (rope), RMSNorm weight only, separate LM head
    assert c.params == V * D + L * (4 * D * D + 3 * D * F + 2 * D) + D + D * V
    assert c.breakdown["ffn"] == 6 * L * 3 * D * F


def test_options_change_counts_as_they_should():
    base = model("gpt2")
    tied, untied = count(base), count(model("gpt2", weight_tying=False))
    assert untied.flops_per_token == tied.flops_per_token  # the head is one matmul either way
    assert untied.params - tied.params == 768 * 50304
    assert count(model("gpt2", position_encoding="rope")).params == tied.params - 1024 * 768
    assert count(model("gpt2", bias=False)).flops_per_token == tied.flops_per_token
    assert count(model("gpt2", attention_backend="manual")).flops_per_token == tied.flops_per_token
    # attention term scales with T; halving for causality touches only it
    short = count(base, seq_len=256)
    assert tied.flops_per_token - short.flops_per_token == 12 * 12 * 768 * (1024 - 256)
    assert count(model("gpt2", position_encoding="rope")).non_matmul["rope"] > 0


def test_flops_cli_json():
    r = subprocess.run([sys.executable, "-m", "modgpt.flops", "--preset", "gpt2", "--size=124M", "--dataset=shakespeare",
                        "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["params"] == 124_475_904 and d["flops_per_token"] == 854_654_976
    assert d["resolved"]["vocab_size"].startswith("50304 (GPT-2 BPE's 50257 tokens padded to a multiple of 64")
    assert set(d["breakdown"]) == {"attn_qkv", "attn_scores", "attn_values", "attn_out", "ffn", "lm_head"}
    r = subprocess.run([sys.executable, "-m", "modgpt.flops", "--preset", "gpt2", "--seq_len=0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "seq_len" in r.stderr


def test_param_count_equals_canonical_shapes():
    from modgpt.weights import canonical_shapes
    for preset in PRESETS:
        m = C.from_flat({**PRESETS[preset], **SIZES["tiny"], "vocab_size": 65}).model
        n = sum(int(__import__("math").prod(s)) for s in canonical_shapes(m).values())
        assert count(m).params == n


@pytest.mark.parametrize("name, dtype, peak", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.0), ("NVIDIA H100 PCIe", "bfloat16", 756.0),
    ("NVIDIA H100 NVL", "bfloat16", 835.5),
    ("NVIDIA H200", "tf32", 494.0), ("NVIDIA H200", "bfloat16", 989.0), ("NVIDIA H200 NVL", "bfloat16", 835.5),
    ("NVIDIA GH200 480GB", "bfloat16", 989.0), ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0),
    ("NVIDIA B200", "bfloat16", 2250.0), ("NVIDIA GB200", "fp8", 5000.0),
    ("cpu", "float32", None), ("TFRT_CPU_0", "bfloat16", None), ("NVIDIA B200", "float32", None),
])
def test_hardware_peaks(name, dtype, peak):
    from modgpt.hardware import peak_tflops
    assert peak_tflops(name, dtype) == peak


def test_mfu_and_override():
    from modgpt.hardware import mfu, peak_tflops
    assert peak_tflops("cpu", "float32", override=1.5) == 1.5
    assert mfu(1e9, 1e5, None) is None
    assert mfu(1e9, 4e5, 989.0) == pytest.approx(1e9 * 4e5 / 989e12)
    assert mfu(1e9, 4e5, 100.0, n_devices=4) == pytest.approx(4e14 / 400e12)  # = 1.0


def test_gqa_qknorm_alibi_by_hand():
    """2L, 4 query heads sharing 2 kv heads, hd 16, T 32, V 65, llama components + alibi + qk_norm."""
    m = C.from_flat({**PRESETS["llama"], "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 64,
                     "block_size": 32, "vocab_size": 65, "position_encoding": "alibi", "qk_norm": True}).model
    c = count(m)
    # per layer: qkv 64 x (4 + 2*2)*16 = 8,192; out 64 x 64 = 4,096; SwiGLU 3 x 64 x 192 = 36,864
    assert m.ffn_hidden_size == 192
    assert c.matmul_params == 2 * (8_192 + 4_096 + 36_864) + 64 * 65 == 102_464
    # + per layer norm1, norm2 (64 each) and q_norm, k_norm (16 each, rmsnorm: weight only);
    # wte 4,160, no wpe (alibi has no table), norm_f 64, untied head 4,160
    assert c.params == 4_160 + 2 * (49_152 + 2 * 64 + 2 * 16) + 64 + 4_160 == 107_008
    # attention term uses the 4 query heads: 12 x L x H x hd x T = 12 x 2 x 4 x 16 x 32 = 49,152
    assert c.flops_per_token == 6 * 102_464 + 49_152 == 663_936
    assert c.breakdown["attn_qkv"] == 6 * 2 * 8_192
    assert c.non_matmul["alibi"] == 3 * 4 * 32 * 2 and c.non_matmul["rope"] == 0


def test_mqa_qknorm_with_bias_by_hand():
    """gpt2 components (LayerNorm with bias, biases, tied, learned positions), one kv head, qk_norm."""
    m = C.from_flat({**PRESETS["gpt2"], "n_layer": 2, "n_head": 4, "n_kv_head": 1, "n_embd": 64,
                     "block_size": 32, "vocab_size": 65, "qk_norm": True}).model
    c = count(m)
    # per layer: qkv 64 x (4 + 2)*16 = 6,144 (+96 bias); out 4,096 (+64); fc/proj 2 x 64 x 256 (+256, +64)
    assert c.matmul_params == 2 * (6_144 + 4_096 + 32_768) + 4_160 == 90_176
    per_layer = 6_144 + 96 + 4_096 + 64 + 16_384 + 256 + 16_384 + 64 + 2 * 128 + 2 * 32  # q/k_norm w+b
    assert c.params == 4_160 + 32 * 64 + 2 * per_layer + 128 == 93_952
    assert c.flops_per_token == 6 * 90_176 + 12 * 2 * 4 * 16 * 32 == 590_208


def test_gqa_shrinks_only_the_kv_projections():
    mha, gqa, mqa = model("llama"), model("llama", n_kv_head=4), model("llama", n_kv_head=1)
    c0, c4, c1 = count(mha), count(gqa), count(mqa)
    L, D, hd = 12, 768, 64
    assert c0.params - c4.params == L * D * 2 * (12 - 4) * hd == 9_437_184
    assert c0.params - c1.params == L * D * 2 * (12 - 1) * hd
    assert c0.flops_per_token - c4.flops_per_token == 6 * L * D * 2 * (12 - 4) * hd
    for k in ("attn_scores", "attn_values", "attn_out", "ffn", "lm_head"):
        assert c4.breakdown[k] == c0.breakdown[k], k  # every query head still attends
    assert count(model("llama", n_kv_head=12)) == c0  # n_kv_head = n_head is multi-head attention
    # qk_norm adds 2 x head_dim norm weights per layer and no matmul; alibi drops nothing (no table)
    qkn = count(model("llama", qk_norm=True))
    assert qkn.params - c0.params == L * 2 * hd and qkn.flops_per_token == c0.flops_per_token
    assert qkn.non_matmul["norms"] > c0.non_matmul["norms"]
    assert count(model("llama", position_encoding="alibi")).params == c0.params
    assert count(model("gpt2", position_encoding="alibi")).params == count(model("gpt2")).params - 1024 * 768
