"""DDP, ZeRO-1 and FSDP2 with 2 gloo processes (torchrun) against one process on the same global batch.

Each rank takes half of the same global batch (batch 4, 2 micro steps); gradients are averaged over
ranks, so the math is the single-process math up to float32 summation order. Tolerance: losses
within 2e-5 and parameters within 1e-5 after 3 AdamW steps (observed: losses equal to 4 decimals).
"""
import os
import subprocess
import sys

import pytest
import torch

from modgpt import runlog

pytestmark = pytest.mark.distributed
ARGS = ["--size=tiny", "--batch_size=4", "--gradient_accumulation_steps=2", "--eval_interval=2",
        "--eval_iters=1", "--log_interval=1", "--learning_rate=3e-3", "--warmup_iters=1",
        "--lr_decay_iters=3"]  # one schedule for 3 iterations, also when a run is done in two parts
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def train(out, data_dir, *extra, nproc=1):
    cmd = [sys.executable, "-m", "modgpt_torch.train"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "modgpt_torch.train"]
    p = subprocess.run([*cmd, *ARGS, f"--data_dir={data_dir}", f"--out_dir={out}", *extra],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p


def losses(out):
    return {r["iter"]: r["loss"] for r in runlog.read(out) if r["type"] == "iter"}


def params(out):
    from modgpt_torch.checkpoint import load_latest
    return load_latest(out)["model"]


@pytest.fixture(scope="session")
def single(data_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("single") / "run")
    train(out, data_dir, "--max_iters=3")
    return out


@pytest.mark.parametrize("mode", ["ddp", "zero1", "fsdp"])
def test_parallel_matches_single_process(mode, single, data_dir, tmp_path):
    out = str(tmp_path / mode)
    train(out, data_dir, "--max_iters=3", f"--parallel={mode}", nproc=2)
    ref, got = losses(single), losses(out)
    assert ref.keys() == got.keys() == {0, 1, 2}
    for it in ref:
        assert abs(ref[it] - got[it]) < 2e-5, (it, ref[it], got[it])
    a, b = params(single), params(out)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=k)


def test_fsdp_resume(single, data_dir, tmp_path, trackers):
    """Checkpoints gather full state dicts on rank 0 (see parallel.full_state); resume reshards.
    With both trackers on: only rank 0 writes them, and the resumed session continues the same W&B
    run and TensorBoard directory with no metric at an iteration twice."""
    out = str(tmp_path / "fsdp")
    track = ["--wandb=True", "--tensorboard=True", "--wandb_tags=a,b"]
    first = train(out, data_dir, "--max_iters=2", "--parallel=fsdp", *track, nproc=2)
    train(out, data_dir, "--max_iters=3", "--parallel=fsdp", "--init_from=resume", nproc=2)
    ref, got = losses(single), losses(out)
    assert abs(ref[2] - got[2]) < 2e-5
    a, b = params(single), params(out)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=k)

    sessions = trackers.wandb_sessions(out)  # one offline W&B run per session: rank 0's alone
    assert len(sessions) == 2 and sessions[0]["id"] == sessions[1]["id"]
    assert first.stdout.count("wandb: offline; this session's run is written to ") == 1
    assert "`wandb sync " in first.stdout
    s = sessions[0]
    assert s["project"] == "modgpt" and s["tags"] == ["a", "b"] and s["name"] == s["config"]["run"]["arch_name"]
    assert s["config"]["model"]["n_layer"] == 2 and s["config"]["run"]["backend"] == "torch"
    rows = [r for s in sessions for r in s["history"]]
    wb = {(r["iter"], k): v for r in rows for k, v in r.items() if k != "iter"}
    assert len(wb) == sum(len(r) - 1 for r in rows)  # no metric twice at one iteration
    assert {it: v for (it, k), v in wb.items() if k == "train/loss"} == got
    evals = {r["iter"]: r["val_loss"] for r in runlog.read(out) if r["type"] == "eval"}
    assert {it: v for (it, k), v in wb.items() if k == "val/loss"} == evals
    assert sessions[1]["summary"]["end/status"] == "completed"

    ea = trackers.tensorboard(os.path.join(out, "tensorboard"))
    assert len(os.listdir(os.path.join(out, "tensorboard"))) == 2  # one events file per session
    tb = [(e.step, e.value) for e in ea.Scalars("train/loss")]
    assert [it for it, _ in tb] == sorted(got) and all(abs(v - got[it]) < 1e-6 for it, v in tb)  # float32 in TB
    assert [e.step for e in ea.Scalars("val/loss")] == sorted(evals)


