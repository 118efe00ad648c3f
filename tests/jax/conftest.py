"""Shared fixtures for the JAX backend tests (8 fake CPU devices come from the repo-root conftest)."""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

import pytest

# A persistent XLA compilation cache for this test session (and the subprocesses it starts): the
# many Trainers and CLI runs compile identical programs (same model, same mesh), which then compile
# once. Keyed by the HLO and the jax version, so it cannot change results; a fresh directory per
# session (unless JAX_COMPILATION_CACHE_DIR is already set). Must be in place before the first compile.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="modgpt-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
if "jax" in sys.modules:  # imported before this conftest: its config already read the environment
    import jax
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

from modgpt.config import Config


def _tiny(**kw) -> Config:
    """A 2-layer, 32-wide model with block 32 on the char vocab: fast to compile on a CPU."""
    base = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65, batch_size=8, dropout=0.0)
    base.update(kw)
    return Config().replace(**base)


@pytest.fixture(scope="session")
def tiny():
    """Factory: tiny(**overrides) -> Config."""
    return _tiny


@pytest.fixture(scope="session")
def tokens():
    """(4, 32) int32 tokens, distinct along each row (causality tests rely on that)."""
    import numpy as np
    rng = np.random.default_rng(0)
    return np.stack([rng.permutation(65)[:32] for _ in range(4)]).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Sharded training: one set of compiled Trainers shared by the sharding and precision tests.

MESHES = [(1, 1), (2, 4), (8, 1), (1, 8)]  # (data, fsdp): one device, both axes, pure DP, pure FSDP
SHARD_STEPS = 4


def _shard_cfg(**kw) -> Config:
    """`--preset=llama --size=tiny --batch_size=8 --dropout=0.1` (what tests/jax/test_train.py runs,
    so the compiled steps are shared through the compilation cache): 64 wide, so `embed` splits 4
    and 8 ways (vocab 65 does not); batch 8 = one row per device. Dropout on: the masks must not
    depend on the mesh either."""
    from modgpt.presets import PRESETS, SIZES
    return _tiny(**PRESETS["llama"], **SIZES["tiny"], dropout=0.1, warmup_iters=0, learning_rate=1e-3, **kw)


def _train_steps(cfg: Config, data: str, data_par: int, fsdp: int, steps: int):
    import jax

    from modgpt.data import BatchSampler
    from modgpt_jax.trainer import Trainer
    cfg = cfg.replace(mesh_data=data_par, mesh_fsdp=fsdp)
    tr = Trainer(cfg, devices=jax.devices()[:data_par * fsdp])
    sampler = BatchSampler(data, cfg.model.block_size, cfg.train.batch_size, cfg.train.seed)
    losses, batch = [], None
    for it in range(steps):
        batch = tr.batch(sampler, it)
        losses.append(tr.step(*batch, it)["loss"])
    return tr, losses, batch


@pytest.fixture(scope="session")
def sharded_runs(char_data):
    """{(data, fsdp): (Trainer after SHARD_STEPS steps, per-step losses, last (xs, ys) batch)}."""
    return {m: _train_steps(_shard_cfg(), char_data, *m, SHARD_STEPS) for m in MESHES}


@pytest.fixture(scope="session")
def train_steps(char_data):
    """Factory: train_steps(cfg_overrides, data, fsdp, steps) -> (Trainer, losses, last batch)."""
    return lambda overrides, d, f, steps: _train_steps(_shard_cfg(**overrides), char_data, d, f, steps)


# ---------------------------------------------------------------------------------------------
# Command-line runs: in-process (no jax import / start-up cost) and as subprocesses.

CLI_ARGS = ["--preset=llama", "--size=tiny", "--batch_size=8", "--eval_iters=1", "--log_interval=1",
            "--progress=False"]


@pytest.fixture
def train_main(data_dir):
    """Run `python -m modgpt_jax.train` in this process: train_main(out_dir, *args) -> exit status."""
    import signal

    from modgpt_jax import train

    def run(out_dir, *args):
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return train.main([*CLI_ARGS, f"--data_dir={data_dir}", f"--out_dir={out_dir}", *args])
        finally:  # the trainer installs SIGINT/SIGTERM handlers; give pytest its own back
            for s, h in handlers.items():
                signal.signal(s, h)
    return run


@pytest.fixture(scope="session")
def cli():
    """cli(module, *args, devices=8, env=None) -> CompletedProcess of `python -m module args`."""
    import os
    import subprocess
    import sys

    def run(module, *args, devices=8, env=None, timeout=300):
        e = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **(env or {})}
        return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                              env=e, timeout=timeout)
    return run


@pytest.fixture(scope="session")
def iter_losses():
    """iter_losses(run_dir) -> {iteration: loss} from its log.jsonl (later records win)."""
    from modgpt import runlog
    return lambda d: {r["iter"]: r["loss"] for r in runlog.read(d) if r["type"] == "iter"}
