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
    r = subprocess.run([sys.executable, "-m", "modgpt.flops", "--preset", "gpt2", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["params"] == 124_475_904 and d["flops_per_token"] == 854_654_976
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
    ("NVIDIA H200", "tf32", 494.0), ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0),
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
