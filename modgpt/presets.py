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


def resolve_auto_size(cfg, explicit: set[str], has_accelerator: bool):
    """Resolve size=auto for the device at hand: (config, one-line reason, the training keys the CPU
    budget set)."""
    if cfg.system.size != "auto":
        return cfg, f"size={cfg.system.size}", set()
    if explicit & set(SIZE_KEYS):
        return cfg.replace(size="none"), "size set by the given n_layer/n_head/n_embd/block_size", set()
    if has_accelerator:
        return cfg.replace(size="none"), "accelerator found: the configured (default GPT-2 124M) size", set()
    budget = {k: v for k, v in CPU_AUTO_TRAIN.items() if k not in explicit}
    changes = {**SIZES[CPU_AUTO_SIZE], **budget}
    why = (f"no accelerator: chose the '{CPU_AUTO_SIZE}' size ({changes['n_layer']}L-{changes['n_embd']}D, "
           f"block {changes['block_size']}) and a {changes.get('max_iters', cfg.train.max_iters)}-iteration "
           f"budget so the run ends in minutes; pass --size=124M (or n_layer/n_embd/...) to override")
    return cfg.replace(size=CPU_AUTO_SIZE, **changes), why, set(budget)


def resolve_schedule(cfg, explicit: set[str], origin: dict[str, str], follow: bool = True):
    """Fit the unset schedule keys to the run: lr_decay_iters follows max_iters and warmup_iters is at
    most WARMUP_FRACTION of it. Explicit values are kept exactly (nanoGPT's recipes reproduce), but a
    warmup that does not end before the decay does is refused (ConfigError). origin: where each
    schedule key's value came from; follow=False (a resumed run) keeps the unset keys as they are.
    Returns (config, {key: where its value came from, in words})."""
    from modgpt.config import ConfigError
    t = cfg.train
    src = {k: origin.get(k, "default") for k in SCHEDULE_KEYS}
    changes = {}
    if follow and "lr_decay_iters" not in explicit:
        changes["lr_decay_iters"] = t.max_iters
        src["lr_decay_iters"] = "follows max_iters"
    cap = int(WARMUP_FRACTION * t.max_iters)
    if follow and "warmup_iters" not in explicit and t.warmup_iters > cap:
        changes["warmup_iters"] = cap
        src["warmup_iters"] = f"{src['warmup_iters']} {t.warmup_iters}, capped at {WARMUP_FRACTION:.0%} of max_iters"
    cfg = cfg.replace(**changes) if changes else cfg
    w, d = cfg.train.warmup_iters, cfg.train.lr_decay_iters
    if w and w >= d and explicit & {"warmup_iters", "lr_decay_iters"}:
        raise ConfigError(f"warmup_iters={w} ({src['warmup_iters']}) does not end before the learning rate's "
                          f"decay does at lr_decay_iters={d} ({src['lr_decay_iters']}); lower --warmup_iters "
                          f"(unset it is at most {WARMUP_FRACTION:.0%} of max_iters) or raise --lr_decay_iters")
    return cfg, src
