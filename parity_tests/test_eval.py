"""Evaluation tasks across backends: the same weights give the same per-ending log-likelihoods (fp32,
TOL["loss"] relative to the largest) and the same choices in both backends; the evaluate commands
score a run and refuse bad input in one line."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from modgpt import config as C
from modgpt import data as D
from modgpt import tasks as TK
from modgpt import weights as W
from modgpt.presets import PRESETS
from parity_tests import compare as X


def _items(shakespeare_path, n=24):
    lines = [ln for ln in open(shakespeare_path, encoding="utf-8").read().split("\n") if len(ln) > 12]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        ends = [" " + lines[int(j)] for j in rng.integers(0, len(lines), 4)]
        out.append(TK.Item("\n".join(lines[3 * i:3 * i + 3]), ends, int(rng.integers(0, 4))))
    return out


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_per_ending_logliks_and_choices_agree(char_data, shakespeare_path, preset):
    from modgpt_jax.evaluate import loglik_fn as jax_loglik
    from modgpt_jax.model import build
    from modgpt_jax.weights import load_canonical as jax_load
    from modgpt_torch.evaluate import loglik_fn as torch_loglik
    from modgpt_torch.model import GPT
    from modgpt_torch.weights import load_canonical as torch_load
    m = C.from_flat({**PRESETS[preset], "n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 64,
                     "vocab_size": 65}).model
    rng = np.random.default_rng(1)
    tensors = {k: (rng.standard_normal(s) * 0.2).astype(np.float32) for k, s in W.canonical_shapes(m).items()}
    tm = GPT(m).eval()
    torch_load(tm, tensors)
    jm = build(m, seed=0)
    jax_load(jm, tensors)
    tok = D.get_tokenizer(D.load_meta(char_data), char_data)
    items = _items(shakespeare_path)
    got = {b: TK.score("hellaswag", items, tok.encode, m.block_size, fn)
           for b, fn in (("torch", torch_loglik(tm, "cpu")), ("jax", jax_loglik(jm)))}
    assert got["torch"].truncated > 0  # contexts past the block were cut, the same way in both
    ll = {b: np.array([r["logliks"] for r in res.items]) for b, res in got.items()}
    row = X.row(f"eval-{preset}", "hellaswag.logliks", ll["jax"], ll["torch"], X.TOL["loss"])
    assert row.passed, X.format_table([row])
    assert [(r["choice"], r["choice_norm"]) for r in got["jax"].items] == \
        [(r["choice"], r["choice_norm"]) for r in got["torch"].items]
    assert (got["jax"].acc, got["jax"].acc_norm) == (got["torch"].acc, got["torch"].acc_norm)


# CI runs torch's: the options and refusals are the core's; the JAX command is run by the next test too
@pytest.mark.parametrize("backend", ["torch", pytest.param("jax", marks=pytest.mark.slow)])
def test_evaluate_command_scores_a_run_and_refuses_bad_input(run_cli, data_dir, tmp_path, shakespeare_path, backend):
    f = tmp_path / "hs.jsonl"
    f.write_text("".join(json.dumps({"ctx": it.context, "endings": [e[1:] for e in it.endings], "label": it.label})
                         + "\n" for it in _items(shakespeare_path, 6)))
    cmd = f"modgpt_{backend}.evaluate"
    r = run_cli(cmd, f"--out_dir={tmp_path / 'none'}", "--input", str(f))
    assert r.returncode == 2 and r.stderr.startswith("error: no ") and r.stderr.count("\n") == 1, r.stderr
    run = tmp_path / "run"
    r = run_cli(f"modgpt_{backend}.train", "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=32",
                "--max_iters=1", "--eval_iters=1", "--batch_size=2", "--progress=False", "--sample_at_end=False",
                f"--data_dir={data_dir}", f"--out_dir={run}")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli(cmd, f"--out_dir={run}", "--input", str(f), "--limit", "5", "--json", str(tmp_path / "e.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("hellaswag: acc ") and "(5 items, 5 contexts cut to the block size)" in r.stdout
    res = json.loads((tmp_path / "e.json").read_text())["results"][0]
    assert res["n"] == 5 and len(res["items"]) == 5 and all(len(i["logliks"]) == 4 for i in res["items"])
    for bad, want in ((("--tasks", "helaswag"), "error: option '--tasks': unknown task 'helaswag'"),
                      (("--input", str(tmp_path / "missing.jsonl")), "error: hellaswag file"),
                      (("--input", str(shakespeare_path)), "error: "),):
        r = run_cli(cmd, f"--out_dir={run}", *bad)
        assert r.returncode == 2 and r.stderr.startswith(want) and r.stderr.count("\n") == 1, r.stderr
    assert not os.path.exists(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_tasks_during_training_score_what_the_evaluate_command_scores(run_cli, data_dir, tmp_path, shakespeare_path,
                                                                      backend):
    """--eval_tasks scores the task at every evaluation into the log and the progress line; at the
    last evaluation the figures equal the evaluate command's on the final checkpoint."""
    from modgpt import runlog
    f = tmp_path / "hs.jsonl"
    f.write_text("".join(json.dumps({"ctx": it.context, "endings": [e[1:] for e in it.endings], "label": it.label})
                         + "\n" for it in _items(shakespeare_path, 8)))
    run = tmp_path / "run"
    r = run_cli(f"modgpt_{backend}.train", "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=64",
                "--max_iters=4", "--eval_interval=2", "--eval_iters=1", "--batch_size=2", "--progress=False",
                "--sample_at_end=False", "--eval_tasks=hellaswag", f"--eval_tasks_input={f}", "--eval_tasks_limit=6",
                f"--data_dir={data_dir}", f"--out_dir={run}")
    assert r.returncode == 0, r.stderr[-2000:]
    evals = [e for e in runlog.read(str(run)) if e["type"] == "eval"]
    assert [e["iter"] for e in evals] == [0, 2, 4] and all("hellaswag_acc_norm" in e for e in evals)
    assert r.stdout.count(", hellaswag acc norm ") == 3
    r = run_cli(f"modgpt_{backend}.evaluate", f"--out_dir={run}", "--input", str(f), "--limit", "6",
                "--json", str(tmp_path / "e.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "e.json").read_text())["results"][0]
    assert (evals[-1]["hellaswag_acc"], evals[-1]["hellaswag_acc_norm"]) == (res["acc"], res["acc_norm"])
