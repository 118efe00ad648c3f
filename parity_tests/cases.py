"""The configurations the parity suite covers, enumerated from the schema (no hand-written list).

Every preset, plus every value of every component option taken one at a time from a gpt2 base and
from a llama base. A new name in modgpt.config.CHOICES, a new bool model option or a new value in
modgpt.config.OPTION_VALUES (e.g. n_kv_head) is covered with no edit here.
"""
from __future__ import annotations

from dataclasses import fields

from modgpt import config as C
from modgpt.presets import PRESETS

# Small enough for CPU, long enough for RoPE layout bugs to show (>= 256 positions).
PARITY_SIZE = dict(n_layer=2, n_head=4, n_embd=64, block_size=256, vocab_size=65)
BASES = ("gpt2", "llama")
# Model options that take a value from CHOICES, and the bool model options; dropout is covered by
# its own checks (it cannot match draw for draw).
CHOICE_OPTIONS = [k for k in C.CHOICES if C.KEY_SECTION.get(k) == "model"]
BOOL_OPTIONS = [f.name for f in fields(C.ModelConfig) if f.type in ("bool", bool)]
# Numeric model options with listed interesting values (n_kv_head: multi-query, grouped-query).
VALUE_OPTIONS: dict[str, tuple] = dict(getattr(C, "OPTION_VALUES", {}))


def make(preset: str, size: dict | None = None, **changes) -> C.Config:
    return C.from_flat({**PRESETS[preset], **(size or PARITY_SIZE), **changes})


def cases(size: dict | None = None) -> dict[str, C.Config]:
    """name -> Config; names look like 'llama' or 'gpt2+normalization=rmsnorm'. Duplicates dropped."""
    out: dict[str, C.Config] = {}
    seen: set = set()

    def add(name: str, cfg: C.Config) -> None:
        if cfg.model not in seen:
            seen.add(cfg.model)
            out[name] = cfg

    for p in PRESETS:
        add(p, make(p, size))
    for base in BASES:
        ref = make(base, size)
        for opt in CHOICE_OPTIONS:
            for val in C.CHOICES[opt]:
                if getattr(ref.model, opt) != val:
                    add(f"{base}+{opt}={val}", make(base, size, **{opt: val}))
        for opt, vals in VALUE_OPTIONS.items():
            for val in vals:
                if getattr(ref.model, opt) != val:
                    add(f"{base}+{opt}={val}", make(base, size, **{opt: val}))
        for opt in BOOL_OPTIONS:
            add(f"{base}+{opt}={not getattr(ref.model, opt)}", make(base, size, **{opt: not getattr(ref.model, opt)}))
    # the glu FFN's gate is the configured activation: cover every gate (GeGLU, ReGLU, ...) too, which
    # one-at-a-time changes never reach (an activation change alone keeps gpt2's standard FFN)
    for act in C.CHOICES["activation"]:
        add(f"gpt2+ffn_type=glu+activation={act}", make("gpt2", size, ffn_type="glu", activation=act))
    return out


def covered_values(all_cases: dict[str, C.Config]) -> dict[str, set]:
    """option -> the values that appear in some case (a test asserts this is every value)."""
    cov: dict[str, set] = {k: set() for k in CHOICE_OPTIONS + BOOL_OPTIONS + list(VALUE_OPTIONS)}
    for cfg in all_cases.values():
        for k in cov:
            cov[k].add(getattr(cfg.model, k))
    return cov
