"""How a run's configuration resolves before training: size=auto for the machine, the schedule for the
run's length, the vocabulary for the data. Rules only; presets.py holds the data they use."""
from __future__ import annotations

import math

from modgpt import config as C
from modgpt.presets import CPU_AUTO_SIZE, CPU_AUTO_TRAIN, SCHEDULE_KEYS, SIZE_KEYS, SIZES, WARMUP_FRACTION


def padded_vocab(n: int) -> int:
    """Data vocab -> model vocab: BPE vocabularies are padded to a multiple of 64 (50257 -> 50304)."""
    return n if n <= 256 else 64 * math.ceil(n / 64)


def data_vocab(cfg: C.Config, explicit: set[str], resume: bool, data_vocab_size: int) -> C.Config:
    """The model's vocab_size follows the data's (padded) unless set, resumed or fixed by a weights file."""
    if "vocab_size" in explicit or resume or cfg.train.init_from.startswith("nanogpt:"):
        return cfg
    return cfg.replace(vocab_size=padded_vocab(data_vocab_size))


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
        raise C.ConfigError(f"warmup_iters={w} ({src['warmup_iters']}) does not end before the learning rate's "
                          f"decay does at lr_decay_iters={d} ({src['lr_decay_iters']}); lower --warmup_iters "
                          f"(unset it is at most {WARMUP_FRACTION:.0%} of max_iters) or raise --lr_decay_iters")
    return cfg, src
