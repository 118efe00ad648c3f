"""Checkpoints in out_dir: ckpt-<iter>.pt, written atomically (temp file + rename), last K kept.

One file holds model, optimizer, iteration, config, sampler state, RNG states and best val loss.
Under FSDP/ZeRO-1 the caller gathers full state dicts first (parallel.py), so the file format does
not depend on how the run was parallelized.
"""
from __future__ import annotations

import glob
import os
import random
import re

import numpy as np
import torch

from modgpt import config as C
from modgpt import io, loop
from modgpt.io import atomic_path

PATTERN = re.compile(r"ckpt-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """No checkpoint, or an unreadable one; one-line message."""


def path_for(out_dir: str, it: int) -> str:
    return os.path.join(out_dir, f"ckpt-{it:08d}.pt")


def iter_of(path: str) -> int:
    """The iteration of a checkpoint, read from its name (ckpt-<iter>.pt)."""
    return int(PATTERN.search(os.path.basename(path)).group(1))


def list_checkpoints(out_dir: str) -> list[str]:
    """Checkpoint paths sorted by iteration."""
    found = [(int(m.group(1)), p) for p in glob.glob(os.path.join(out_dir, "ckpt-*.pt"))
             if (m := PATTERN.search(os.path.basename(p)))]
    return [p for _, p in sorted(found)]


def latest(out_dir: str) -> str | None:
    ps = list_checkpoints(out_dir)
    return ps[-1] if ps else None


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])


def remove_stale_temps(out_dir: str) -> None:
    """Drop temp files a killed save left behind (the caller holds the run lock, so none is live)."""
    for p in glob.glob(os.path.join(out_dir, ".tmp-ckpt-*")):
        try:
            os.unlink(p)
        except OSError:
            pass


def save(out_dir: str, state: dict, keep: int) -> str:
    """Write state as ckpt-<state['iter']>.pt atomically, then drop all but the newest `keep`.

    A kill or a write error (disk full) mid-save leaves only a temp file that no reader looks
    at; the previous checkpoints stay as they were (old ones are dropped only after the rename).
    """
    path = path_for(out_dir, state["iter"])
    remove_stale_temps(out_dir)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        io.fault("ckpt_write", state["iter"], partial=tmp)  # test-only hook; no-op in real runs
    for old in list_checkpoints(out_dir)[:-keep]:
        try:
            os.unlink(old)
        except OSError:
            pass
    return path


def load(path: str, map_location="cpu") -> dict:
    try:
        ck = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated/corrupt file: name it and what to do
        raise CheckpointError(f"checkpoint '{path}' is unreadable ({type(e).__name__}: truncated or "
                              f"corrupt); delete it to resume from the previous one") from None
    keys = ("model", "optimizer", "iter", "rng")
    if not isinstance(ck, dict) or any(k not in ck for k in keys):
        raise CheckpointError(f"'{path}' is not a complete modgpt_torch checkpoint (needs {', '.join(keys)}); "
                              f"delete it to resume from the previous one")
    return ck


def load_latest(out_dir: str, map_location="cpu") -> dict:
    p = latest(out_dir)
    if p is None:
        raise CheckpointError(f"no checkpoint (ckpt-*.pt) in '{out_dir}'; train first with "
                              f"`python -m modgpt_torch.train --out_dir={out_dir}`")
    return load(p, map_location)


def load_model(out_dir: str, device="cpu"):
    """(model in eval mode, Config, checkpoint dict) from a run directory's latest checkpoint."""
    from modgpt_torch.kernels import apply_kernels
    from modgpt_torch.model import GPT
    try:
        loop.check_backend(out_dir, "torch", reading=True)
    except loop.SetupError as e:
        raise CheckpointError(str(e)) from None
    ck = load_latest(out_dir)
    cfg = C.from_dict(ck["config"])
    model = GPT(cfg.model)
    apply_kernels(model, cfg, torch.device(device).type)
    load_model_state(model, ck["model"], latest(out_dir))
    return model.to(device).eval(), cfg, ck


def load_model_state(model, state: dict, path: str) -> None:
    """model.load_state_dict with a one-line CheckpointError when names or shapes disagree."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise CheckpointError(f"checkpoint '{path}' does not fit the run's architecture ({first})") from None


def inference_device(requested: str) -> str:
    """The device sample/evaluate load onto: CUDA when there is one unless --device=cpu; asking for
    CUDA without one is one error line."""
    import torch

    from modgpt import cli
    if requested in ("cuda", "gpu") and not torch.cuda.is_available():
        cli.fail(f"device={requested} but no CUDA device is available; use --device=cpu")
    return "cuda" if torch.cuda.is_available() and requested != "cpu" else "cpu"
