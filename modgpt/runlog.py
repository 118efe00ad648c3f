"""The JSONL run-log format both backends write, and a tolerant reader.

One JSON object per line, each with "type":
  header  {type, time, backend, config, arch_name, params, flops_per_token, device, n_devices,
           peak_tflops, dtype, parallel, tokens_per_iter, versions, memory_floor_bytes, attention,
           resumed_from}
  iter    {type, time, iter, loss, lr, grad_norm, dt, tokens_per_sec, mfu, peak_mem_bytes, tokens_seen,
           skipped_steps}
  eval    {type, time, iter, train_loss, val_loss, train_bpb, val_bpb, tokens_seen}
  event   {type, time, iter, event, message}        (checkpoint saved, resumed, skipped step, ...)
  end     {type, time, iter, status, wall_time, best_val_loss, message}
          status: completed | interrupted | failed
Each record is written with one write() of one line and flushed, so a killed run leaves a log
whose every complete line parses; a torn last line is skipped by the reader. After the line, the
record goes to each sink (the trackers of modgpt.track: sink.record(rec), sink.close()); a sink
that raises is warned about once and dropped, and the JSONL log goes on.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

LOG_NAME = "log.jsonl"


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them visible as strings
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class RunLog:
    def __init__(self, out_dir: str, enabled: bool = True, sinks: list | None = None):
        self.path = os.path.join(out_dir, LOG_NAME)
        self.enabled = enabled
        self.sinks = list(sinks or []) if enabled else []
        self.t0 = time.time()
        if enabled:
            os.makedirs(out_dir, exist_ok=True)

    def write(self, type_: str, **fields: Any) -> None:
        if not self.enabled:
            return
        rec = {"type": type_, "time": time.time(), **fields}
        line = json.dumps(_clean(rec), separators=(",", ":")) + "\n"
        # O_APPEND + a single write keeps lines whole even if two writers ever raced.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        for sink in list(self.sinks):
            self._call(sink, "failed", sink.record, rec)

    def _call(self, sink, what: str, fn, *a) -> None:
        try:
            fn(*a)
        except Exception as e:  # a tracker never stops training: one warning, then the run goes on without it
            self.sinks.remove(sink)
            warn(sink.name, e, what)

    def close(self) -> None:
        """Finish the sinks (those the end record has not finished already)."""
        for sink in list(self.sinks):
            self._call(sink, "failed to close", sink.close)
        self.sinks = []

    def header(self, **fields: Any) -> None:
        self.write("header", **fields)

    def iter(self, **fields: Any) -> None:
        self.write("iter", **fields)

    def eval(self, **fields: Any) -> None:
        self.write("eval", **fields)

    def event(self, event: str, **fields: Any) -> None:
        self.write("event", event=event, **fields)

    def end(self, status: str, **fields: Any) -> None:
        self.write("end", status=status, wall_time=time.time() - self.t0, **fields)


def warn(name: str, e: BaseException, what: str) -> None:
    """A tracker's one warning (modgpt.track): it is dropped, the run and this log go on."""
    first = str(e).splitlines()[0] if str(e) else ""
    print(f"warning: {name} {what} ({type(e).__name__}: {first}); the run goes on without it, {LOG_NAME} "
          f"has every record", file=sys.stderr, flush=True)


def read(path: str) -> list[dict]:
    """All complete records of a log file (or a run dir); a torn or corrupt line is skipped."""
    if os.path.isdir(path):
        path = os.path.join(path, LOG_NAME)
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "type" in rec:
                out.append(rec)
    return out
