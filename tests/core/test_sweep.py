"""modgpt.sweep: planned commands (one at a time, grid, named variants), validation, orchestration."""
import csv
import os
import sys
import textwrap

import pytest

from modgpt import sweep as S


def dry(capsys, *argv):
    rc = S.main([*argv, "--dry_run", "--runs_dir", "R", "--name", "s"])
    out = capsys.readouterr()
    cmds = [ln.split(": ", 1)[1] for ln in out.out.splitlines() if ln.startswith("[")]
    return rc, cmds, out


def test_one_at_a_time_commands(capsys):
    rc, cmds, _ = dry(capsys, "--base", "gpt2", "--vary", "position_encoding=rope,none",
                      "--vary=normalization=rmsnorm", "--size=tiny", "--max_iters", "50")
    assert rc == 0
    common = "python -m modgpt_torch.train --preset gpt2 --size=tiny --max_iters=50"
    assert cmds == [
        f"{common} --out_dir=R/s/01-gpt2",
        f"{common} --position_encoding=rope --out_dir=R/s/02-gpt2+position_encoding=rope",
        f"{common} --position_encoding=none --out_dir=R/s/03-gpt2+position_encoding=none",
        f"{common} --normalization=rmsnorm --out_dir=R/s/04-gpt2+normalization=rmsnorm",
    ]


def test_grid_commands_include_base_and_drop_duplicates(capsys):
    rc, cmds, out = dry(capsys, "--base", "gpt2", "--vary", "position_encoding=rope,learned_absolute",
                        "--vary", "normalization=rmsnorm", "--grid", "--backend", "jax")
    assert rc == 0
    pre = "python -m modgpt_jax.train --preset gpt2"
    assert cmds == [
        f"{pre} --out_dir=R/s/01-gpt2",
        f"{pre} --normalization=rmsnorm --out_dir=R/s/02-gpt2+normalization=rmsnorm",
        f"{pre} --position_encoding=rope --out_dir=R/s/03-gpt2+position_encoding=rope",
        f"{pre} --position_encoding=rope --normalization=rmsnorm "
        f"--out_dir=R/s/04-gpt2+position_encoding=rope+normalization=rmsnorm",
    ]
    assert "skipping variant 'gpt2+position_encoding=learned_absolute': same config as 'gpt2'" in out.out


def test_named_variants_and_sweep_file(capsys, tmp_path):
    rc, cmds, _ = dry(capsys, "--variants", "gpt2,gpt2+rope,gpt2+swiglu,llama", "--seed=3")
    assert rc == 0 and len(cmds) == 4
    assert cmds[2] == ("python -m modgpt_torch.train --preset gpt2 --seed=3 --ffn_type=swiglu --activation=silu "
                       "--out_dir=R/s/03-gpt2+swiglu")
    assert cmds[3].startswith("python -m modgpt_torch.train --preset llama --seed=3 --out_dir")
    # the shipped classic experiment: five runs, the command line overriding the file
    classic = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "sweep_classic.py")
    rc, cmds, _ = dry(capsys, classic, "--max_iters=7")
    assert rc == 0 and [c.rsplit("/", 1)[1] for c in cmds] == [
        "01-gpt2", "02-gpt2+rope", "03-gpt2+rmsnorm", "04-gpt2+swiglu", "05-llama"]
    assert all("--max_iters=2000" in c and c.index("--max_iters=2000") < c.index("--max_iters=7") for c in cmds)
    f = tmp_path / "sw.py"
    f.write_text("base = 'llama'\nvary = {'position_encoding': ['learned_absolute']}\nsize = 'tiny'\n")
    rc, cmds, _ = dry(capsys, str(f))
    assert rc == 0 and cmds[1].endswith("--size=tiny --position_encoding=learned_absolute "
                                        "--out_dir=R/s/02-llama+position_encoding=learned_absolute")


