"""Presets and sizes as data: architecture choices are separate from model sizes."""
from __future__ import annotations

from typing import Any

# Architecture presets: component choices only (no sizes). Never branched on in model code.
PRESETS: dict[str, dict[str, Any]] = {
    # GPT-2 as published and as nanoGPT implements it: pre-norm with a final LayerNorm (GPT-2 moved
    # the norm before each sub-block; the original Transformer's post-norm is the "post" option).
    "gpt2": dict(position_encoding="learned_absolute", normalization="layernorm", activation="gelu",
                 norm_position="pre", ffn_type="standard", bias=True, weight_tying=True),
    "llama": dict(position_encoding="rope", normalization="rmsnorm", activation="silu",
                  norm_position="pre", ffn_type="swiglu", bias=False, weight_tying=False),
    # The team's model_v1: the llama components under the team's own name (configs/arch_team.py).
    "team": dict(position_encoding="rope", normalization="rmsnorm", activation="silu",
                 norm_position="pre", ffn_type="swiglu", bias=False, weight_tying=False),
    "hybrid": dict(position_encoding="rope", normalization="layernorm", activation="gelu",
                   norm_position="pre", ffn_type="standard", bias=True, weight_tying=True),
}

# Sizes: dimensions only. The GPT-2 family plus sizes that train on a CPU.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),  # tests
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),  # a few minutes on a CPU
    "small-char": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),  # nanoGPT shakespeare_char
    "124M": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "350M": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    "774M": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),
    "1558M": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),
}
SIZE_KEYS = ("n_layer", "n_head", "n_embd", "block_size")

# What `size=auto` picks on a machine without an accelerator, and the training budget it implies
# (each key only where the user did not set it).
CPU_AUTO_SIZE = "cpu"
CPU_AUTO_TRAIN: dict[str, Any] = dict(batch_size=32, max_iters=600, warmup_iters=50,
                                      learning_rate=2e-3, min_lr=2e-4, beta2=0.99, eval_interval=200,
                                      eval_iters=10, log_interval=20)
# An unset warmup takes at most this fraction of the run (the default 100 iterations would never
# reach the peak learning rate in a 40-iteration run).
WARMUP_FRACTION = 0.1
SCHEDULE_KEYS = ("max_iters", "warmup_iters", "lr_decay_iters")

# Named changes for variant names like gpt2+rope: each sets the options that make up one component.
CHANGES: dict[str, dict[str, str]] = {
    "rope": {"position_encoding": "rope"},
    "nope": {"position_encoding": "none"},
    "learned": {"position_encoding": "learned_absolute"},
    "rmsnorm": {"normalization": "rmsnorm"},
    "layernorm": {"normalization": "layernorm"},
    "layernorm_nobias": {"normalization": "layernorm_nobias"},
    "swiglu": {"ffn_type": "swiglu", "activation": "silu"},
    "geglu": {"ffn_type": "glu", "activation": "gelu"},
    "gelu": {"activation": "gelu"},
    "silu": {"activation": "silu"},
    "relu": {"activation": "relu"},
    "postnorm": {"norm_position": "post"},
    "prenorm": {"norm_position": "pre"},
    "nobias": {"bias": "False"},
    "bias": {"bias": "True"},
    "untied": {"weight_tying": "False"},
    "tied": {"weight_tying": "True"},
    "manual_attention": {"attention_backend": "manual"},
}
