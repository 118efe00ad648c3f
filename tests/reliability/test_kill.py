"""SIGKILL at chosen and at random points: the last complete checkpoint stays readable, and
`--init_from=resume` finishes the run with the same per-iteration losses and bit-identical final
parameters as a run that was never killed (CPU float32: batches depend only on seed and
iteration, and the checkpoint restores model, optimizer and RNG state).

Deterministic kill points use the test-only MODGPT_TEST_FAULT hook (modgpt/io.py): `step@K:pause`
stops the process between backward and update of iteration K; `ckpt_write@K:pause` stops it
inside the save of iteration K with the temporary file/dir fully written but truncated to half
(a torn write) and not yet renamed. The test waits for the hook's line, then sends SIGKILL.
Random trials draw the point from random.Random(f"{backend}-{trial}") so a failure reproduces
(backend and trial number are in the test id).
"""
import random
import signal
import time

import pytest

MAX_ITERS = 8
EVAL_INTERVAL = 2


def expected_last(kind: str, k: int) -> int | None:
    """Latest complete checkpoint after a kill at (kind, k); checkpoints are saved every 2 iters."""
    if kind == "step":  # iteration k's evaluation and save (if due) come before its step
        return k - k % EVAL_INTERVAL
    return k - EVAL_INTERVAL if k >= EVAL_INTERVAL else None  # killed inside the save of k


def kill_trial(backend, runner, reference, h, tmp_path, kind, k, delay=None):
    ref = reference(backend)
    out = str(tmp_path / "run")
    if kind == "timer":  # no hook: SIGKILL `delay` seconds after iteration 0 finished
        p = runner.start(backend, f"--max_iters={MAX_ITERS}", f"--out_dir={out}")
        p.wait_line(lambda s: s.startswith("iter 0/"))
        time.sleep(delay)
    else:
        p = runner.start(backend, f"--max_iters={MAX_ITERS}", f"--out_dir={out}", fault=f"{kind}@{k}:pause")
        p.wait_line(lambda s: s.startswith("[test fault]"))
    p.p.send_signal(signal.SIGKILL)
    p.kill()
    assert p.p.returncode == -signal.SIGKILL

    its = h.checkpoint_iters(backend, out)
    if kind == "ckpt_write":
        assert h.temp_checkpoints(backend, out), "the kill should have hit a half-written checkpoint"
        assert k not in its
    if kind != "timer":
        want = expected_last(kind, k)
        assert (its[-1] if its else None) == want, its
    h.losses(out)  # the killed run's log is still readable (torn last line skipped)
    # The last complete checkpoint is readable and holds what the uninterrupted run had there.
    if its:
        h.assert_same_params(h.read_params(backend, out, its[-1]), h.read_params(backend, ref, its[-1]))

    p = runner.train(backend, f"--max_iters={MAX_ITERS}", f"--out_dir={out}", "--init_from=resume")
    resumed = h.events(out, "resumed")
    if its:
        assert [e["iter"] for e in resumed] == [its[-1]]
    else:  # killed inside the first save: the resume starts the run again
        assert not resumed and "starting it again from iteration 0" in p.stdout
    assert h.end_record(out)["status"] == "completed"
    assert h.temp_checkpoints(backend, out) == []  # torn temp files are cleaned up by the next save
    assert h.losses(out) == h.losses(ref)
    h.assert_same_params(h.read_params(backend, out, MAX_ITERS), h.read_params(backend, ref, MAX_ITERS))


@pytest.mark.parametrize("kind,k", [("step", 3), ("ckpt_write", 4)])
def test_sigkill_then_resume_is_exact(backend, runner, reference, h, tmp_path, kind, k):
    kill_trial(backend, runner, reference, h, tmp_path, kind, k)


def random_trial(backend: str, i: int):
    """Trial i: a kind (cycled, so every kind is covered) and a point drawn from a seeded rng."""
    rng = random.Random(f"{backend}-{i}")
    kind = ["timer", "step", "ckpt_write"][i % 3]
    if kind == "step":
        return kind, rng.randrange(0, MAX_ITERS), None
    if kind == "ckpt_write":
        return kind, rng.randrange(0, MAX_ITERS, EVAL_INTERVAL), None
    return kind, None, rng.uniform(0.0, 0.4)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(5))
def test_sigkill_random_points(backend, runner, reference, h, tmp_path, trial):
    kind, k, delay = random_trial(backend, trial)
    print(f"trial {trial}: {kind} k={k} delay={delay}")
    kill_trial(backend, runner, reference, h, tmp_path, kind, k, delay)


@pytest.mark.slow
def test_sigkill_in_first_checkpoint(backend, runner, reference, h, tmp_path):
    """Killed while writing checkpoint 0: there is nothing to restore; resume starts over."""
    kill_trial(backend, runner, reference, h, tmp_path, "ckpt_write", 0)
