"""Fixtures for the fault-injection and bad-input suite: every test runs for both backends.

Training runs are real subprocesses (`python -m modgpt_<backend>.train`) on a tiny model, CPU,
float32, one thread, one XLA device. JAX subprocesses share a persistent compilation cache for
the session, so only the first run of a config pays for XLA compilation (about 10 s on a busy
2-core machine; a cached run takes about 4 s). Faults are injected with signals and with the
test-only MODGPT_TEST_FAULT hook documented in modgpt/io.py.
"""
from __future__ import annotations

import hashlib
import os
import queue
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from modgpt import runlog

BACKENDS = ("torch", "jax")
MAX_ITERS = 8
# Tiny model, a checkpoint every 2 iterations, all checkpoints kept (kill tests compare them).
TINY = ["--size=tiny", "--batch_size=2", "--eval_iters=1", "--log_interval=1", "--progress=False",
        "--eval_interval=2", "--keep_checkpoints=20", "--warmup_iters=2", f"--lr_decay_iters={MAX_ITERS}",
        "--learning_rate=3e-3", "--seed=7"]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Each test that takes `backend` runs once per backend."""
    return request.param


@pytest.fixture(scope="session")
def env(tmp_path_factory) -> dict:
    e = {k: v for k, v in os.environ.items() if k != "MODGPT_TEST_FAULT"}
    e.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return e


class Runner:
    """Starts backend entry points as subprocesses with the tiny run's arguments."""

    def __init__(self, env: dict, data_dir: str):
        self.env, self.data_dir = env, data_dir

    def cmd(self, backend: str, *args, mod: str = "train", tiny: bool = True) -> list[str]:
        base = [*TINY, f"--data_dir={self.data_dir}"] if tiny else []
        return [sys.executable, "-m", f"modgpt_{backend}.{mod}", *base, *args]

    def run(self, backend: str, *args, mod: str = "train", tiny: bool = True, fault: str | None = None,
            env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        e = {**self.env, **(env or {}), **({"MODGPT_TEST_FAULT": fault} if fault else {})}
        return subprocess.run(self.cmd(backend, *args, mod=mod, tiny=tiny), capture_output=True, text=True,
                              env=e, timeout=timeout)

    def train(self, backend: str, *args, **kw) -> subprocess.CompletedProcess:
        """A run that must succeed."""
        p = self.run(backend, *args, **kw)
        assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        return p

    def start(self, backend: str, *args, fault: str | None = None, cmd: list[str] | None = None) -> "Proc":
        e = {**self.env, **({"MODGPT_TEST_FAULT": fault} if fault else {})}
        return Proc(subprocess.Popen(cmd or self.cmd(backend, *args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=e))


class Proc:
    """A running subprocess whose stdout lines are read by a thread, so waits can time out."""

    def __init__(self, p: subprocess.Popen):
        self.p = p
        self.lines: list[str] = []
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.q.put(line)
        self.q.put(None)

    def wait_line(self, pred, timeout: float = 240) -> str:
        """The first stdout line (from now on) for which pred(line) holds; fails on exit or timeout."""
        end = time.time() + timeout
        while True:
            try:
                line = self.q.get(timeout=max(0.01, end - time.time()))
            except queue.Empty:
                self.kill()
                raise AssertionError(f"timed out waiting for a line; got:\n{''.join(self.lines[-30:])}")
            if line is None:
                err = self.p.stderr.read()
                raise AssertionError(f"process exited ({self.p.wait()}) before the line came:\n"
                                     f"{''.join(self.lines[-30:])}\n{err[-3000:]}")
            self.lines.append(line)
            if pred(line):
                return line

    def finish(self, timeout: float = 240) -> tuple[int, str, str]:
        """(exit status, rest of stdout, stderr) once the process ends."""
        rc = self.p.wait(timeout=timeout)
        rest = []
        while (line := self.q.get(timeout=30)) is not None:
            rest.append(line)
        self.lines += rest
        return rc, "".join(rest), self.p.stderr.read()

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


@pytest.fixture(scope="session")
def runner(env, data_dir) -> Runner:
    return Runner(env, data_dir)


@pytest.fixture(scope="session")
def reference(runner, tmp_path_factory):
    """reference(backend) -> out_dir of a never-interrupted MAX_ITERS run (built once per backend)."""
    done: dict[str, str] = {}

    def get(backend: str) -> str:
        if backend not in done:
            out = str(tmp_path_factory.mktemp(f"ref-{backend}") / "run")
            runner.train(backend, f"--max_iters={MAX_ITERS}", f"--out_dir={out}")
            done[backend] = out
        return done[backend]
    return get


# ---------------------------------------------------------------------------------------------
# Reading results back: checkpoints (backend formats), losses, directory snapshots.

def checkpoint_iters(backend: str, out_dir: str) -> list[int]:
    """Iterations of the complete checkpoints in out_dir, as each backend's loader sees them."""
    if backend == "torch":
        import re
        return sorted(int(m.group(1)) for f in os.listdir(out_dir) if (m := re.fullmatch(r"ckpt-(\d+)\.pt", f)))
    d = os.path.join(out_dir, "checkpoints")
    return sorted(int(f) for f in os.listdir(d) if f.isdigit()) if os.path.isdir(d) else []


def temp_checkpoints(backend: str, out_dir: str) -> list[str]:
    """Partial checkpoint writes left in out_dir (temp files / orbax temp dirs)."""
    if backend == "torch":
        return sorted(f for f in os.listdir(out_dir) if f.startswith(".tmp-ckpt-"))
    d = os.path.join(out_dir, "checkpoints")
    return sorted(f for f in os.listdir(d) if "orbax-checkpoint-tmp" in f) if os.path.isdir(d) else []


def read_params(backend: str, out_dir: str, it: int | None = None) -> dict[str, np.ndarray]:
    """Model parameters of checkpoint `it` (default: the latest) as numpy arrays by name."""
    its = checkpoint_iters(backend, out_dir)
    assert its, f"no checkpoint in {out_dir}"
    it = its[-1] if it is None else it
    if backend == "torch":
        import torch
        ck = torch.load(os.path.join(out_dir, f"ckpt-{it:08d}.pt"), map_location="cpu", weights_only=False)
        return {k: v.numpy() for k, v in ck["model"].items()}
    import jax
    import orbax.checkpoint as ocp
    path = os.path.join(os.path.abspath(out_dir), "checkpoints", str(it), "state")
    tree = ocp.StandardCheckpointer().restore(path)
    flat = jax.tree_util.tree_flatten_with_path(tree["params"])[0]
    return {jax.tree_util.keystr(path): np.asarray(v) for path, v in flat}


def read_state(backend: str, out_dir: str, it: int) -> dict[str, np.ndarray]:
    """Parameters and optimizer state (AdamW moments and step count) of checkpoint `it`, by name."""
    if backend == "torch":
        import torch
        ck = torch.load(os.path.join(out_dir, f"ckpt-{it:08d}.pt"), map_location="cpu", weights_only=False)
        out = {f"model/{k}": v.numpy() for k, v in ck["model"].items()}
        for i, st in ck["optimizer"]["state"].items():
            out.update({f"opt/{i}/{k}": np.asarray(v) for k, v in st.items()})
        return out
    import jax
    import orbax.checkpoint as ocp
    tree = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(out_dir), "checkpoints", str(it), "state"))
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def losses(out_dir: str) -> dict[int, float]:
    """{iteration: loss} from the run log; a resumed run's records replace the killed run's."""
    return {r["iter"]: r["loss"] for r in runlog.read(out_dir) if r["type"] == "iter"}


