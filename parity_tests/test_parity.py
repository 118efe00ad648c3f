"""Cross-backend parity on CPU for every configuration that parity_tests.cases enumerates from the
schema (every preset, and every value of every component option one at a time on the gpt2 and
llama bases), so a new schema value is covered with no edit here.

Not slow (CI): forward, grads, AdamW step and round trip for every case; every check (50-step
trajectory included) for the presets. Slow (-m slow): the remaining checks for the other cases.
"""
from __future__ import annotations

import pytest

from modgpt import config as C
from modgpt.presets import PRESETS
from parity_tests import cases as K
from parity_tests import checks as CH
from parity_tests import compare as X

ALL = K.cases()
PER_CASE = [c for c in CH.CHECKS if c != "trajectory"]


def _assert_rows(rows):
    assert rows, "the check produced no rows"
    bad = [r for r in rows if not r.passed]
    assert not bad, "\n" + X.format_table(bad)


# CI budget (2 CPU cores): every case runs the checks that pin the model's math (forward, grads,
# AdamW step, round trip); the presets also run generation, bf16 and dropout in CI, every other case
# runs those under -m slow. `python -m parity_tests --all` always runs everything.
CORE = ("forward", "grads", "adamw", "kernels", "roundtrip")


def _param(n, c):
    marks = () if (n in PRESETS or c in CORE) else (pytest.mark.slow,)
    return pytest.param(n, c, marks=marks, id=f"{n}-{c}")


@pytest.mark.parametrize("name,check", [_param(n, c) for n in ALL for c in PER_CASE])
def test_parity(parity_case, name, check):
    _assert_rows(parity_case(name).run([check]))


@pytest.mark.parametrize("name", [n if n in PRESETS else pytest.param(n, marks=pytest.mark.slow) for n in ALL])
def test_trajectory(parity_case, name):
    _assert_rows(parity_case(name).run(["trajectory"]))


@pytest.mark.parametrize("base", K.BASES)
def test_enumeration_covers_every_schema_value_on_both_bases(base):
    models = {cfg.model for cfg in ALL.values()}
    options = {o: C.CHOICES[o] for o in K.CHOICE_OPTIONS}
    options.update({o: (False, True) for o in K.BOOL_OPTIONS})
    options.update(K.VALUE_OPTIONS)
    assert {"normalization", "activation", "position_encoding", "attention_backend", "ffn_type",
            "norm_position", "bias", "weight_tying"} <= set(options)
    for opt, vals in options.items():
        for v in vals:
            assert K.make(base, **{opt: v}).model in models, f"{base} with {opt}={v} is not a parity case"
    for p in PRESETS:
        assert K.make(p).model in models, f"preset {p} is not a parity case"


def test_cases_are_long_enough_for_rope_layout_bugs():
    assert all(cfg.model.block_size >= 256 for cfg in ALL.values())
    assert all(cfg.model.n_head >= 2 and cfg.model.n_layer >= 2 for cfg in ALL.values())


def test_a_wrong_backend_fails_parity(parity_case, monkeypatch):
    """The suite can fail: a torch model whose GELU uses the tanh approximation is caught."""
    import torch.nn.functional as F
    real = F.gelu
    monkeypatch.setattr(F, "gelu", lambda x, approximate="none": real(x, approximate="tanh"))
    case = CH.Case("gpt2", ALL["gpt2"], parity_case("gpt2").sampler.dir)
    rows = {r.check: r for r in case.run(["forward"])}
    assert not rows["logits"].passed and rows["logits"].rel > 10 * X.TOL["logits"]
