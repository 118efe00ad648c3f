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


def any_process(flag: bool) -> bool:
    """True when `flag` is set on any process (a collective: every process must call it at the same
    point). One process: the flag itself, no communication."""
    import jax
    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils
    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))) > 0)
