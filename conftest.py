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


class Trackers:
    """Readers of what the trackers wrote (modgpt.track): W&B's offline run files and TensorBoard's
    event files, each with its own package's formats."""

    @staticmethod
    def wandb_sessions(out_dir) -> list[dict]:
        """Each offline W&B run under out_dir/wandb, oldest first: {"id", "name", "project", "tags",
        "config" (the config updates merged), "history": [{key: value} per logged row], "summary"}.
        The .wandb file is W&B's record log: a 7-byte header, then LevelDB-log framed protobuf
        Records in 32 KiB blocks (read here with wandb's own protobuf classes)."""
        import glob
        import json
        import struct

        from wandb.proto import wandb_internal_pb2 as pb
        out = []
        for f in sorted(glob.glob(os.path.join(str(out_dir), "wandb", "offline-run-*", "run-*.wandb"))):
            b = open(f, "rb").read()
            assert b[:4] == b":W&B", f
            pos, block, chunks, buf = 7, 32768, [], b""
            while pos + 7 <= len(b):
                room = block - pos % block
                if room < 7:
                    pos += room
                    continue
                _crc, n, kind = struct.unpack("<IHB", b[pos:pos + 7])
                if n == 0 and kind == 0:
                    break
                buf += b[pos + 7:pos + 7 + n]
                pos += 7 + n
                if kind in (1, 4):  # a whole record, or the last piece of one
                    chunks.append(buf)
                    buf = b""
            s = {"history": [], "config": {}, "summary": {}}
            for c in chunks:
                r = pb.Record()
                r.ParseFromString(c)
                what = r.WhichOneof("record_type")
                items = ()
                if what == "run":
                    s.update(id=r.run.run_id, name=r.run.display_name, project=r.run.project,
                             tags=list(r.run.tags))
                    items = r.run.config.update
                elif what == "config":
                    items = r.config.update
                elif what == "history":
                    row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                    s["history"].append({k: v for k, v in row.items() if not k.startswith("_")})  # W&B's own
                elif what == "summary":
                    s["summary"].update({u.key: json.loads(u.value_json) for u in r.summary.update if u.key})
                for u in items:
                    s["config"][u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
            out.append(s)
        return out

    @staticmethod
    def tensorboard(logdir):
        """TensorBoard's own reader over the directory (restart markers applied)."""
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
        ea.Reload()
        return ea


@pytest.fixture(scope="session")
def trackers():
    return Trackers
