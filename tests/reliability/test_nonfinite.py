"""Non-finite loss or gradients: stop with one line naming the iteration and the last good
checkpoint, which stays untouched; --skip_nonfinite=True skips such steps and counts them.

learning_rate=1e30 with no warmup: the first AdamW step (size ~lr per weight) makes the weights
~1e30, so the loss of iteration 1 overflows to inf/NaN in float32, in both backends.
"""
import numpy as np

from modgpt import runlog

BLOWUP = ["--max_iters=4", "--warmup_iters=0", "--learning_rate=1e30", "--min_lr=0"]


def test_nonfinite_stops_and_keeps_last_checkpoint(backend, runner, reference, h, tmp_path):
    out = str(tmp_path / "run")
    p = runner.run(backend, *BLOWUP, f"--out_dir={out}")
    assert p.returncode == 1, p.stderr[-3000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: non-finite loss"), p.stderr
    good = h.checkpoint_path(backend, out, 0)
    assert "at iteration 1;" in lines[0] and f"last good checkpoint: {good} (untouched)" in lines[0]
    assert "--skip_nonfinite=True" in lines[0]
    end = h.end_record(out)
    assert end["status"] == "failed" and end["iter"] == 1
    # Untouched: checkpoint 0 is the only one and holds the initial weights, exactly the
    # reference run's checkpoint 0 (same seed; nothing after iteration 0 was saved).
    assert h.checkpoint_iters(backend, out) == [0]
    h.assert_same_params(h.read_params(backend, out, 0), h.read_params(backend, reference(backend), 0))


def test_skip_nonfinite_counts_skipped_steps(backend, runner, h, tmp_path):
    out = str(tmp_path / "run")
    runner.train(backend, *BLOWUP, "--skip_nonfinite=True", f"--out_dir={out}")
    skipped = h.events(out, "skipped_step")
    assert [e["iter"] for e in skipped] == [1, 2, 3]  # every step after the blow-up, none before
    iters = {r["iter"]: r for r in runlog.read(out) if r["type"] == "iter"}
    assert [iters[i]["skipped_steps"] for i in range(4)] == [0, 1, 2, 3]
    assert h.end_record(out)["status"] == "completed"
    # A skipped step leaves weights, AdamW moments and step count exactly as they were. Both loops
    # read a step's finiteness only after the next step is launched, so the skip happens on the
    # device (JAX: in the step; torch: fused AdamW's found_inf): checkpoint 4 is the state after
    # iteration 0, which a run of one step saves.
    one = str(tmp_path / "one")
    runner.train(backend, *BLOWUP, "--max_iters=1", f"--out_dir={one}")
    after, first = h.read_state(backend, out, 4), h.read_state(backend, one, 1)
    assert after.keys() == first.keys() and len(after) > len(h.read_params(backend, one, 1))
    for k in first:  # not the lr optax records (the lr of the last step taken or skipped)
        if "hyperparams" not in k:
            np.testing.assert_array_equal(after[k], first[k], err_msg=k)
