"""Moving a trained model between backends through the canonical file, with the real commands:
train a tiny run in one backend, export it, continue it in the other with --init_from=FILE.
The continuing run's first evaluation (iteration 0, before any step) must equal the exporter's
last one: evaluation batches are the same at every evaluation (`get(split, 10**9 + k)`), so equal
weights give equal losses to fp32 roundoff (TOL["loss"])."""
from __future__ import annotations

import os

import pytest

from modgpt import runlog
from parity_tests import compare as X

TINY = ["--size=tiny", "--batch_size=4", "--eval_iters=2", "--log_interval=1", "--progress=False",
        "--device=cpu", "--seed=7"]


def evals(run_dir):
    return [r for r in runlog.read(run_dir) if r["type"] == "eval"]


@pytest.mark.parametrize("src,dst,preset", [("torch", "jax", "gpt2"), ("jax", "torch", "llama")])
def test_continue_in_the_other_backend(run_cli, data_dir, tmp_path, src, dst, preset):
    a, b, f = tmp_path / "a", tmp_path / "b", tmp_path / "w.safetensors"
    common = [f"--data_dir={data_dir}", *TINY]
    r = run_cli(f"modgpt_{src}.train", f"--preset={preset}", "--max_iters=6", "--eval_interval=6",
                f"--out_dir={a}", "--learning_rate=1e-2", "--warmup_iters=1", *common)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli(f"modgpt_{src}.export", f"--out_dir={a}", "--to", str(f))
    assert r.returncode == 0 and os.path.isfile(f), r.stderr[-2000:]
    r = run_cli(f"modgpt_{dst}.train", f"--init_from={f}", "--max_iters=2", "--eval_interval=2",
                f"--out_dir={b}", *common)
    assert r.returncode == 0, r.stderr[-2000:]
    last, first = evals(a)[-1], evals(b)[0]
    assert last["iter"] == 6 and first["iter"] == 0
    # the file carries training: a fresh init would start near ln(65) = 4.17, not at the trained loss
    assert evals(a)[0]["val_loss"] - last["val_loss"] > 0.2, (evals(a)[0], last)
    for k in ("train_loss", "val_loss"):
        row = X.row(f"{src}->{dst}", k, first[k], last[k], X.TOL["loss"])
        assert row.passed, X.format_table([row])
    # and it trains on from there
    assert [r["status"] for r in runlog.read(str(b)) if r["type"] == "end"] == ["completed"]
