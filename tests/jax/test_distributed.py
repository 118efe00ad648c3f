"""Multi-process JAX on one machine: 2 processes x 2 fake CPU devices, gloo collectives, started
through the environment variables of modgpt_jax/distributed.py.

The mesh is pure FSDP over all 4 devices, so parameters and optimizer state are split across the
two processes (the gradient reduce-scatter, the orbax checkpoint and the end-of-run gather all
cross processes). Each process loads only its half of every global batch (BatchSampler rank/world);
the global batch is assembled from the halves by jax.make_array_from_process_local_data. Loading the
full batch in each process would give a 16-row batch the step was not compiled for; loading the
wrong half would change the loss.
"""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest

pytestmark = pytest.mark.distributed

STEPS = 3
ARGS = ["--preset=llama", "--size=tiny", "--batch_size=8", "--dropout=0.1", "--warmup_iters=0",
        "--learning_rate=1e-3", "--mesh_data=1", "--mesh_fsdp=4", f"--max_iters={STEPS}",
        f"--eval_interval={STEPS}", "--eval_iters=1", "--log_interval=1", "--progress=False"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two(data_dir, out, *args, fault: str | None = None) -> list:
    """`python -m modgpt_jax.train` as processes 0 and 1 of one run (2 fake devices each)."""
    import os
    import subprocess
    import sys
    port = free_port()
    procs = []
    for i in range(2):
        env = {k: v for k, v in os.environ.items() if k != "MODGPT_TEST_FAULT"}
        env.update({"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PYTHONUNBUFFERED": "1",
                    "MODGPT_CPU_COLLECTIVES": "gloo", "MODGPT_COORDINATOR": f"127.0.0.1:{port}",
                    "MODGPT_NUM_PROCESSES": "2", "MODGPT_PROCESS_ID": str(i), "WANDB_MODE": "offline"},
                   **({"MODGPT_TEST_FAULT": fault} if fault else {}))
        procs.append(subprocess.Popen([sys.executable, "-m", "modgpt_jax.train", *ARGS, *args,
                                       f"--data_dir={data_dir}", f"--out_dir={out}"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs) -> list[tuple[str, str]]:
    """Wait for both processes (killing any still running after 240 s) and check they exited 0."""
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, o[-2000:] + e[-3000:]
    return outs


def test_two_processes_match_one(data_dir, tmp_path, train_steps, iter_losses, trackers):
    out = tmp_path / "mp"
    procs = start_two(data_dir, out, "--wandb=True", "--tensorboard=True")
    outs = finish(procs)
    main_out, other_out = outs[0][0], outs[1][0]
    assert "FSDP: mesh data=1 x fsdp=4 (2 process(es))" in main_out and "cpu x4" in main_out
    assert "iter 0/" in main_out and "iter 0/" not in other_out  # only process 0 reports
    # and only process 0 tracks: one W&B run, one TensorBoard events file
    assert "wandb: offline" in main_out and "wandb" not in other_out
    assert len(trackers.wandb_sessions(out)) == 1 and len(os.listdir(out / "tensorboard")) == 1
    assert "sample (seed 1337" in main_out

    # the same config on one process with 4 devices (the in-process Trainer, the same batches and schedule)
    _, ref, _ = train_steps({"lr_decay_iters": STEPS}, 1, 4, STEPS)  # unset, the decay follows max_iters
    got = iter_losses(out)
    assert sorted(got) == list(range(STEPS))
    # Tolerance: relative 1e-5, reduction order across devices (see tests/jax/test_sharding.py)
    np.testing.assert_allclose([got[i] for i in range(STEPS)], ref, rtol=1e-5, atol=0)

    # the checkpoint written jointly by both processes restores in one process
    from modgpt_jax.inference import load_model
    _, _, meta = load_model(str(out))
    assert meta["iter"] == STEPS and meta["mesh"] == {"data": 1, "fsdp": 4}


def test_processes_agree_on_stop(data_dir, tmp_path):
    """SIGTERM to process 1 only, while step 2 runs: both processes stop at boundary 4, write
    checkpoint 4 together, process 0 writes the end record and says so, both exit 0. They vote at
    every boundary without waiting for the step in flight (modgpt_jax.distributed.StopVote: each
    boundary reads the vote the previous one started), hence one boundary after the 3 a single
    process stops at. Without the vote process 0 would go on into the next step's collectives
    alone and hang."""
    import signal

    from modgpt import runlog
    out = tmp_path / "stop"
    procs = start_two(data_dir, out, "--max_iters=6", "--eval_interval=100", fault="step@2:sleep")
    try:
        for line in procs[1].stdout:  # process 1 reaches the hook (after printing its start-up report)
            if line.startswith("[test fault]"):
                break
        else:
            raise AssertionError("process 1 ended before step 2: " + procs[1].stderr.read()[-3000:])
        procs[1].send_signal(signal.SIGTERM)
    except BaseException:
        for p in procs:
            p.kill()
        raise
    outs = finish(procs)
    said = [ln for ln in outs[0][0].splitlines() if ln.startswith("stopped by")]
    assert len(said) == 1 and said[0].startswith("stopped by a signal on another process at iteration 4;"), said
    assert "--init_from=resume" in said[0]
    end = [r for r in runlog.read(out) if r["type"] == "end"][-1]
    assert end["status"] == "interrupted" and end["iter"] == 4
    assert sorted(int(d) for d in os.listdir(out / "checkpoints")) == [0, 4]
