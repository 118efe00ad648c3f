"""Parity fixtures: one `Case` (both backends built once) per configuration, shared by every check
of that configuration for the whole session."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def parity_case(char_data):
    """parity_case(name) -> checks.Case for cases.cases()[name], built on first use and cached."""
    from parity_tests import cases, checks
    every = cases.cases()
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = checks.Case(name, every[name], char_data)
        return cache[name]
    return get


@pytest.fixture(scope="session")
def run_cli():
    """run_cli(module, *args) -> CompletedProcess of `python -m module args` on one CPU device."""
    import os
    import subprocess
    import sys

    def run(module, *args, timeout=300):
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
               "CUDA_VISIBLE_DEVICES": ""}
        return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                              timeout=timeout)
    return run
