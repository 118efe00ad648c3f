"""The schema: validation messages, JSON round trip, names, presets and the summary tree."""
import json

import pytest

from modgpt import config as C
from modgpt.report import summary_tree
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
    ({"activation": "tanh"}, r"option 'activation' must be one of gelu, gelu_tanh, silu, relu, leaky_relu"),
    ({"position_encoding": "xpos"}, r"'position_encoding' must be one of learned_absolute, rope, alibi, none"),
    ({"n_head": 12, "n_kv_head": 5}, r"option 'n_kv_head' must divide n_head \(12\): got 5; "
                                     r"valid: 1, 2, 3, 4, 6, 12 \(0 = n_head\)"),
    ({"n_head": 4, "n_embd": 64, "n_kv_head": 8}, r"'n_kv_head' must divide n_head \(4\): got 8"),
    ({"n_kv_head": -1}, r"'n_kv_head' must be >= 0, got -1"),
    ({"eval_interval": -1}, r"'eval_interval' must be >= 0, got -1"),  # 0: no evaluation (bench)
    ({"qk_norm": "perhaps"}, r"option 'qk_norm' must be True or False"),
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
    ({"init_from": "gpt2-xxl"}, r"init_from. must be scratch, resume, nanogpt:PATH, hf:NAME_OR_DIR, gpt2, gpt2-medium, "
                                 r"gpt2-large, gpt2-xl or FILE.safetensors; got .gpt2-xxl."),
    ({"mesh_data": -1, "mesh_fsdp": -1}, r"only one of mesh_data and mesh_fsdp may be -1"),
    ({"eval_tasks": "hellaswg"}, r"option 'eval_tasks': unknown task 'hellaswg' \(did you mean 'hellaswag'\?\)"),
    ({"eval_tasks_input": "hs.jsonl"}, r"option 'eval_tasks_input' is the data file of one task"),
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
    text = summary_tree(C.from_flat(PRESETS["llama"]))
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


def test_grouped_query_fields_and_defaults():
    m = C.ModelConfig()  # n_kv_head unset (0) = multi-head: existing configs and presets unchanged
    assert m.n_kv_head == 0 and m.kv_heads == 12 and m.qkv_size == 3 * 768 and m.qk_norm is False
    g = C.from_flat({"n_head": 12, "n_kv_head": 4}).model
    assert g.kv_heads == 4 and g.qkv_size == (12 + 2 * 4) * 64
    assert C.from_flat({"n_kv_head": 1}).model.qkv_size == 768 + 2 * 64
    for p in PRESETS.values():  # no preset sets the new options
        assert "n_kv_head" not in p and "qk_norm" not in p
    # a config.json written before these options existed still loads (defaults fill in)
    old = json.loads(C.Config().to_json())
    del old["model"]["n_kv_head"], old["model"]["qk_norm"]
    assert C.from_dict(old) == C.Config()
    odd = C.Config().replace(n_kv_head=3, qk_norm=True, position_encoding="alibi")
    assert C.from_json(odd.to_json()) == odd


def test_option_values_are_valid_at_the_parity_size_on_every_preset():
    """OPTION_VALUES (read by the parity enumerator) must build on n_head=4 for every preset."""
    assert set(C.OPTION_VALUES) <= set(C.KEY_SECTION) and C.OPTION_VALUES["n_kv_head"]
    for preset in PRESETS:
        for key, values in C.OPTION_VALUES.items():
            for v in values:
                m = C.from_flat({**PRESETS[preset], "n_head": 4, "n_embd": 64, key: v}).model
                assert getattr(m, key) == v
    assert {1, 2} <= set(C.OPTION_VALUES["n_kv_head"])  # multi-query and a real group


def test_arch_names_of_new_options():
    base = {**PRESETS["llama"]}
    name = lambda **kw: C.arch_name(C.from_flat({**base, **kw}).model)  # noqa: E731
    assert name(position_encoding="alibi") == "12L-12H-768D-ALiBi-RMS-SwiGLU-PreNorm"
    assert name(n_kv_head=4) == "12L-12H-768D-RoPE-RMS-SwiGLU-PreNorm-GQA4"
    assert name(n_kv_head=1) == "12L-12H-768D-RoPE-RMS-SwiGLU-PreNorm-MQA"
    assert name(n_kv_head=12) == name() == "12L-12H-768D-RoPE-RMS-SwiGLU-PreNorm"  # = n_head: MHA
    assert name(qk_norm=True, n_kv_head=2) == "12L-12H-768D-RoPE-RMS-SwiGLU-PreNorm-GQA2-QKNorm"
    # gated FFNs take their gate from the activation registry: GeGLU and ReGLU via ffn_type=glu
    assert name(ffn_type="glu", activation="gelu") == "12L-12H-768D-RoPE-RMS-GeGLU-PreNorm"
    assert name(ffn_type="glu", activation="relu") == "12L-12H-768D-RoPE-RMS-ReGLU-PreNorm"
    assert name(ffn_type="swiglu", activation="relu") == "12L-12H-768D-RoPE-RMS-SwiGLU-PreNorm"


def test_summary_tree_shows_new_options_only_when_set():
    plain = summary_tree(C.from_flat(PRESETS["llama"]))
    assert "Attention Heads" not in plain and "QK Norm" not in plain
    text = summary_tree(C.from_flat({**PRESETS["llama"], "n_kv_head": 4, "qk_norm": True,
                                       "position_encoding": "alibi", "ffn_type": "glu", "activation": "relu"}))
    for needle in ("Architecture Name:     12L-12H-768D-ALiBi-RMS-ReGLU-PreNorm-GQA4-QKNorm",
                   "|- Position Encoding:  alibi (additive bias, slopes 2^(-8i/n_head))",
                   "|- Attention Heads:    12 query / 4 key-value (GQA4, 3 query heads per kv head)",
                   "|- QK Norm:            rmsnorm per head over head_dim 64",
                   "|- Activation:         glu (ReLU gate)"):
        assert needle in text, needle


def test_a_name_without_a_label_appears_as_itself(monkeypatch):
    """The README guide says the _POS label is optional: an unlabeled component still names runs."""
    monkeypatch.delitem(C._POS, "alibi")
    assert C.arch_name(C.from_flat({**PRESETS["gpt2"], "position_encoding": "alibi"}).model) == \
        "12L-12H-768D-alibi-LN-GELU-PreNorm-Bias-Tied"
