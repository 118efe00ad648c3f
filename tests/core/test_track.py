"""The trackers' sink interface (modgpt.track) over the run log: metric names, a failing tracker, the
TensorBoard files read back with TensorBoard's own reader (resume included) and the refusals.
W&B's files are checked from real training runs: tests/torch/test_distributed.py (torchrun, resume)
and tests/jax/test_train.py (the CLI)."""
from __future__ import annotations

import json
import os
import sys
import types

import pytest

from modgpt import config as C
from modgpt import runlog
from modgpt import track


def test_metric_names():
    it = {"type": "iter", "time": 1.0, "iter": 7, "loss": 2.5, "lr": 1e-3, "grad_norm": 0.5, "dt": 0.1,
          "tokens_per_sec": 1000.0, "mfu": None, "peak_mem_bytes": 123, "tokens_seen": 512, "skipped_steps": 0}
    assert track.scalars(it) == {"train/loss": 2.5, "train/lr": 1e-3, "train/grad_norm": 0.5, "perf/dt": 0.1,
                                 "perf/tokens_per_sec": 1000.0, "perf/peak_mem_bytes": 123,
                                 "train/tokens_seen": 512, "train/skipped_steps": 0}  # mfu None: not sent
    ev = {"type": "eval", "time": 1.0, "iter": 8, "train_loss": 2.4, "val_loss": 2.6, "train_bpb": 1.1,
          "val_bpb": 1.2, "hellaswag_acc": 0.25, "hellaswag_acc_norm": 0.3, "tokens_seen": 448}
    assert track.scalars(ev) == {"train/eval_loss": 2.4, "val/loss": 2.6, "train/eval_bpb": 1.1, "val/bpb": 1.2,
                                 "tasks/hellaswag_acc": 0.25, "tasks/hellaswag_acc_norm": 0.3,
                                 "val/tokens_seen": 448}
    assert track.scalars({"type": "event", "iter": 3, "event": "checkpoint", "message": "x"}) == {}


class Sink:
    def __init__(self, name, fail_at=None):
        self.name, self.fail_at, self.got, self.closed = name, fail_at, [], 0

    def record(self, rec):
        if rec["type"] == self.fail_at:
            raise ConnectionError("network is unreachable")
        self.got.append(rec["type"])

    def close(self):
        self.closed += 1


def test_failing_tracker_warns_once_and_the_run_log_goes_on(tmp_path, capsys):
    good, bad = Sink("good"), Sink("wandb", fail_at="eval")
    log = runlog.RunLog(str(tmp_path), sinks=[bad, good])
    log.header(config={})
    log.iter(iter=0, loss=1.0)
    log.eval(iter=1, val_loss=1.0)  # the bad sink raises here and is dropped
    log.iter(iter=1, loss=0.9)
    log.end("completed", iter=2)
    log.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: wandb failed (ConnectionError: network is unreachable); the run goes on without it, "
                   "log.jsonl has every record"]
    assert [r["type"] for r in runlog.read(str(tmp_path))] == ["header", "iter", "eval", "iter", "end"]
    assert good.got == ["header", "iter", "eval", "iter", "end"] and good.closed == 1
    assert bad.got == ["header", "iter"] and bad.closed == 0


def fake_run(out_dir, resume, **opts):
    """What the sinks read of a training run (modgpt.loop.Run)."""
    return types.SimpleNamespace(cfg=C.Config().replace(tensorboard=True, **opts), out_dir=str(out_dir),
                                 resume=resume)


def session(out_dir, resume, iters, evals, ckpt, loss, end=True, **opts):
    """One training session's records through RunLog and its sinks, as the training loop writes them."""
    run = fake_run(out_dir, resume, **opts)
    log = runlog.RunLog(str(out_dir), sinks=track.open_sinks(run))
    log.header(config=run.cfg.to_dict(), arch_name="a", backend="torch")
    for it in iters:
        if it in evals:
            log.eval(iter=it, train_loss=loss(it), val_loss=loss(it) + 1, tokens_seen=it * 8)
        if it == ckpt:
            log.event("checkpoint", iter=it, message=f"ckpt {it}")
        log.iter(iter=it, loss=loss(it), lr=1e-3, tokens_seen=(it + 1) * 8)
    if end:
        log.end("completed", iter=iters[-1] + 1)
        log.close()
    return log


def steps(ea, tag):
    return [(e.step, round(e.value, 5)) for e in ea.Scalars(tag)]


def test_tensorboard_files_and_resume_after_a_kill(tmp_path, trackers):
    """A run killed after logging iterations 0-5 (evaluations at 0 and 4, a checkpoint at 4; no end
    record, no close) and resumed from 4 with other values: TensorBoard's reader sees each step once,
    the killed run's values where both logged one (log.jsonl has both), the resumed run's after."""
    out = tmp_path / "run"
    session(out, False, range(6), {0, 4}, 4, lambda it: 10.0 - it, end=False)
    session(out, True, range(4, 8), {4}, None, lambda it: 100.0 + it)
    ea = trackers.tensorboard(out / "tensorboard")
    assert steps(ea, "train/loss") == [(0, 10), (1, 9), (2, 8), (3, 7), (4, 6), (5, 5), (6, 106), (7, 107)]
    assert steps(ea, "val/loss") == [(0, 11), (4, 7)]
    assert steps(ea, "train/tokens_seen")[-1] == (7, 64) and steps(ea, "val/tokens_seen") == [(0, 0), (4, 32)]
    tags = ea.Tags()
    assert {"train/loss", "train/lr", "train/eval_loss", "val/loss"} <= set(tags["scalars"])
    assert {"config", "events/checkpoint", "end", "_hparams_/session_start_info", "_hparams_/experiment"} <= set(tags["tensors"])
    config = ea.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert json.loads(config.strip("`\n"))["config"]["model"]["n_layer"] == C.Config().model.n_layer
    assert [t.step for t in ea.Tensors("events/checkpoint")] == [4]
    assert [t.tensor_proto.string_val[0].decode() for t in ea.Tensors("end")] == ["completed: "]
    from tensorboard.plugins.hparams import metadata as hp
    start = hp.parse_session_start_info_plugin_data(
        ea.SummaryMetadata("_hparams_/session_start_info").plugin_data.content)
    assert start.hparams["n_layer"].number_value == C.Config().model.n_layer
    assert start.hparams["tensorboard"].bool_value is True
    assert len(os.listdir(out / "tensorboard")) == 2  # one events file per session, in one directory


def test_tensorboard_dir_option(tmp_path, trackers):
    where = tmp_path / "tb"
    session(tmp_path / "run", False, range(2), set(), None, lambda it: 1.0, tensorboard_dir=str(where))
    assert steps(trackers.tensorboard(where), "train/loss") == [(0, 1), (1, 1)]
    assert not (tmp_path / "run" / "tensorboard").exists()


@pytest.mark.parametrize("option,package", [("wandb", "wandb"), ("tensorboard", "tensorboard")])
def test_a_missing_package_is_refused(option, package, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if it were not installed
    with pytest.raises(C.ConfigError) as e:
        track.check(C.Config().replace(**{option: True}))
    assert str(e.value) == (f"option '{option}': the {package} package is not installed; pip install "
                            f"'modgpt[track]' (or pip install {package})")
    track.check(C.Config())  # nothing asked, nothing needed
