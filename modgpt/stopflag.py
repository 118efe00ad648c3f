"""SIGTERM / SIGINT for both train commands. The first asks the loop to checkpoint at the next step
boundary and exit 0 (preemption, Ctrl-C). A second one stops at once: a checkpoint being written is
dropped (the last complete one stays the one to resume from), one line says so, and the process
leaves without unwinding, so no library (orbax's event loop, absl, gloo) prints pages on the way."""
from __future__ import annotations

import os
import signal
import sys
from typing import Callable


class StopFlag:
    def __init__(self, is_main: bool = True):
        self.signal: str | None = None
        self.is_main = is_main
        # set by the loop once it runs: removes a partial checkpoint, ends the run log, and returns the
        # line to print (the iteration and the checkpoint to resume from)
        self.on_abort: Callable[[str], str] | None = None
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._handle)

    @property
    def set(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is None:
            self.signal = name
            return
        self.abort(name, 128 + signum)

    def abort(self, name: str, code: int) -> None:
        msg = f"stopped at once by a second {name} before training started"
        try:
            if self.on_abort is not None:
                msg = self.on_abort(name)
        except Exception as e:  # noqa: BLE001 - leaving at once matters more than a tidy log
            msg = f"stopped at once by a second {name} ({type(e).__name__} while cleaning up: {e})"
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, RuntimeError):  # RuntimeError: the handler interrupted a write
                pass
        if self.is_main:  # os.write: sys.stderr may be mid-write in the interrupted code
            os.write(2, (msg + "\n").encode())
        os._exit(code)
