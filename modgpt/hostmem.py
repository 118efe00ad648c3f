"""Host allocator settings for training on CPU (glibc only; imports neither jax nor torch).

XLA:CPU allocates each execution's temporary buffer (one block holding every intermediate of the
step: about 224 MiB for the CPU-sized shakespeare model) with posix_memalign from one of its worker
threads. glibc serves a request that large from a fresh anonymous mmap (a worker thread's arena
cannot grow past 64 MiB, and blocks over the mmap threshold are mapped anyway) and unmaps it when
the step ends, so every step touches all of it again from zeroed pages: ~57,000 page faults per
step, a third of the step's time on CPU (docs/performance.md). Torch's eager CPU ops allocate
their outputs the same way on a smaller scale (3,000-15,000 page faults per step for that model).

`keep_freed_blocks()` tells glibc to serve every thread from the main heap, never to mmap large
blocks and never to give freed memory back to the OS, so the block is reused from one step to the
next. It must run before jax (or torch's OpenMP) creates its thread pool, i.e. before the first
computation or device query: threads that already picked an arena keep it. Both backends' train
entry points call it first thing, for CPU runs only: that is where it was measured to help (a GPU
run's steps allocate on the device). The cost is that the process keeps its peak heap size until it
exits, which a training process does anyway.

Opt out with MODGPT_HOST_MALLOC=default (or set MALLOC_ARENA_MAX / GLIBC_TUNABLES yourself).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

# the opt-out, and the variables through which the environment sets the allocator itself (then the
# settings here stay off); modgpt.bench records both with a timing
OPT_OUT = "MODGPT_HOST_MALLOC"
ALLOCATOR_ENV = ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES", "LD_PRELOAD")

_state: dict[str, object] = {"applied": None}


def keep_freed_blocks(device: str = "cpu") -> str:
    """Apply the settings once, for a run on `device` (the --device option: auto asks
    hardware.accelerator_visible, which imports no framework); returns a short description for the
    report ('glibc: ...' or 'default (...)' saying why not)."""
    if _state["applied"] is not None:
        return str(_state["applied"])
    _state["applied"] = _apply(device)
    return str(_state["applied"])


def _apply(device: str) -> str:
    from modgpt.hardware import accelerator_visible
    if accelerator_visible(device)[0]:
        return "default (a GPU run: the tuning helps CPU steps)"
    if os.environ.get(OPT_OUT, "").lower() == "default":
        return f"default ({OPT_OUT}=default)"
    if not sys.platform.startswith("linux"):
        return "default (not Linux)"
    if any(k in os.environ for k in ALLOCATOR_ENV):
        return "default (the environment sets the allocator)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return "default (no glibc mallopt)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(p, v) == 1 for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0),
                                             (_M_TRIM_THRESHOLD, 2**31 - 1)))
    return "glibc: one arena, freed blocks kept" if ok else "default (mallopt refused)"
