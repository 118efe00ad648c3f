"""Tokenize a stream of documents into token shards, in parallel, in bounded memory, resumably.

Units (modgpt.corpus) are read in order, batched (about chunk_chars of text), tokenized by --workers
processes with at most two batches per worker in flight, and their tokens appended in input order,
so the output is the same for any number of workers. Each split's open shard is an append-only
`.partial` file; when it reaches shard_tokens it is synced, hashed and renamed to its final name,
and is never written again. After every batch the partial files are synced and `prepare_state.json`
records how many units are done and each partial file's length: a prepare killed anywhere and run
again truncates the partials to those lengths and continues with the next unit, producing the same
bytes as an uninterrupted run. meta.json, written last, is what marks the dataset complete.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from collections import deque
from collections.abc import Iterator

import numpy as np

from modgpt import io
from modgpt.data import DataError

CHUNK_CHARS = 1 << 20  # text per batch sent to a worker: memory is bounded by 2 x workers x this
STATE = "prepare_state.json"
STATE_VERSION = 1


def shard_name(split: str, i: int) -> str:
    return f"{split}_{i:06d}.bin"


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class SplitWriter:
    """One split's shards: complete ones listed, the open one appended to."""

    def __init__(self, out: str, split: str, dtype: str, shard_tokens: int, on_shard=None):
        self.out, self.split, self.dtype, self.shard_tokens = out, split, np.dtype(dtype), shard_tokens
        self.shards: list[dict] = []
        self.open_tokens = 0
        self.on_shard = on_shard
        self._f = None

    @property
    def partial(self) -> str:
        return os.path.join(self.out, shard_name(self.split, len(self.shards)) + ".partial")

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards) + self.open_tokens

    def restore(self, state: dict) -> None:
        """Back to a recorded state: the complete shards must be there whole; the open one is cut to its
        recorded length (anything after it came from a batch that was never recorded)."""
        self.shards = list(state["shards"])
        for s in self.shards:
            p = os.path.join(self.out, s["file"])
            if not os.path.isfile(p) or os.path.getsize(p) != s["tokens"] * self.dtype.itemsize:
                raise DataError(f"'{p}' is missing or has the wrong size; start over with --overwrite")
        self.open_tokens = state["open_tokens"]
        want = self.open_tokens * self.dtype.itemsize
        final = self.partial[: -len(".partial")]
        if not os.path.exists(self.partial) and os.path.isfile(final) and os.path.getsize(final) >= want:
            # finished and renamed after the last record (killed before the next one): not complete as
            # far as the record goes, so it is the open shard again, written on from its recorded length
            os.replace(final, self.partial)
        if os.path.exists(self.partial) and os.path.getsize(self.partial) >= want:
            os.truncate(self.partial, want)
        elif want:
            raise DataError(f"'{self.partial}' is shorter than recorded; start over with --overwrite")
        self.drop_unrecorded()

    def drop_unrecorded(self) -> None:
        """Delete this split's shard files past the open one: written after the last record (or before
        any), they would be appended to or taken for finished; they are written again."""
        prefix, first = f"{self.split}_", len(self.shards) + (1 if self.open_tokens else 0)
        for f in os.listdir(self.out):
            stem = f[len(prefix):].split(".", 1)[0]
            if f.startswith(prefix) and stem.isdigit() and int(stem) >= first and f.endswith((".bin", ".bin.partial")):
                os.unlink(os.path.join(self.out, f))

    def state(self) -> dict:
        return {"shards": self.shards, "open_tokens": self.open_tokens}

    def append(self, ids: np.ndarray) -> None:
        ids = ids.astype(self.dtype, copy=False)
        while len(ids):
            if self._f is None:
                self._f = open(self.partial, "ab")
            take = min(len(ids), self.shard_tokens - self.open_tokens)
            self._f.write(ids[:take].tobytes())
            self.open_tokens += take
            ids = ids[take:]
            if self.open_tokens == self.shard_tokens:
                self.close_shard()

    def sync(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())

    def close_shard(self) -> None:
        """Finish the open shard: synced, hashed, renamed to its final name, listed."""
        if self.open_tokens == 0:
            return
        self.sync()
        if self._f is not None:
            self._f.close()
            self._f = None
        partial = self.partial
        final = partial[: -len(".partial")]
        entry = {"file": os.path.basename(final), "tokens": self.open_tokens, "sha256": file_sha256(partial)}
        os.replace(partial, final)
        io.fsync_dir(self.out)
        self.shards.append(entry)
        self.open_tokens = 0
        if self.on_shard:
            self.on_shard(self.split, entry)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


# ---------------------------------------------------------------------------------------------
# Tokenizing workers: each process builds its tokenizer once.

_TOK = None


def _init_worker(spec: tuple) -> None:
    global _TOK
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the processes are the parallelism
    _TOK = make_encoder(spec)


def make_encoder(spec: tuple):
    """(encode_batch function, end-of-text id) for ('gpt2',) or ('hf', directory)."""
    from modgpt import data as D
    if spec[0] == "gpt2":
        tok = D.GPT2Tokenizer()
        return lambda texts: [tok.enc.encode_ordinary(t) for t in texts], tok.EOT
    tok = D.HFTokenizer(spec[1])
    return tok.encode_batch, spec[2]


