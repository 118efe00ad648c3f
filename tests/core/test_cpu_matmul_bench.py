"""benchmarks/cpu_matmul.py: the table of a real (tiny) run, the agreement check, bad input.

No timing assertions (the figures depend on the machine and its load); the checks are on structure
and on the cross-framework check that every figure is for the same product.
"""
from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "cpu_matmul.py"


@pytest.fixture(scope="module")
def cm():
    spec = importlib.util.spec_from_file_location("cpu_matmul", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_run_prints_every_layer_and_product(cm, run_main, tmp_path):
    path = tmp_path / "mm.json"
    code, out = run_main(cm.main, "--n_embd=8", "--tokens=32", "--rounds=2", "--calls=1", f"--json={path}")
    assert code == 0, out.err
    table = [line.split() for line in out.out.splitlines()]
    printed = {(r[0], r[-4]) for r in table if r and r[0] in cm.LAYERS and r[-4] in cm.PRODUCTS}
    assert printed == {(n, p) for n in cm.LAYERS for p in cm.PRODUCTS}
    assert "(8, 24)" in out.out and "(32, 8)" in out.out  # qkv and FFN-down at width 8
    assert out.out.strip().splitlines()[-1].startswith("command: python benchmarks/cpu_matmul.py --n_embd=8")
    res = json.loads(path.read_text())
    assert (res["n_embd"], res["tokens"], res["rounds"]) == (8, 32, 2)
    rows = {(r["layer"], r["product"]): r for r in res["rows"]}
    assert len(rows) == len(res["rows"]) == 5 * len(cm.PRODUCTS)
    for r in res["rows"]:
        assert r["jax"] > 0 and r["torch"] > 0 and r["ratio"] == pytest.approx(r["jax"] / r["torch"])
    for p in cm.PRODUCTS:  # the block's row is the sum of its layers'
        for fw in ("jax", "torch"):
            assert rows[("one block", p)][fw] == pytest.approx(sum(rows[(n, p)][fw] for n in cm.LAYERS))
    # JAX's weight gradient written other ways, per layer, the model's own form as the reference
    forms = {r["layer"]: r for r in res["jax_dw_forms"]}
    assert set(forms) == set(cm.LAYERS)
    for n, r in forms.items():
        assert r["model"] == rows[(n, "dW")]["jax"]
        assert {k for k in r if k not in ("layer", "model", "model_form")} == {"x^T dy", "(dy^T x)^T", "einsum"}
        assert r["model_form"] == ("(dy^T x)^T" if n == "ffn_down" else "x^T dy")  # the narrower operand transposed
        assert all(r[k] > 0 for k in r if k not in ("layer", "model_form"))
    assert "JAX's weight gradient written other ways" in out.out


def test_products_that_differ_are_refused(cm):
    import numpy as np
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((3072, 128), dtype=np.float32), rng.standard_normal((3072, 512), dtype=np.float32)
    dw = x.T.astype(np.float64) @ dy  # the FFN-up weight gradient of the CPU model, in float64
    small = [rng.standard_normal(s) for s in [(16, 24), (16, 8)]]
    run = {"ffn_up": {"checks": cm._fingerprints(*small, dw)}}
    f32 = x.T @ dy  # float32 rounding, and numpy's BLAS rather than XLA's or torch's: must pass
    cm.check_agreement(run, {"ffn_up": {"checks": cm._fingerprints(*small, f32)}})

    def bf16(a):  # round to bfloat16 (8 bits of mantissa), as a low-precision matmul would read it
        b = np.asarray(a, np.float32).view(np.uint32)
        return ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).view(np.float32)
    bad = {"bfloat16 inputs": bf16(x).T @ bf16(dy), "scaled": dw * (1 + 1e-4), "permuted": dw[::-1],
           "transposed blocks": np.concatenate([dw[:, 256:], dw[:, :256]], axis=1),
           "one entry off": dw + 0.5 * (np.arange(dw.size) == 3).reshape(dw.shape)}
    for why, other in bad.items():
        with pytest.raises(SystemExit) as e:
            cm.check_agreement(run, {"ffn_up": {"checks": cm._fingerprints(*small, other)}})
        assert "ffn_up dW differs between jax and torch" in str(e.value.code), why
    # JAX's other forms of the weight gradient are held to torch's weight gradient too
    forms = {"ffn_up": {"checks": cm._fingerprints(*small, dw, dw, dw[:, ::-1]),
                        "dW forms": {"x^T dy": 1.0, "einsum": 1.0}}}
    with pytest.raises(SystemExit) as e:
        cm.check_agreement(forms, run)
    assert "ffn_up dW as einsum differs" in str(e.value.code)


@pytest.mark.parametrize("argv,option", [(["--rounds=0"], "--rounds"), (["--calls=x"], "--calls"),
                                         (["--n_embd=-1"], "--n_embd"), (["--bogus=1"], "--bogus"),
                                         (["--json=/nonexistent-dir/x.json"], "--json"), (["--json="], "--json"),
                                         (["--json=/tmp"], "--json"), (["--n=4"], "--n")])
def test_bad_options_one_line_exit_2(cm, run_main, argv, option):
    code, out = run_main(cm.main, *argv)
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and option in lines[0]
    assert out.out == ""