@pytest.mark.parametrize("extra,msg", [
    (["--batch_size=5", "--parallel=ddp"], "batch_size=5 is the global batch and cannot be split over the 2 "
                                           "torchrun processes; set --batch_size to a multiple of 2"),
    (["--parallel=none"], "torchrun started 2 processes but --parallel=none; pass --parallel=ddp"),
], ids=["batch_5_over_2", "no_parallel_mode"])
def test_torchrun_refusals(data_dir, tmp_path, extra, msg):
    """Refused under torchrun: one error line, from rank 0, no traceback of ours, nothing written.
    torchrun itself then reports the failed workers (its own summary, exit 1): that part is the launcher's."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "modgpt_torch.train", *ARGS, "--max_iters=2", *extra, f"--data_dir={data_dir}", f"--out_dir={out}"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)
    errors = [ln for ln in p.stderr.splitlines() if "error:" in ln]
    assert p.returncode != 0 and len(errors) == 1 and errors[0].startswith(f"error: {msg}"), p.stderr[-3000:]
    assert "modgpt_torch/" not in p.stderr, p.stderr[-3000:]  # no traceback through our code
    assert not out.exists()


EXIT_SCRIPT = """
import atexit, sys
import torch
from modgpt_torch import parallel as P
atexit.register(lambda: open(sys.argv[1], "w").close())  # runs only if the interpreter finalizes
HELD = []

def main():
    d = P.init("cpu")
    if d.enabled:
        HELD.append(P.dist.group.WORLD)  # the group outlives shutdown, as it does in training
        x = torch.ones(3)
        P.dist.all_reduce(x)
    P.shutdown(d)
    print("threads:", ",".join(P.group_threads()))  # not flushed here: exit_process must
    if sys.argv[2] == "raise":
        raise RuntimeError("boom")
    return 3

P.run_main(main)
"""


@pytest.mark.parametrize("group,end,rc", [(True, "return", 3), (True, "raise", 1), (False, "return", 3)])
def test_exit_skips_finalization_only_while_a_group_lives(group, end, rc, tmp_path):
    """parallel.run_main / exit_process: while a gloo group's threads outlive shutdown (in training
    something always holds the default group: torch 2.13 keeps it once torch._dynamo is imported),
    the process leaves with main's code, or 1 and the traceback when main raises, after flushing
    stdout, and without interpreter finalization, where a gloo worker still releasing tensors would
    abort it (SIGABRT after a completed run). Without a group it is sys.exit: atexit handlers run."""
    import socket
    for _ in range(3):  # the free port can be taken between this probe and the child's bind
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        base = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "PYTHONUNBUFFERED")}
        env = {**base, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)} if group else base
        marker = tmp_path / "finalized"
        p = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(marker), end], capture_output=True,
                           text=True, env=env, timeout=120)
        if "address already in use" not in p.stderr.lower():
            break
    assert p.returncode == rc, p.stdout + p.stderr
    assert "threads:" in p.stdout, p.stderr
    threads = p.stdout.split("threads:")[1].strip()
    assert ("RuntimeError: boom" in p.stderr) == (end == "raise"), p.stderr
    if group:
        assert "pt_gloo_runloop" in threads, p.stdout  # torch's name for the group's worker threads
        assert not marker.exists()
    else:
        assert threads == ""
        assert marker.exists()