def _encode(batch: list[tuple[str, bool]]) -> list[np.ndarray]:
    encode, eot = _TOK
    out = []
    for ids, (_, ends) in zip(encode([t for t, _ in batch]), batch):
        a = np.asarray(ids + [eot] if ends else ids, dtype=np.uint32)
        out.append(a)
    return out


def batches(units: Iterator[tuple[str, bool]], skip: int, chunk_chars: int) -> Iterator[list[tuple[str, bool]]]:
    """Units after the first `skip`, grouped into batches of about chunk_chars characters."""
    batch, chars = [], 0
    for i, u in enumerate(units):
        if i < skip:
            continue
        batch.append(u)
        chars += len(u[0])
        if chars >= chunk_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def tokenized(batches_: Iterator[list], spec: tuple, workers: int) -> Iterator[tuple[list, list[np.ndarray]]]:
    """(batch, its token arrays) in input order; at most 2 x workers batches in flight."""
    if workers <= 1:
        _init_worker(spec)
        for b in batches_:
            yield b, _encode(b)
        return
    import multiprocessing as mp
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(spec,)) as pool:
        pending: deque = deque()
        for b in batches_:
            pending.append((b, pool.apply_async(_encode, (b,))))
            if len(pending) >= 2 * workers:
                b0, r = pending.popleft()
                yield b0, r.get()
        while pending:
            b0, r = pending.popleft()
            yield b0, r.get()


class ValRule:
    """Which units are validation: the first ones up to val_tokens when given, else every unit i with
    floor((i + 1) f) > floor(i f), an evenly spaced fraction f of the units, the same for the same inputs."""

    def __init__(self, val_fraction: float, val_tokens: int | None):
        self.f, self.n = val_fraction, val_tokens

    def is_val(self, i: int, val_so_far: int) -> bool:
        if self.n is not None:
            return val_so_far < self.n
        return int((i + 1) * self.f) > int(i * self.f)


def run(out: str, units: Iterator[tuple[str, bool]], spec: tuple, identity: dict, dtype: str, shard_tokens: int,
        rule: ValRule, max_tokens: int | None, workers: int, progress: bool, total_bytes: int | None,
        chunk_chars: int = CHUNK_CHARS) -> dict:
    """Write (or continue) the shards in `out`; returns the split writers' final states."""
    state_path = os.path.join(out, STATE)
    state = io.read_json(state_path) if os.path.isfile(state_path) else None
    log = _Log(progress, total_bytes)
    writers = {s: SplitWriter(out, s, dtype, shard_tokens, log.shard) for s in ("train", "val")}
    done = 0
    if state is not None:
        for s, w in writers.items():
            w.restore(state["splits"][s])
        done = state["units_done"]
        log.resumed(done, {s: w.tokens for s, w in writers.items()})
    else:  # killed before its first record: whatever it wrote is unrecorded
        for w in writers.values():
            w.drop_unrecorded()
    from modgpt.io import fault
    n_batch = 0

    def full() -> bool:  # checked after every unit, so where it stops does not depend on the batching
        return max_tokens is not None and sum(w.tokens for w in writers.values()) >= max_tokens
    try:
        if not full():
            for batch, arrays in tokenized(batches(units, done, chunk_chars), spec, workers):
                for (text, _), ids in zip(batch, arrays):
                    split = "val" if rule.is_val(done, writers["val"].tokens) else "train"
                    writers[split].append(ids)
                    done += 1
                    log.unit(len(ids), text)
                    if full():
                        break
                for w in writers.values():
                    w.sync()
                io.write_json(state_path, {"version": STATE_VERSION, "identity": identity, "units_done": done,
                                           "splits": {s: w.state() for s, w in writers.items()}})
                n_batch += 1
                fault("prepare", n_batch)
                if full():
                    break
        for w in writers.values():
            w.close_shard()
    finally:
        for w in writers.values():
            w.close()
        log.close()
    return {s: w.state() for s, w in writers.items()}


class _Log:
    """A progress bar on a terminal (documents, tokens, MB/s, ETA); a line per shard otherwise."""

    def __init__(self, enabled: bool, total_bytes: int | None):
        self.tty = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self.docs = self.tokens = 0
        self.t0 = time.monotonic()
        self.bar = None
        if self.tty:
            from tqdm import tqdm
            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", file=sys.stderr)

    def resumed(self, units: int, tokens: dict) -> None:
        # said even without progress output: the run is not starting from nothing
        print(f"continuing after {units:,} units already in the shards ({tokens['train']:,} train, "
              f"{tokens['val']:,} val tokens)", file=sys.stderr, flush=True)

    def unit(self, n_tokens: int, text: str) -> None:
        self.docs += 1
        self.tokens += n_tokens
        if self.bar is not None:
            self.bar.update(len(text.encode("utf-8")))
            if self.docs % 256 == 0:
                self.bar.set_postfix(docs=f"{self.docs:,}", tokens=f"{self.tokens:,}", refresh=False)

    def shard(self, split: str, entry: dict) -> None:
        if self.enabled and not self.tty:
            dt = time.monotonic() - self.t0
            print(f"shard {entry['file']}: {entry['tokens']:,} tokens ({self.docs:,} units, {self.tokens:,} tokens "
                  f"so far, {self.tokens / max(dt, 1e-9):,.0f} tokens/s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
