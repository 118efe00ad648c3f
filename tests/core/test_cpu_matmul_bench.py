"""benchmarks/cpu_matmul.py: the table of a real (tiny) run, the agreement check, bad input.

No timing assertions (the figures depend on the machine and its load); the checks are on structure
and on the cross-framework check that every figure is for the same product.
"""
from __future__ import annotations

import importlib.util
import json
import os
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
    # block 128: the attention kernel's 4 query blocks of 32 rows, as at the real size (4 of 64);
    # --xla_option with XLA's default value is reported (that it reaches XLA: the refusal test below)
    code, out = run_main(cm.main, "--n_embd=8", "--tokens=256", "--block_size=128", "--n_head=2", "--rounds=2",
                         "--calls=1", "--xla_option=xla_cpu_use_onednn=false", f"--json={path}")
    assert code == 0, out.err
    table = [line.split() for line in out.out.splitlines()]
    printed = {(r[0], r[-4]) for r in table if r and r[0] in cm.LAYERS and r[-4] in cm.PRODUCTS}
    assert printed == {(n, p) for n in cm.LAYERS for p in cm.PRODUCTS}
    assert "(8, 24)" in out.out and "(32, 8)" in out.out  # qkv and FFN-down at width 8
    assert out.out.strip().splitlines()[-1].startswith("command: python benchmarks/cpu_matmul.py --n_embd=8")
    assert out.out.strip().splitlines()[-2].startswith("environment: ")  # XLA_FLAGS and the like, if set
    res = json.loads(path.read_text())
    assert (res["n_embd"], res["tokens"], res["rounds"]) == (8, 256, 2)
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
    # one layer's attention: batch tokens / block_size, n_head heads of n_embd / n_head
    att = res["attention"]
    assert (att["batch"], att["block_size"], att["n_head"], att["head_dim"]) == (2, 128, 2, 4)
    assert [r["product"] for r in att["rows"]] == list(cm.ATTENTION)
    for r in att["rows"]:
        assert r["jax"] > 0 and r["torch"] > 0 and r["ratio"] == pytest.approx(r["jax"] / r["torch"])
    assert "one layer's attention, batch 2 x T 128, 2 heads of 4" in out.out
    assert "JAX compiled with {'xla_cpu_use_onednn': False}" in out.out
    assert res["xla_options"] == {"xla_cpu_use_onednn": False}
    assert res["machine"]["env"].get("XLA_FLAGS") == os.environ.get("XLA_FLAGS")


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


@pytest.mark.parametrize("wrong", range(5))
def test_attention_that_differs_is_refused(cm, wrong):
    """The forward program's output, and the forward+backward's output and three gradients, are each
    held to torch's: one of them wrong (two sequence positions swapped) ends the run with its name."""
    import numpy as np
    q, k, v, dy = (np.asarray(a, np.float64) for a in cm.attention_inputs(2, 64, 2, 8))
    results = [q, q, k, v, dy]  # stand-ins: (y, y, dq, dk, dv) of one shape, all different
    run = {"attention": {"checks": cm._fingerprints(*results)}}
    cm.check_agreement(run, {"attention": {"checks": cm._fingerprints(*[a * (1 + 1e-9) for a in results])}})
    bad = list(results)
    bad[wrong] = results[wrong].copy()
    bad[wrong][:, [3, 4]] = results[wrong][:, [4, 3]]
    with pytest.raises(SystemExit) as e:
        cm.check_agreement(run, {"attention": {"checks": cm._fingerprints(*bad)}})
    assert f"attention {cm.ATTENTION_CHECKS[wrong]} differs between jax and torch" in str(e.value.code)


def test_xla_options_parsed_and_refused(cm, run_main):
    """--xla_option values become booleans and integers where they look so; an option XLA refuses
    is one line and exit 2, from the JAX worker, before any figure."""
    assert cm.parse_xla_options(["xla_cpu_use_onednn=true", "xla_cpu_parallel_codegen_split_count=4",
                                 "xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
                                 "xla_cpu_experimental_ynn_fusion_type="]) == {
        "xla_cpu_use_onednn": True, "xla_cpu_parallel_codegen_split_count": 4,
        "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
        "xla_cpu_experimental_ynn_fusion_type": ""}
    # --tokens=32 without --block_size: the attention takes one sequence of 32 (256 does not divide it)
    base = ["--n_embd=8", "--tokens=32", "--n_head=2", "--rounds=1", "--calls=1"]
    code, out = run_main(cm.main, *base, "--xla_option=xla_cpu_experimental_ynn_fusion_type=not_a_type")
    assert code == 2 and out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --xla_option: XLA refused") and "not_a_type" in lines[0]


@pytest.mark.parametrize("argv,option", [(["--rounds=0"], "--rounds"), (["--calls=x"], "--calls"),
                                         (["--n_embd=-1"], "--n_embd"), (["--bogus=1"], "--bogus"),
                                         (["--json=/nonexistent-dir/x.json"], "--json"), (["--json="], "--json"),
                                         (["--json=/tmp"], "--json"), (["--n=4"], "--n"),
                                         (["--block_size=100"], "--block_size"), (["--n_head=3"], "--n_head"),
                                         (["--block_size=0"], "--block_size"),
                                         (["--xla_option=use_onednn=true"], "--xla_option"),
                                         (["--xla_option=xla_cpu_use_onednn"], "--xla_option")])
def test_bad_options_one_line_exit_2(cm, run_main, argv, option):
    code, out = run_main(cm.main, *argv)
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and option in lines[0]
    assert out.out == ""
