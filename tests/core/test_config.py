"""The schema: validation messages, JSON round trip, names, presets and the summary tree."""
import json

import pytest

from modgpt import config as C
from modgpt.presets import PRESETS, SIZES


def test_defaults_validate_and_roundtrip_exactly():
    cfg = C.Config()
    C.validate(cfg)
    assert C.from_json(cfg.to_json()) == cfg
    odd = cfg.replace(learning_rate=3.0000000000000004e-4, dropout=0.1, norm_eps=1e-6, ffn_type="glu")
    back = C.from_json(odd.to_json())
    assert back == odd and back.train.learning_rate == 3.0000000000000004e-4


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("size", sorted(SIZES))
def test_every_preset_and_size_is_valid(preset, size):
    cfg = C.from_flat({**PRESETS[preset], **SIZES[size]})
    assert C.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("flat, pattern", [
    ({"n_layr": 2}, r"unknown option 'n_layr' \(did you mean 'n_layer'\?\)"),
    ({"normalization": "rmsnrom"}, r"must be one of layernorm, layernorm_nobias, rmsnorm; got 'rmsnrom' \(did you mean 'rmsnorm'\?\)"),
    ({"activation": "tanh"}, r"option 'activation' must be one of gelu, silu, relu, leaky_relu"),
    ({"position_encoding": "alibi"}, r"learned_absolute, rope, none"),
    ({"n_embd": 100, "n_head": 3}, r"n_embd \(100\) must be divisible by n_head \(3\)"),
    ({"n_embd": 60, "n_head": 4, "position_encoding": "rope"}, r"rope' needs an even head dim"),
    ({"dropout": 1.0}, r"'dropout' must be in \[0, 1\)"),
    ({"n_layer": "four"}, r"option 'n_layer' must be an integer, got 'four'"),
    ({"n_layer": 2.5}, r"option 'n_layer' must be an integer"),
    ({"bias": "maybe"}, r"option 'bias' must be True or False"),
    ({"learning_rate": [1]}, r"option 'learning_rate' must be a number"),
    ({"n_layer": 0}, r"'n_layer' must be >= 1"),
    ({"min_lr": 1.0, "learning_rate": 0.1}, r"min_lr .* must not exceed learning_rate"),
    ({"dtype": "fp8"}, r"option 'dtype' must be one of float32, bfloat16, float16"),
    ({"parallel": "tp"}, r"option 'parallel' must be one of none, ddp, zero1, fsdp"),
    ({"init_from": "gpt2-xl"}, r"init_from' must be scratch, resume, nanogpt:PATH or FILE.safetensors"),
    ({"mesh_data": -1, "mesh_fsdp": -1}, r"only one of mesh_data and mesh_fsdp may be -1"),
    ({"size": "huge"}, r"option 'size' must be one of"),
])
def test_bad_values_get_one_clear_line(flat, pattern):
    with pytest.raises(C.ConfigError, match=pattern) as e:
        C.from_flat(flat)
    assert "\n" not in str(e.value)


def test_from_dict_rejects_wrong_section_and_unknown_section():
    with pytest.raises(C.ConfigError, match="belongs in section 'model'"):
        C.from_dict({"train": {"n_layer": 2}})
    with pytest.raises(C.ConfigError, match="unknown config section 'modle'.*did you mean 'model'"):
        C.from_dict({"modle": {}})


def test_strings_from_the_command_line_are_coerced():
    cfg = C.from_flat({"compile": "False", "bias": "true", "n_layer": "4", "learning_rate": "1e-3"})
    assert cfg.train.compile is False and cfg.model.bias is True
    assert cfg.model.n_layer == 4 and cfg.train.learning_rate == 1e-3


def test_ffn_hidden_rule():
    m = C.ModelConfig(n_embd=768, ffn_type="swiglu")
    assert m.ffn_hidden_size == 2048  # 8/3 * 768 exactly
    m = C.ModelConfig(n_embd=64, n_head=2, ffn_type="glu")
    assert m.ffn_hidden_size == 192  # 170.7 rounded up to a multiple of 32
    assert C.ModelConfig(n_embd=64, n_head=2).ffn_hidden_size == 256
    assert C.ModelConfig(ffn_hidden=100).ffn_hidden_size == 100
    assert C.ModelConfig(ffn_type="swiglu", activation="gelu").ffn_activation == "silu"
    assert C.ModelConfig(ffn_type="glu", activation="gelu").ffn_activation == "gelu"


def test_arch_names():
    llama = C.from_flat(PRESETS["llama"]).model
    assert C.arch_name(llama) == "12L-12H-768D-RoPE-RMS-SwiGLU-PreNorm"
    gpt2 = C.from_flat(PRESETS["gpt2"]).model
    assert C.arch_name(gpt2) == "12L-12H-768D-Learned-LN-GELU-PreNorm-Bias-Tied"
    geglu = C.from_flat({**PRESETS["llama"], "ffn_type": "glu", "activation": "gelu",
                         "norm_position": "post", "attention_backend": "manual", "dropout": 0.1}).model
    assert C.arch_name(geglu) == "12L-12H-768D-RoPE-RMS-GeGLU-PostNorm-Manual-Drop0.1"


def test_summary_tree_lists_every_component():
    text = C.summary_tree(C.from_flat(PRESETS["llama"]))
    for needle in ("MODEL ARCHITECTURE:", "Architecture Name:     12L-12H-768D-RoPE-RMS-SwiGLU-PreNorm",
                   "|- Normalization:      rmsnorm", "|- Activation:         swiglu (SiLU gate)",
                   "|- Position Encoding:  rope (theta=10000.0)", "|- FFN Type:           swiglu (2.67x",
                   "|- Bias:               No", "|- Weight Tying:       No", "'- Dropout:            0.000"):
        assert needle in text, needle


def test_presets_are_data_and_the_gpt2_preset_is_prenorm():
    assert PRESETS["gpt2"]["norm_position"] == "pre"
    assert PRESETS["team"] == PRESETS["llama"]
    for p in PRESETS.values():
        assert not ({"n_layer", "n_embd", "n_head"} & set(p)), "sizes live in SIZES, not presets"


def test_json_keys_are_sectioned():
    d = json.loads(C.Config().to_json())
    assert set(d) == {"model", "train", "system"}
    assert d["model"]["normalization"] == "layernorm"
