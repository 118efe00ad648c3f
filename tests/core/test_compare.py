"""modgpt.compare on synthetic run logs: known numbers in, known table, reports and plots out."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest

from modgpt import compare as CMP
from modgpt import config as C
from modgpt.io import RunLock

TPI = 1000  # tokens per iteration of every synthetic run
FPT = 2e6  # FLOPs per token


def make_run(root, name, vals, *, preset_changes=None, train=None, n_iter=10, tps=None, end="completed",
             t0=1000.0, dt=2.0, fpt=FPT, message=None, bytes_per_token=None, hellaswag=None):
    """Write runs/<name>/log.jsonl: header, n_iter iter records, evals at vals' iters, an end record."""
    d = os.path.join(root, name)
    os.makedirs(d)
    cfg = C.Config().replace(**{"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64,
                                **(preset_changes or {}), **(train or {})})
    tps = tps or [50.0] + [100.0 + i for i in range(n_iter - 1)]
    recs = [dict(type="header", time=t0, backend="torch", config=cfg.to_dict(), arch_name=C.arch_name(cfg.model),
                 params=123456, flops_per_token=fpt, tokens_per_iter=TPI, device="cpu", n_devices=1)]
    for it in range(n_iter):
        recs.append(dict(type="iter", time=t0 + dt * (it + 1), iter=it, loss=4.0 - 0.1 * it, lr=1e-3, grad_norm=1.0,
                         dt=dt, tokens_per_sec=tps[it], mfu=0.01 * (it + 1), peak_mem_bytes=(it + 1) * 2**20,
                         tokens_seen=(it + 1) * TPI, skipped_steps=0))
    for it, v in vals:
        bpb = {} if bytes_per_token is None else {"val_bpb": v / math.log(2) / bytes_per_token}
        if hellaswag is not None:  # acc_norm grows with the iteration
            bpb.update(hellaswag_acc=hellaswag * it, hellaswag_acc_norm=hellaswag * it + 0.01)
        recs.append(dict(type="eval", time=t0 + dt * (it + 1), iter=it, train_loss=v - 0.05, val_loss=v,
                         tokens_seen=it * TPI, **bpb))
    if end:
        recs.append(dict(type="end", time=t0 + dt * (n_iter + 1), iter=n_iter, status=end, wall_time=dt * (n_iter + 1),
                         best_val_loss=min(v for _, v in vals) if vals else None, message=message))
    with open(os.path.join(d, "log.jsonl"), "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    return d


@pytest.fixture
def three(tmp_path):
    root = str(tmp_path / "runs")
    a = make_run(root, "a-gpt2", [(0, 4.0), (5, 2.2), (9, 2.0)], t0=1000)
    b = make_run(root, "b-rope", [(0, 4.0), (5, 2.0), (9, 1.9)], preset_changes={"position_encoding": "rope"}, t0=2000)
    c = make_run(root, "c-rmsnorm", [(0, 4.0), (5, 2.1), (9, 2.1)], preset_changes={"normalization": "rmsnorm"},
                 t0=3000, fpt=4e6)
    return root, [a, b, c]


def test_table_sorted_with_deltas_tokens_flops(three):
    root, dirs = three
    runs = CMP.rank([CMP.load_run(d) for d in dirs])
    assert [r.name for r in runs] == ["b-rope", "a-gpt2", "c-rmsnorm"]
    b, a, c = runs
    assert b.delta == 0 and a.delta == pytest.approx(0.1) and a.delta_pct == pytest.approx(100 * 0.1 / 1.9)
    assert c.delta == pytest.approx(0.2)
    assert a.iters == 10 and a.tokens == 10 * TPI and a.train_flops == 10 * TPI * FPT
    assert c.train_flops == 10 * TPI * 4e6
    assert a.best_val_iter == 9 and a.train_loss == pytest.approx(1.95)  # last eval's train loss
    # warm-up: the first record (50 tok/s) is left out; median of 100..108 is 104
    assert a.tokens_per_sec == 104.0 and a.mfu == pytest.approx(0.06)
    assert a.peak_mem_bytes == 10 * 2**20 and a.wall_time == pytest.approx(22.0)
    assert all(r.status == "completed" and r.note == "" for r in runs)
    rows = CMP.table_rows(runs)
    assert rows[1][:4] == ["2", "a-gpt2", "completed", "torch"]
    assert rows[1][10:14] == ["2.0000", "-", "+0.1000", "+5.26"]  # no bits per byte in these logs
    assert rows[0][12] == "+0.0000" and rows[1][8] == "10.00k"


def test_impact_attribution_and_fairness(tmp_path):
    root = str(tmp_path)
    a = CMP.load_run(make_run(root, "a", [(9, 2.0)]))
    b = CMP.load_run(make_run(root, "b", [(9, 1.958)], preset_changes={"position_encoding": "rope"}))
    s = CMP.load_run(make_run(root, "s", [(9, 2.1)], preset_changes={"ffn_type": "swiglu", "activation": "silu"}))
    two = CMP.load_run(make_run(root, "two", [(9, 1.5)], preset_changes={"position_encoding": "rope",
                                                                         "normalization": "rmsnorm"}))
    seed = CMP.load_run(make_run(root, "seed", [(9, 1.9)], preset_changes={"normalization": "rmsnorm"},
                                 train={"seed": 7}))
    lines, warns = CMP.impact([a, b, s, two, seed])
    assert "position_encoding: learned_absolute -> rope: val loss -0.0420 (-2.1%)  [a -> b]" in lines
    assert any(x.startswith("activation: gelu -> silu, ffn_type: standard -> swiglu: val loss +0.1000 (+5.0%)")
               for x in lines)  # a named change (swiglu) counts as one
    assert any(x.startswith("normalization: layernorm -> rmsnorm") and "[a -> seed]" in x
               and "WARNING not a fair comparison: seed 1337 vs 7" in x for x in lines)
    assert not any("[a -> two]" in x for x in lines)  # two options changed: not attributed
    assert any("[b -> two]" in x for x in lines)
    assert warns == ["seed differs from a in training options (seed): loss differences are not due to the "
                     "architecture alone"]


def test_crashed_running_failed_marked(tmp_path):
    root = str(tmp_path)
    crashed = make_run(root, "crashed", [(5, 2.5)], end=None)
    running = make_run(root, "running", [(5, 2.4)], end=None)
    stale = make_run(root, "stale", [(5, 2.3)], end=None)
    failed = make_run(root, "failed", [(5, 2.2)], end="failed", message="loss is nan")
    RunLock(stale).acquire().release()  # a lock file nobody holds: a dead run
    with RunLock(running):
        runs = {r.name: r for r in (CMP.load_run(d) for d in (crashed, running, stale, failed))}
        assert CMP.lock_held(running) and not CMP.lock_held(stale)
    assert runs["crashed"].status == "crashed" and runs["stale"].status == "crashed"
    assert runs["running"].status == "running"
    assert "no end record; logged 10 steps" in runs["crashed"].note
    assert runs["failed"].status == "failed" and runs["failed"].note == "failed at iter 10: loss is nan"
    assert runs["crashed"].best_val_loss == 2.5 and runs["crashed"].tokens == 10 * TPI  # what it logged
    text = CMP.summary(list(runs.values()))
    assert "note: running: running: no end record" in text and "crashed" in text


def test_reports_csv_markdown_and_four_plots(three, tmp_path):
    root, dirs = three
    out = str(tmp_path / "report")
    r = subprocess.run([sys.executable, "-m", "modgpt.compare", "--runs_dir", root, "--latest", "3", "--out", out],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["#", "run", "status", "backend"]
    assert lines[1].split()[1] == "b-rope" and lines[3].split()[1] == "c-rmsnorm"
    for name in ("step", "tokens", "flops", "time"):
        p = os.path.join(out, f"loss_vs_{name}.png")
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(p) > 1024
    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [x["run"] for x in rows] == ["b-rope", "a-gpt2", "c-rmsnorm"]
    assert float(rows[1]["delta"]) == pytest.approx(0.1) and int(rows[1]["tokens"]) == 10 * TPI
    assert float(rows[2]["train_flops"]) == 10 * TPI * 4e6 and float(rows[0]["tokens_per_sec"]) == 104.0
    md = open(os.path.join(out, "report.md")).read()
    assert "| # | run | status |" in md and "| 2 | a-gpt2 | completed |" in md
    assert "position_encoding: learned_absolute -> rope: val loss -0.1000 (-5.0%)" in md
    assert "![loss vs flops](loss_vs_flops.png)" in md and "median" in md
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]  # atomic writes leave no temp files


def test_latest_picks_newest_and_sweep_dir_expands(three):
    root, dirs = three
    os.utime(os.path.join(dirs[0], "log.jsonl"), (5e9, 5e9))  # a-gpt2 is now the newest
    assert [os.path.basename(d) for d in CMP.find_runs(root, latest=2)] == ["c-rmsnorm", "a-gpt2"]
    assert [os.path.basename(d) for d in CMP.expand([root])] == ["a-gpt2", "b-rope", "c-rmsnorm"]


@pytest.mark.parametrize("setup, msg", [
    ("missing", "run directory"),
    ("nolog", "no run log at"),
    ("empty", "is empty"),
    ("garbage", "is empty"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, setup, msg):
    d = tmp_path / "r"
    if setup != "missing":
        d.mkdir()
        (d / "sub").mkdir()
    if setup == "empty":
        (d / "log.jsonl").write_text("")
    if setup == "garbage":
        (d / "log.jsonl").write_text("{torn\n")
    assert CMP.main([str(d), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1


def test_no_runs_and_conflicting_args(tmp_path, capsys, three):
    (tmp_path / "none").mkdir()
    assert CMP.main(["--runs_dir", str(tmp_path / "none")]) == 2
    assert "no runs" in capsys.readouterr().err
    assert CMP.main(["--latest", "1", three[1][0]]) == 2
    assert "not both" in capsys.readouterr().err


def test_bits_per_byte_ranks_runs_with_different_tokenizers(tmp_path):
    """A char-level run (a byte a token) and a BPE run (4 bytes a token): the BPE run's loss is higher
    but its bits per byte lower; --metric val_bpb ranks by that, shows it and plots it."""
    root = str(tmp_path / "runs")
    char = make_run(root, "char", [(0, 4.0), (9, 1.5)], bytes_per_token=1.0)
    bpe = make_run(root, "bpe", [(0, 9.0), (9, 4.0)], bytes_per_token=4.0, t0=2000)
    runs = [CMP.load_run(d) for d in (char, bpe)]
    assert [r.name for r in CMP.rank(runs)] == ["char", "bpe"]
    ranked = CMP.rank(runs, "val_bpb")
    assert [r.name for r in ranked] == ["bpe", "char"]
    assert ranked[0].best_val_bpb == pytest.approx(4.0 / math.log(2) / 4) and ranked[0].delta == 0
    assert ranked[1].delta == pytest.approx(1.5 / math.log(2) - 1.0 / math.log(2))
    out = tmp_path / "report"
    p = subprocess.run([sys.executable, "-m", "modgpt.compare", char, bpe, "--metric", "val_bpb", "--out", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "sorted by best bits per byte" in (out / "report.md").read_text()
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["run"] for r in rows] == ["bpe", "char"] and float(rows[0]["best_val_bpb"]) == pytest.approx(1 / math.log(2))
    bad = subprocess.run([sys.executable, "-m", "modgpt.compare", char, "--metric", "bpb", "--out", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: option '--metric' must be one of val_loss, val_bpb; got 'bpb'"


def test_evaluation_tasks_get_a_column_and_a_plot(tmp_path):
    root = str(tmp_path / "runs")
    a = make_run(root, "a", [(0, 4.0), (9, 2.0)], hellaswag=0.03)
    b = make_run(root, "b", [(0, 4.0), (9, 2.1)], hellaswag=0.02, fpt=4e6, t0=2000)
    plain = make_run(root, "plain", [(0, 4.0), (9, 2.2)], t0=3000)
    runs = CMP.rank([CMP.load_run(d) for d in (a, b, plain)])
    assert CMP.headers(runs)[-1] == "hellaswag acc_norm"
    assert [row[-1] for row in CMP.table_rows(runs)] == ["0.2800", "0.1900", "-"]  # the last evaluation's
    assert runs[1].task_curves["hellaswag"] == [(0, 0, 2.0, 0.01), (9, 9000, 20.0, pytest.approx(0.19))]
    out = tmp_path / "report"
    paths = CMP.write_report(runs, str(out))
    assert str(out / "hellaswag_vs_tokens_flops.png") in paths
    assert (out / "hellaswag_vs_tokens_flops.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["hellaswag_acc_norm"] for r in rows] == ["0.28", "0.19", ""]
    assert "![hellaswag vs tokens flops](hellaswag_vs_tokens_flops.png)" in (out / "report.md").read_text()
