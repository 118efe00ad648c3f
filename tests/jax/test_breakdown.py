"""python -m modgpt_jax.breakdown: every part timed on a real (tiny, sharded) step, FLOPs shares that
add up, the JSON record, and bad options refused before any compilation. No timing assertions."""
from __future__ import annotations

import json
import os

import pytest

from modgpt import flops as F
from modgpt_jax import breakdown as BD

TINY = ["--size=tiny", "--batch_size=8", "--block_size=32", "--vocab_size=65"]
PARTS = ["step", "fwd+bwd", "forward", "trunk fwd+bwd", "head fwd+bwd", "optimizer"]


@pytest.fixture
def run(run_main):
    return lambda *argv: run_main(BD.main, *argv)


def test_every_part_timed_and_flops_add_up(run, tmp_path):
    path = tmp_path / "bd.json"
    accum = 2  # the step runs two micro-batches: the FLOPs and the residue must count both
    code, out = run(*TINY, "--preset=llama", f"--gradient_accumulation_steps={accum}",
                    "--iters=2", "--warmup=1", f"--json={path}")
    assert code == 0, out.err
    res = json.loads(path.read_text())
    assert [r["part"] for r in res["parts"]] == PARTS
    assert res["batch"] == [accum, 8, 32] and res["n_devices"] == 8 and res["dtype"] == "float32"
    by = {r["part"]: r for r in res["parts"]}
    assert all(r["ms"] > 0 and r["compile_s"] > 0 for r in res["parts"])
    assert by["step"]["pct_of_step"] == pytest.approx(100.0)
    # the residue subtracts one fwd+bwd per micro-batch
    assert res["residue_ms"] == pytest.approx(by["step"]["ms"] - accum * by["fwd+bwd"]["ms"]
                                              - by["optimizer"]["ms"])
    # FLOPs shares: trunk + head = fwd+bwd = 3 x forward; the step is accum micro-batches' worth
    flop = {k: (r["tflops"] or 0.0) * r["ms"] * 1e9 for k, r in by.items()}  # TFLOP/s x ms -> FLOPs
    c = F.count(BD.cli.parse([*TINY, "--preset=llama"]).config.model)
    tokens = 8 * 32
    assert flop["fwd+bwd"] == pytest.approx(c.flops_per_token * tokens, rel=1e-9)
    assert flop["trunk fwd+bwd"] + flop["head fwd+bwd"] == pytest.approx(flop["fwd+bwd"], rel=1e-9)
    assert flop["forward"] == pytest.approx(flop["fwd+bwd"] / 3, rel=1e-9)
    assert flop["step"] == pytest.approx(accum * flop["fwd+bwd"], rel=1e-9)
    assert by["optimizer"]["tflops"] is None and by["step"]["mfu"] is None  # no known CPU peak
    assert res["command"][:3] == ["python", "-m", "modgpt_jax.breakdown"]
    assert res["env"]["XLA_FLAGS"] == os.environ["XLA_FLAGS"]  # this suite's 8 CPU devices
    lines = out.out.splitlines()
    assert lines[-2] == BD.env_line(res["env"]) and lines[-1].startswith("command: ")
    assert lines[0].startswith("breakdown: ") and "cpu x8" in lines[0]
    for part in PARTS:
        assert any(ln.startswith(part + " ") for ln in lines), part
    assert any(ln.startswith("step - 2 x fwd+bwd - optimizer: ") for ln in lines)


@pytest.mark.parametrize("argv,option", [
    (["--iters=0"], "--iters"),
    (["--warmup=x"], "--warmup"),
    (["--json=/nonexistent-dir/x.json"], "--json"),
    (["--json="], "--json"),
    (["--json=/tmp"], "--json"),  # a directory
    (["--json"], "--json"),
    (["--normalization=batchnorm"], "normalization"),
])
def test_bad_options_one_line_exit_2(run, argv, option):
    code, out = run(*TINY, *argv)
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and option in lines[0]
    assert out.out == ""  # refused before anything was built or timed
