"""Seeded comparisons (modgpt.stats through modgpt.compare) on synthetic run logs, checked against
values computed by hand: with 3 seeds a paired t-test has 2 degrees of freedom, where Student's t
has closed forms: two-sided p = 1 - |t| / sqrt(t^2 + 2), and the 97.5% quantile is
0.95 * sqrt(2 / (4 * 0.975 * 0.025)) = 4.302653."""
from __future__ import annotations

import csv
import json
import math
import os

import pytest

from modgpt import compare as CMP
from modgpt import config as C
from modgpt import stats as ST
from modgpt.runlog import RunLog

T975_DF2 = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))
BASE = {1: 3.00, 2: 3.10, 3: 2.95}  # final val loss per seed
HELPS = {1: 2.80, 2: 2.92, 3: 2.74}  # differences -0.20, -0.18, -0.21: far beyond their spread
NOISE = {1: 3.05, 2: 3.02, 3: 3.01}  # differences +0.05, -0.08, +0.06


def write_run(root, name, seed, final, fpt=1000.0, **model):
    """A completed run: evaluations at tokens 0, 400 and 800 (val loss 5, then final + 0.5, then final)."""
    cfg = C.Config().replace(seed=seed, **model)
    d = os.path.join(root, name)
    log = RunLog(d)
    log.header(backend="torch", config=cfg.to_dict(), arch_name=C.arch_name(cfg.model), params=1000,
               flops_per_token=fpt, tokens_per_iter=100)
    for it, val in ((0, 5.0), (4, final + 0.5), (8, final)):
        log.iter(iter=it, loss=val, tokens_per_sec=1.0, tokens_seen=(it + 1) * 100)
        log.eval(iter=it, train_loss=val, val_loss=val, val_bpb=val / 2, tokens_seen=it * 100)
    log.end("completed", iter=8, best_val_loss=final)
    return d


@pytest.fixture
def sweep(tmp_path):
    root = str(tmp_path / "sweep")
    dirs = []
    for seed in (1, 2, 3):
        dirs.append(write_run(root, f"01-gpt2-s{seed}", seed, BASE[seed]))
    for seed in (1, 2, 3):
        dirs.append(write_run(root, f"02-gpt2+rope-s{seed}", seed, HELPS[seed], position_encoding="rope"))
    for seed in (1, 2, 3):
        dirs.append(write_run(root, f"03-gpt2+rmsnorm-s{seed}", seed, NOISE[seed], normalization="rmsnorm"))
    return root, dirs


def paired_by_hand(base, other):
    d = [other[s] - base[s] for s in sorted(base)]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    t = mean / (sd / math.sqrt(3))
    return mean, sd, T975_DF2 * sd / math.sqrt(3), 1 - abs(t) / math.sqrt(t * t + 2)


def test_paired_differences_match_hand_computed_values(sweep):
    _, dirs = sweep
    runs = [CMP.load_run(d) for d in dirs]
    groups = ST.group(runs)
    assert [g.name for g in groups] == ["gpt2", "gpt2+rope", "gpt2+rmsnorm"] and [g.seeds for g in groups] == [[1, 2, 3]] * 3
    rows = ST.table(groups, "val_loss", "tokens")
    assert rows[0].at == 800 and rows[0].diff is None
    mean = sum(BASE.values()) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in BASE.values()) / 2)
    v = rows[0].value
    assert (v.n, v.mean, v.sd) == (3, pytest.approx(mean, abs=1e-12), pytest.approx(sd, abs=1e-12))
    assert (v.lo, v.hi) == (pytest.approx(mean - T975_DF2 * sd / math.sqrt(3), abs=1e-6),
                            pytest.approx(mean + T975_DF2 * sd / math.sqrt(3), abs=1e-6))
    for row, other in ((rows[1], HELPS), (rows[2], NOISE)):
        m, s, half, p = paired_by_hand(BASE, other)
        d = row.diff
        assert d.test == "paired t (3 seeds)" and d.mean == pytest.approx(m, abs=1e-12)
        assert (d.lo, d.hi) == (pytest.approx(m - half, abs=1e-6), pytest.approx(m + half, abs=1e-6))
        assert d.p == pytest.approx(p, rel=1e-6) and d.effect == pytest.approx(m / s, rel=1e-9)
    assert rows[1].diff.p == pytest.approx(0.00200, abs=5e-5) and ST.verdict(rows[1].diff) == "helps"
    assert rows[2].diff.p > 0.5 and ST.verdict(rows[2].diff).startswith("not distinguishable from noise (p=0.")


