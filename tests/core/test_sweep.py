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
    # the shipped classic experiment: five variants x 3 seeds, the command line overriding the file
    classic = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "sweep_classic.py")
    rc, cmds, _ = dry(capsys, classic, "--max_iters=7")
    assert rc == 0 and [c.rsplit("/", 1)[1] for c in cmds] == [
        f"{v}-s{s}" for v in ("01-gpt2", "02-gpt2+rope", "03-gpt2+rmsnorm", "04-gpt2+swiglu", "05-llama")
        for s in (1337, 1338, 1339)]
    assert all("--max_iters=2000" in c and c.index("--max_iters=2000") < c.index("--max_iters=7") for c in cmds)
    assert all(c.count("--seed=") == 1 for c in cmds) and "--seed=1338 --out_dir=R/s/02-gpt2+rope-s1338" in cmds[4]
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
    (["--variants", "gpt2,llama", "--seeds=0"], "--seeds=0: give a number of seeds or a list of distinct seeds"),
    (["--variants", "gpt2,llama", "--seeds=5,6,5"], "--seeds=5,6,5 repeats seed 5"),
    (["--variants", "gpt2,llama", "--seeds=3", "--launcher=slurmm"],
     "--launcher must be one of local, slurm; got 'slurmm' (did you mean 'slurm'?)"),
    (["--variants", "gpt2,llama", "--launcher=slurm"], "--launcher=slurm needs sbatch on the PATH"),
    (["--variants", "gpt2,llama", "--parallel_runs=3"], "--parallel_runs=3 is more than the 2 GPU(s) available (0,1)"),
    (["--variants", "gpt2,llama", "--parallel_runs=0"], "--parallel_runs must be a whole number >= 1"),
])
def test_validation_fails_up_front(tmp_path, capsys, monkeypatch, argv, msg):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # a machine with two GPUs, as far as the sweep can tell
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
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
    monkeypatch.setattr(S, "command", lambda job, backend, rest, python=sys.executable: [
        python, str(fake), *rest, *[f"--{k}={x}" for k, x in job.variant.changes.items()], f"--out_dir={job.run_dir}"])
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


