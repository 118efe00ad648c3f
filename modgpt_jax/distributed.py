"""Multi-process (multi-host) start-up: jax.distributed.initialize when a coordinator is given.

Environment (set on every process):
  MODGPT_COORDINATOR=host:port  MODGPT_NUM_PROCESSES=N  MODGPT_PROCESS_ID=i
  MODGPT_CPU_COLLECTIVES=gloo   (CPU only: cross-process collectives over gloo)
Or JAX's own variables (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or a cluster
jax auto-detects (SLURM, Open MPI, GKE/TPU) when MODGPT_DISTRIBUTED=1.
Example, two processes on one CPU machine with 2 fake devices each:
  for i in 0 1; do XLA_FLAGS=--xla_force_host_platform_device_count=2 MODGPT_CPU_COLLECTIVES=gloo \
    MODGPT_COORDINATOR=127.0.0.1:12355 MODGPT_NUM_PROCESSES=2 MODGPT_PROCESS_ID=$i \
    python -m modgpt_jax.train --preset llama --size=tiny --out_dir=runs/mp & done; wait
"""
from __future__ import annotations

import os

_done = False


def pin_platform(device: str) -> None:
    """--device=cpu keeps JAX off any accelerator: set before its backends start (before
    maybe_initialize, whose process count starts them); auto and cuda leave JAX's own choice."""
    if device == "cpu":
        import jax
        jax.config.update("jax_platforms", "cpu")


def platform_error(device: str) -> str | None:
    """After start-up: why the backend JAX runs on is not the one --device names, or None."""
    import jax
    backend = jax.default_backend()
    if device == "cpu" and backend != "cpu":
        return f"device=cpu, but JAX had already started on its {backend} backend in this process"
    if device in ("cuda", "gpu") and backend != "gpu":
        return (f"device={device} but JAX finds no GPU (its backend is {backend}); use --device=cpu or "
                f"--device=auto, or install jax with its CUDA plugin")
    return None


def maybe_initialize() -> bool:
    """Call jax.distributed.initialize once if the environment asks for it; True if multi-process."""
    global _done
    import jax
    if _done:
        return jax.process_count() > 1
    env = os.environ
    coord = env.get("MODGPT_COORDINATOR") or env.get("JAX_COORDINATOR_ADDRESS")
    if env.get("MODGPT_CPU_COLLECTIVES"):
        jax.config.update("jax_cpu_collectives_implementation", env["MODGPT_CPU_COLLECTIVES"])
    if coord:
        n = int(env.get("MODGPT_NUM_PROCESSES") or env["JAX_NUM_PROCESSES"])
        pid = int(env.get("MODGPT_PROCESS_ID") or env["JAX_PROCESS_ID"])
        jax.distributed.initialize(coordinator_address=coord, num_processes=n, process_id=pid)
    elif env.get("MODGPT_DISTRIBUTED") == "1":
        jax.distributed.initialize()
    _done = True
    return jax.process_count() > 1


class StopVote:
    """Whether to stop at this step boundary, agreed by all processes without waiting for the step
    in flight (a collective read at once would: on a GPU it runs behind that step). Each boundary
    starts the vote on this process's flag (the max over processes, computed on the devices) and
    reads the one the previous boundary started, which ran before the step now in flight. Every
    process reads the same votes at the same boundaries, so they stop together, one boundary after
    the one where a single process stops. One process: the flag itself, at once. (Every process
    must call it at the same boundaries.)"""

    def __init__(self):
        self.pending = None
        self._max = None

    def _start(self, flag: bool):
        import jax
        import jax.numpy as jnp
        import numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec
        if self._max is None:
            mesh = Mesh(np.array(jax.devices()).reshape(jax.process_count(), jax.local_device_count()),
                        ("processes", "local"))
            self._sharding = NamedSharding(mesh, PartitionSpec("processes"))
            self._max = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, PartitionSpec()))
        local = np.array([1 if flag else 0], np.int32)
        return self._max(jax.make_array_from_process_local_data(self._sharding, local))

    def __call__(self, flag: bool) -> bool:
        import jax
        if jax.process_count() == 1:
            return flag
        previous, self.pending = self.pending, self._start(flag)
        return previous is not None and int(previous) > 0


def inference_platform(device: str) -> None:
    """sample/evaluate start-up: the host allocator setting (before jax starts its threads), the
    platform pinned, an unavailable one refused in one line."""
    from modgpt import cli, hostmem
    hostmem.keep_freed_blocks(device)
    pin_platform(device)
    if (why := platform_error(device)) is not None:
        cli.fail(why)
