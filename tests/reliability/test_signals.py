"""SIGTERM / SIGINT (preemption, Ctrl-C): checkpoint at the next step boundary, an `end` record,
exit 0 and one line saying how to resume; the resumed run is exact. Under torchrun a signal to one
rank stops every rank at the same step.

The signal is sent while iteration 4 runs: the test-only hook `step@4:sleep` (modgpt/io.py) prints
a line and sleeps 2 s between backward and update, so the stop lands at boundary 5, which is not an
evaluation step: the checkpoint there is written by the stop itself.
"""
import os
import signal
import sys

import pytest

MAX_ITERS = 8
STOP_AT = 5


def stopped_cleanly(p, sig, backend, out, it, h) -> None:
    """Send sig to the waiting run p; it exits 0 after checkpointing iteration it, says so in one
    line with the resume command, and ends its log with an `interrupted` record."""
    p.p.send_signal(sig)
    rc, rest, err = p.finish()
    assert rc == 0, err[-3000:]
    said = [line for line in rest.splitlines() if line.startswith("stopped by")]
    assert said == [f"stopped by {sig.name} at iteration {it}; saved {h.checkpoint_path(backend, out, it)}; "
                    f"resume with: python -m modgpt_{backend}.train --init_from=resume --out_dir={out}"], rest
    end = h.end_record(out)
    assert end["status"] == "interrupted" and end["iter"] == it


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_checkpoints_and_resumes(backend, runner, reference, h, tmp_path, sig):
    out = str(tmp_path / "run")
    p = runner.start(backend, f"--max_iters={MAX_ITERS}", f"--out_dir={out}", fault=f"step@{STOP_AT - 1}:sleep")
    p.wait_line(lambda s: s.startswith("[test fault]"))
    stopped_cleanly(p, sig, backend, out, STOP_AT, h)
    assert h.checkpoint_iters(backend, out)[-1] == STOP_AT
    if sig == signal.SIGINT:
        return  # the resume below is the same for both signals; run it once per backend
    runner.train(backend, f"--max_iters={MAX_ITERS}", f"--out_dir={out}", "--init_from=resume")
    assert [e["iter"] for e in h.events(out, "resumed")] == [STOP_AT]
    ref = reference(backend)
    assert h.losses(out) == h.losses(ref)
    h.assert_same_params(h.read_params(backend, out), h.read_params(backend, ref))


def test_signal_during_startup(backend, runner, reference, h, tmp_path):
    """SIGTERM while the model is being built (before the first step, before anything is written):
    the run still starts cleanly, stops at the first boundary (iteration 0) with its checkpoint,
    end record and resume hint, and the resumed run is the uninterrupted one."""
    out = str(tmp_path / "run")
    p = runner.start(backend, f"--max_iters={MAX_ITERS}", f"--out_dir={out}", fault="startup@0:sleep")
    p.wait_line(lambda s: s.startswith("[test fault]"))
    assert not os.path.exists(out)  # the signal lands before the run's first write
    stopped_cleanly(p, signal.SIGTERM, backend, out, 0, h)
    assert h.checkpoint_iters(backend, out) == [0]
    runner.train(backend, f"--max_iters={MAX_ITERS}", f"--out_dir={out}", "--init_from=resume")
    assert h.losses(out) == h.losses(reference(backend))


@pytest.mark.distributed
def test_torchrun_ranks_agree_on_stop(runner, h, tmp_path):
    """SIGTERM to rank 1 only: both ranks stop at the same boundary, rank 0 writes the checkpoint
    and the end record, torchrun exits 0. The ranks vote without waiting for the step in flight
    (parallel.StopVote: each boundary reads the vote the previous one started), so they stop one
    boundary after the one a single process stops at."""
    out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "modgpt_torch.train", *runner.cmd("torch")[3:], "--batch_size=4", "--parallel=ddp",
           f"--max_iters={MAX_ITERS}", f"--out_dir={out}"]
    p = runner.start("torch", cmd=cmd, fault=f"step@{STOP_AT - 1}:sleep")
    line = p.wait_line(lambda s: s.startswith("[test fault]") and "rank 1)" in s)
    os.kill(int(line.split("pid ")[1].split(",")[0]), signal.SIGTERM)
    rc, rest, err = p.finish()
    assert rc == 0, err[-3000:]
    said = [line for line in rest.splitlines() if line.startswith("stopped by")]
    assert len(said) == 1 and f"at iteration {STOP_AT + 1};" in said[0] and "--init_from=resume" in said[0], rest
    end = h.end_record(out)
    assert end["status"] == "interrupted" and end["iter"] == STOP_AT + 1
    assert h.checkpoint_iters("torch", out)[-1] == STOP_AT + 1


def test_second_signal_stops_at_once(backend, runner, reference, h, tmp_path):
    """Ctrl-C twice while a checkpoint is being written (the test-only hook pauses the save of
    iteration 2 just before its rename): the first asks for a stop at the next boundary, the second
    stops at once with one line, no traceback, exit 130, the partial write removed and an `end`
    record; the resume starts from the last complete checkpoint and matches the uninterrupted run."""
    import time
    out = str(tmp_path / "run")
    p = runner.start(backend, f"--max_iters={MAX_ITERS}", f"--out_dir={out}", fault="ckpt_write@2:pause")
    p.wait_line(lambda s: s.startswith("[test fault]"))
    p.p.send_signal(signal.SIGINT)
    time.sleep(1.0)  # two signals before the handler runs would count as one
    p.p.send_signal(signal.SIGINT)
    rc, rest, err = p.finish()
    assert rc == 130, err[-3000:]
    ckpt0 = h.checkpoint_path(backend, out, 0)
    assert err.strip().splitlines() == [
        f"stopped at once by a second SIGINT at iteration 2; the last complete checkpoint is {ckpt0}; "
        f"resume with: python -m modgpt_{backend}.train --init_from=resume --out_dir={out}"], err[-3000:]
    assert h.temp_checkpoints(backend, out) == [] and h.checkpoint_iters(backend, out) == [0]
    end = h.end_record(out)
    assert end["status"] == "interrupted" and end["iter"] == 2
    runner.train(backend, f"--max_iters={MAX_ITERS}", f"--out_dir={out}", "--init_from=resume")
    assert h.losses(out) == h.losses(reference(backend))
    h.assert_same_params(h.read_params(backend, out), h.read_params(backend, reference(backend)))