def test_real_seeded_sweep_in_parallel_then_rerun(tmp_path, data_dir):
    """A tiny real sweep on CPU with the torch backend: 2 variants x 3 seeds, 2 runs at a time (about
    30 s); the report's seed statistics; then the same command again skips the 5 completed runs and
    resumes the one whose log has no end (as if it had been killed after its last checkpoint)."""
    import subprocess
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "modgpt.sweep", "--base", "gpt2", "--vary", "position_encoding=rope", "--seeds=3",
           "--parallel_runs=2", "--backend", "torch", "--size=tiny", "--max_iters=6", "--eval_interval=3",
           "--eval_iters=2", "--batch_size=4", f"--data_dir={data_dir}", "--device=cpu", "--runs_dir", str(runs),
           "--name", "seeded"]
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sweep of 6 runs on torch" in r.stdout and "2 at a time sharing the CPU" in r.stdout
    for s in (1337, 1338, 1339):
        assert f"gpt2+position_encoding=rope (seed {s}): completed" in r.stdout
    sw = runs / "seeded"
    rows = list(csv.DictReader(open(sw / "results.csv")))
    assert len(rows) == 6 and all(r["status"] == "completed" and int(r["iters"]) == 6 for r in rows)
    assert len({r["best_val_loss"] for r in rows}) == 6  # the seeds give different runs
    seeds = list(csv.DictReader(open(sw / "seeds.csv")))
    assert [(r["axis"], r["variant"], r["n"], r["seeds"]) for r in seeds] == [
        (a, v, "3", "1337 1338 1339") for a in ("tokens", "flops") for v in ("gpt2", "gpt2+position_encoding=rope")]
    assert seeds[1]["test"] == "paired t (3 seeds)" and 0 <= float(seeds[1]["p"]) <= 1
    md = (sw / "report.md").read_text()
    assert "## Seeds and significance" in md and "| +rope | gpt2+position_encoding=rope |" in md
    for name in ("seeds_mean_curves", "loss_vs_step", "loss_vs_flops"):
        assert (sw / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    log = sw / "02-gpt2+position_encoding=rope-s1338" / "log.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(ln for ln in lines if '"type":"end"' not in ln))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(continuing it)" in r.stdout and r.stdout.count("already completed; skipped") == 5
    assert "gpt2+position_encoding=rope (seed 1338) (2L-2H-64D-RoPE-LN-GELU-PreNorm-Bias-Tied): resuming" in r.stdout
    assert "gpt2+position_encoding=rope (seed 1338): completed" in r.stdout
    assert '"event":"resumed"' in log.read_text()


def test_slurm_array_script(tmp_path, capsys, monkeypatch):
    """--launcher=slurm: one array task per variant x seed, the resources asked for, each task skipping
    a completed run and resuming a started one; --dry_run writes it only, with sbatch it is submitted."""
    import subprocess
    argv = ["--variants", "gpt2,gpt2+rope", "--seeds=1,2", "--launcher=slurm", "--slurm_partition=gpu",
            "--slurm_time=02:00:00", "--slurm_gpus=1", "--slurm_setup=source .venv/bin/activate",
            "--parallel_runs=3", "--runs_dir", str(tmp_path / "runs"), "--name", "sl", "--size=tiny"]
    assert S.main([*argv, "--dry_run"]) == 0
    script = tmp_path / "runs" / "sl" / "sweep.sbatch"
    assert f"wrote {script} (4 array tasks; dry run: not submitted)" in capsys.readouterr().out
    text = script.read_text()
    for line in ("#SBATCH --array=0-3%3", "#SBATCH --partition=gpu", "#SBATCH --time=02:00:00",
                 "#SBATCH --gpus-per-task=1", "source .venv/bin/activate",
                 f"  2) dir={tmp_path}/runs/sl/02-gpt2+rope-s1; cmd=(python -m modgpt_torch.train --preset gpt2 "
                 f"--size=tiny --position_encoding=rope --seed=1 --out_dir={tmp_path}/runs/sl/02-gpt2+rope-s1) ;;",
                 'if [ "$state" = resume ]; then cmd+=(--init_from=resume); fi'):
        assert line in text.splitlines(), line
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho \"$1\" > \"$(dirname \"$1\")/submitted\"\necho Submitted batch job 42\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert S.main(argv) == 0
    assert "Submitted batch job 42 (4 array tasks" in capsys.readouterr().out
    assert (tmp_path / "runs" / "sl" / "submitted").read_text().strip() == str(script)


FAKE_LONG_RUN = textwrap.dedent("""
    import os, signal, sys, time
    got = []
    signal.signal(signal.SIGTERM, lambda s, f: got.append("TERM"))
    signal.signal(signal.SIGINT, lambda s, f: got.append("INT"))
    print("started", flush=True)
    t0 = time.time()
    while not got and time.time() - t0 < 60:
        time.sleep(0.05)
    time.sleep(0.5)  # a second signal would arrive by now
    print("signals:", ",".join(got), flush=True)
""")


def test_sigterm_stops_the_running_runs_with_one_signal_each(tmp_path, capsys, monkeypatch):
    """SIGTERM (or Ctrl-C) to a sweep: each running run gets one SIGTERM, so it stops at its next step
    boundary with a checkpoint (a second signal would stop it at once), and the sweep says how to go on."""
    import signal
    import threading
    import time
    fake = tmp_path / "long_run.py"
    fake.write_text(FAKE_LONG_RUN)
    monkeypatch.setattr(S, "backend_available", lambda b: True)
    monkeypatch.setattr(S, "command", lambda job, backend, rest, python=sys.executable: [python, str(fake)])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: a CPU machine
    outs = [tmp_path / "runs" / "t" / f"0{i}-{v}.out" for i, v in ((1, "gpt2"), (2, "llama"))]

    def term_when_started():
        t0 = time.time()
        while time.time() - t0 < 30 and not all(o.is_file() and "started" in o.read_text() for o in outs):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=term_when_started, daemon=True).start()
    rc = S.main(["--variants", "gpt2,llama", "--parallel_runs=2", "--runs_dir", str(tmp_path / "runs"), "--name", "t"])
    out = capsys.readouterr()
    assert rc == 1 and "interrupted: stopping 2 running run(s) at their next step boundary" in out.out
    assert "2 of 2 runs failed" in out.err
    assert [o.read_text().split()[-1] for o in outs] == ["TERM", "TERM"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the sweep's own handler is gone again