def test_welch_when_seeds_do_not_pair(tmp_path):
    root = str(tmp_path)
    a = {1: 3.0, 2: 3.1, 3: 2.95}
    b = {4: 2.5, 5: 2.7, 6: 2.6, 7: 2.65}
    runs = [CMP.load_run(write_run(root, f"a-s{s}", s, v)) for s, v in a.items()]
    runs += [CMP.load_run(write_run(root, f"b-s{s}", s, v, position_encoding="rope")) for s, v in b.items()]
    d = ST.table(ST.group(runs), "val_loss", "tokens")[1].diff
    xa, xb = list(a.values()), list(b.values())
    ma, mb = sum(xa) / 3, sum(xb) / 4
    va = sum((x - ma) ** 2 for x in xa) / 2
    vb = sum((x - mb) ** 2 for x in xb) / 3
    se = math.sqrt(va / 3 + vb / 4)
    df = se ** 4 / ((va / 3) ** 2 / 2 + (vb / 4) ** 2 / 3)  # Welch-Satterthwaite
    from scipy import stats
    assert d.test == "Welch t" and d.mean == pytest.approx(mb - ma, abs=1e-12)
    assert d.p == pytest.approx(2 * stats.t.sf(abs(mb - ma) / se, df), rel=1e-9)
    assert d.hi - d.mean == pytest.approx(stats.t.ppf(0.975, df) * se, rel=1e-9)
    pooled = math.sqrt((2 * va + 3 * vb) / 5)
    assert d.effect == pytest.approx((mb - ma) / pooled, rel=1e-9) and d.significant


def test_equal_flops_interpolates_the_cheaper_budget(tmp_path):
    """A variant with 1.5x the FLOPs per token is read where the others end: at 800 x 1000 FLOPs, 2/3
    of its way from the evaluation at 400 tokens to the one at 800 (533.3 tokens)."""
    root = str(tmp_path)
    runs = [CMP.load_run(write_run(root, f"a-s{s}", s, 3.0)) for s in (1, 2)]
    runs += [CMP.load_run(write_run(root, f"b-s{s}", s, 2.0, fpt=1500.0, ffn_type="swiglu", activation="silu"))
             for s in (1, 2)]
    rows = ST.table(ST.group(runs), "val_loss", "flops")
    assert rows[0].at == 800 * 1000
    # b's curve: 2.5 at 400 tokens, 2.0 at 800; at 533.33 tokens: 2.5 - 0.5 * (133.33 / 400)
    assert rows[1].value.mean == pytest.approx(2.5 - 0.5 * (800 * 1000 / 1500 - 400) / 400, abs=1e-12)
    assert rows[1].diff.test == "paired: all 2 differences equal" and rows[1].diff.p is None
    assert ST.table(ST.group(runs), "val_loss", "tokens")[1].value.mean == pytest.approx(2.0)
    assert ST.table(ST.group(runs), "val_bpb", "tokens")[1].value.mean == pytest.approx(1.0)


def test_report_markdown_and_csv_carry_the_same_figures(sweep, tmp_path):
    root, dirs = sweep
    runs = [CMP.load_run(d) for d in dirs]
    out = str(tmp_path / "report")
    CMP.write_report(runs, out)
    md = open(os.path.join(out, "report.md")).read()
    rows = list(csv.DictReader(open(os.path.join(out, "seeds.csv"))))
    assert [(r["axis"], r["variant"]) for r in rows] == [(a, v) for a in ("tokens", "flops")
                                                         for v in ("gpt2", "gpt2+rope", "gpt2+rmsnorm")]
    for r in rows:
        if r["diff"]:
            cells = f"| {float(r['diff']):+.4f} | [{float(r['diff_ci_lo']):+.4f}, {float(r['diff_ci_hi']):+.4f}] | {float(r['p']):.3g} |"
            assert cells in md, cells
        assert f"| {r['variant']} | 3 | {float(r['mean']):.4f} | {float(r['sd']):.4f} |" in md
    # one change at a time, ranked by effect; the noise-level one is marked as such
    helps = md.index("| +rope | gpt2+rope |")
    noise = md.index("| +rmsnorm | gpt2+rmsnorm |")
    assert helps < noise and "| helps |" in md[helps:noise]
    assert "not distinguishable from noise" in md[noise:md.index("\n", noise)]
    assert "## Impact" not in md and "WARNING" not in md  # seeds are replicates, not a training difference
    assert os.path.getsize(os.path.join(out, "seeds_mean_curves.png")) > 1024


def test_compare_names_the_runs_a_partial_sweep_misses(sweep, tmp_path, capsys):
    root, dirs = sweep
    planned = [{"name": os.path.basename(d), "dir": d} for d in dirs]
    planned.append({"name": "03-gpt2+rmsnorm-s4", "dir": os.path.join(root, "03-gpt2+rmsnorm-s4")})
    with open(os.path.join(root, "sweep.json"), "w") as f:
        json.dump({"backend": "torch", "runs": planned}, f)
    assert CMP.main([root, "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "missing: 1 planned run(s) not completed: 03-gpt2+rmsnorm-s4 (not started)" in out
    assert "**03-gpt2+rmsnorm-s4 (not started)**: planned by the sweep" in open(tmp_path / "rep" / "report.md").read()