@pytest.mark.parametrize("argv, msg", [
    (["--base", "gpt2", "--vary", "position_encoding=rope,xpos"],
     "variant 'gpt2+position_encoding=xpos': option 'position_encoding' must be one of"),
    (["--base", "gpt3", "--vary", "bias=False"], "unknown preset 'gpt3' for --base (did you mean 'gpt2'?)"),
    (["--base", "gpt2", "--vary", "n_layr=2,3"], "unknown option 'n_layr' (did you mean 'n_layer'?)"),
    (["--base", "gpt2", "--vary", "n_head=5"], "variant 'gpt2+n_head=5': n_embd (768) must be divisible by n_head (5)"),
    (["--variants", "gpt2,gpt2+rop"], "unknown change 'rop' in variant 'gpt2+rop' (did you mean 'rope'?)"),
    (["--base", "gpt2", "--vary", "bias=True"], "the sweep has 1 distinct variant(s)"),
    (["--base", "gpt2", "--vary", "out_dir=x"], "--vary out_dir: the sweep sets each run's out_dir"),
    (["--base", "gpt2", "--vary", "rope"], "--vary 'rope' must look like OPTION=V1,V2"),
    (["--base", "gpt2"], "--base needs at least one --vary"),
    (["--variants", "gpt2,llama", "--backend", "mlx"], "--backend must be one of jax, torch"),
    (["--variants", "gpt2,llama", "--dropout=2"], "variant 'gpt2': option 'dropout' must be in [0, 1)"),
])
def test_validation_fails_up_front(tmp_path, capsys, argv, msg):
    rc = S.main([*argv, "--runs_dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and msg in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()  # nothing was started or created


FAKE_TRAIN = textwrap.dedent("""
    import sys
    from modgpt import config as C
    from modgpt.runlog import RunLog
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
    if args.get("normalization") == "rmsnorm":
        print("error: simulated crash", file=sys.stderr)
        raise SystemExit(1)
    cfg = C.Config().replace(**{k: v for k, v in args.items() if k in C.KEY_SECTION})
    log = RunLog(args["out_dir"])
    log.header(backend="torch", config=cfg.to_dict(), arch_name=C.arch_name(cfg.model), params=1000,
               flops_per_token=6000.0, tokens_per_iter=100)
    base = 2.0 if cfg.model.position_encoding == "rope" else 2.5
    for it in range(4):
        log.iter(iter=it, loss=4.0 - it * 0.5, tokens_per_sec=1000.0, mfu=None, tokens_seen=(it + 1) * 100)
    log.eval(iter=4, train_loss=base - 0.1, val_loss=base, tokens_seen=400)
    log.end("completed", iter=4, best_val_loss=base)
""")


def test_sweep_runs_reports_and_continues_after_failure(tmp_path, capsys, monkeypatch):
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    monkeypatch.setenv("PYTHONPATH", root)
    monkeypatch.setattr(S, "backend_available", lambda b: True)
    monkeypatch.setattr(S, "command", lambda v, backend, rest, python=sys.executable: [
        python, str(fake), *rest, *[f"--{k}={x}" for k, x in v.changes.items()], f"--out_dir={v.run_dir}"])
    runs = tmp_path / "runs"
    rc = S.main(["--base", "gpt2", "--vary", "normalization=rmsnorm", "--vary", "position_encoding=rope",
                 "--runs_dir", str(runs), "--name", "sw"])
    out = capsys.readouterr()
    assert rc == 1 and "1 of 3 runs failed: gpt2+normalization=rmsnorm" in out.err
    lines = out.out.splitlines()
    assert any(ln.startswith("[1/3] gpt2 (") and ln.endswith("starting") for ln in lines)
    assert "[1/3] gpt2: completed: best val 2.5000 at iter 4, 4 iters, 1,000 tok/s, 0s" in lines
    assert any(ln.startswith("[2/3] gpt2+normalization=rmsnorm: FAILED (exit 1, no run log): error: simulated crash")
               for ln in lines)
    assert any(ln.startswith("[3/3] gpt2+position_encoding=rope: completed: best val 2.0000") for ln in lines)
    sw = runs / "sw"
    assert (sw / "sweep.json").is_file() and (sw / "02-gpt2+normalization=rmsnorm.out").is_file()
    for f in ("report.md", "results.csv", "loss_vs_step.png", "loss_vs_tokens.png", "loss_vs_flops.png",
              "loss_vs_time.png"):
        assert (sw / f).stat().st_size > 0, f
    rows = list(csv.DictReader(open(sw / "results.csv")))
    assert [r["run"] for r in rows] == ["03-gpt2+position_encoding=rope", "01-gpt2"]
    md = (sw / "report.md").read_text()
    assert "position_encoding: learned_absolute -> rope: val loss -0.5000 (-20.0%)" in md
    # a second sweep into the same directory is refused before anything runs
    assert S.main(["--base", "gpt2", "--vary", "bias=False", "--runs_dir", str(runs), "--name", "sw"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_real_sweep_two_configs(tmp_path, data_dir):
    """A tiny real sweep on CPU with the torch backend (about 10 s): two runs, the report, the CSV and
    four plots."""
    import subprocess
    runs = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "modgpt.sweep", "--base", "gpt2", "--vary", "position_encoding=rope",
                        "--backend", "torch", "--size=tiny", "--max_iters=6", "--eval_interval=3", "--eval_iters=2",
                        "--batch_size=4", f"--data_dir={data_dir}", "--device=cpu", "--runs_dir", str(runs),
                        "--name", "two"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[1/2] gpt2: completed" in r.stdout and "[2/2] gpt2+position_encoding=rope: completed" in r.stdout
    sw = runs / "two"
    rows = list(csv.DictReader(open(sw / "results.csv")))
    assert sorted(r["run"] for r in rows) == ["01-gpt2", "02-gpt2+position_encoding=rope"]
    assert all(r["status"] == "completed" and int(r["iters"]) == 6 and float(r["best_val_loss"]) > 0 for r in rows)
    assert rows[0]["tokens"] == rows[1]["tokens"] == str(6 * 4 * 64)  # the same token budget
    md = (sw / "report.md").read_text()
    assert "position_encoding: learned_absolute -> rope: val loss" in md and "WARNING" not in md
    for name in ("step", "tokens", "flops", "time"):
        png = sw / f"loss_vs_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1024
