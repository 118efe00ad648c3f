"""Signals and non-finite steps: SIGTERM checkpoints at a step boundary and resumes; NaN stops."""
import os
import signal
import subprocess
import sys
import time

from modgpt import runlog

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ARGS = ["--size=tiny", "--batch_size=2", "--eval_iters=1", "--log_interval=1", "--progress=False"]


def test_sigterm_saves_and_resumes(data_dir, tmp_path):
    out = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "modgpt_torch.train", *ARGS, "--max_iters=100000", "--eval_interval=100000",
           f"--data_dir={data_dir}", f"--out_dir={out}"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    for line in p.stdout:  # wait until it is really training
        if line.startswith("iter 3:"):
            break
    p.send_signal(signal.SIGTERM)
    rest, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "resume with: python -m modgpt_torch.train --init_from=resume" in rest
    end = runlog.read(out)[-1]
    assert end["type"] == "end" and end["status"] == "interrupted"
    from modgpt_torch.checkpoint import load_latest
    stopped = load_latest(out)["iter"]
    assert stopped == end["iter"] >= 4
    r = subprocess.run([sys.executable, "-m", "modgpt_torch.train", *ARGS, f"--max_iters={stopped + 2}",
                        f"--data_dir={data_dir}", f"--out_dir={out}", "--init_from=resume"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert runlog.read(out)[-1]["status"] == "completed" and load_latest(out)["iter"] == stopped + 2


def test_nonfinite_stops_with_message(data_dir, tmp_path):
    out = str(tmp_path / "run")
    # lr 1e30: the first Adam step (size ~lr) blows the weights up, so iteration 1 is NaN
    cmd = [sys.executable, "-m", "modgpt_torch.train", *ARGS, "--max_iters=4", "--eval_interval=2",
           "--warmup_iters=0", "--learning_rate=1e30", "--min_lr=0", f"--data_dir={data_dir}", f"--out_dir={out}"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 1
    assert "iteration 1" in p.stderr and "ckpt-00000000.pt" in p.stderr
    assert runlog.read(out)[-1]["status"] == "failed"
    from modgpt_torch.checkpoint import latest
    assert latest(out).endswith("ckpt-00000000.pt")  # the last good checkpoint is untouched
    p = subprocess.run(cmd[:-1] + [f"--out_dir={out}2", "--skip_nonfinite=True"], capture_output=True,
                       text=True, env=ENV, timeout=120)
    assert p.returncode == 0, p.stderr
    recs = runlog.read(f"{out}2")
    assert sum(r["type"] == "event" and r["event"] == "skipped_step" for r in recs) == 3