def snapshot(path: str) -> dict[str, str] | None:
    """{relative path: sha256} of every file under path (None if path does not exist)."""
    if not os.path.exists(path):
        return None
    out = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path) + "/"] = "dir"
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def checkpoint_path(backend: str, out_dir: str, it: int) -> str:
    """The path of checkpoint `it` as the backends print it."""
    if backend == "torch":
        return os.path.join(out_dir, f"ckpt-{it:08d}.pt")
    return os.path.join(out_dir, "checkpoints", str(it))


class Helpers:
    checkpoint_path = staticmethod(checkpoint_path)
    checkpoint_iters = staticmethod(checkpoint_iters)
    temp_checkpoints = staticmethod(temp_checkpoints)
    read_params = staticmethod(read_params)
    read_state = staticmethod(read_state)
    losses = staticmethod(losses)
    snapshot = staticmethod(snapshot)

    @staticmethod
    def assert_same_params(a: dict, b: dict) -> None:
        """Bit-identical: CPU float32, same batches, same restored optimizer and RNG state."""
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    @staticmethod
    def end_record(out_dir: str) -> dict:
        recs = runlog.read(out_dir)
        assert recs and recs[-1]["type"] == "end", recs[-3:]
        return recs[-1]

    @staticmethod
    def events(out_dir: str, name: str) -> list[dict]:
        return [r for r in runlog.read(out_dir) if r["type"] == "event" and r["event"] == name]


@pytest.fixture(scope="session")
def h() -> Helpers:
    """Helpers shared by the reliability tests (test files cannot import each other)."""
    return Helpers()
