"""Shared test setup: offline data paths and a prepared tiny dataset."""
from __future__ import annotations

import os
import pathlib

import pytest

from modgpt import hostmem

ROOT = pathlib.Path(__file__).resolve().parent
SHARED = pathlib.Path(os.environ.get("MODGPT_SHARED", ROOT.parent / "shared"))
SHAKESPEARE = pathlib.Path(os.environ.get("MODGPT_TINYSHAKESPEARE", SHARED / "data" / "tinyshakespeare" / "input.txt"))

# Sharded JAX tests use 8 fake CPU devices; the flag must be set before jax is first imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

# XLA:CPU reuses its per-step temporary buffer instead of faulting in fresh pages every call
# (modgpt/hostmem.py); must happen before jax starts its threads, so here, before any test runs.
hostmem.keep_freed_blocks()

# Offline resources (CI has no network): tiktoken's GPT-2 ranks and Tiny Shakespeare from ../shared.
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))
if SHAKESPEARE.is_file():
    os.environ.setdefault("MODGPT_TINYSHAKESPEARE", str(SHAKESPEARE))


@pytest.fixture(scope="session")
def shakespeare_path() -> str:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"Tiny Shakespeare not found at {SHAKESPEARE}")
    return str(SHAKESPEARE)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, shakespeare_path) -> str:
    """A data_dir holding prepared shakespeare_char (char tokenizer, vocab 65)."""
    from modgpt.prepare import prepare
    d = tmp_path_factory.mktemp("data")
    prepare("shakespeare_char", [shakespeare_path], data_dir=str(d), progress=False)
    return str(d)


@pytest.fixture(scope="session")
def char_data(data_dir) -> str:
    """The prepared shakespeare_char dataset directory itself."""
    return os.path.join(data_dir, "shakespeare_char")


@pytest.fixture
def run_main(capsys):
    """run_main(main, *argv) -> (exit status, captured output) of an entry point's main(argv), a
    SystemExit (cli.fail's exit 2) included."""
    def run(main, *argv):
        try:
            code = main(list(argv))
        except SystemExit as e:
            code = e.code
        return code, capsys.readouterr()
    return run
