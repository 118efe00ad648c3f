"""Atomic file writes, run-directory locking and free-space checks, shared by every writer in the
project; plus the test-only fault-injection hook the reliability tests use (see `fault`)."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
import time


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temp path in the same directory; on success fsync and rename it onto `path`."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=d)
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes 0600 and some writers (safetensors) recreate the file: give it the mode a plain
        # open() would, so results are shared as the user's umask says
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(d)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def current_umask() -> int:
    """This process's umask, read without changing it where Linux shows it (/proc), else set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(d: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_bytes(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def nearest_existing(path: str) -> str:
    """`path` or its closest ancestor that exists (where a new directory would be created)."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def probe_writable(path: str) -> None:
    """Raise OSError unless a file can be created in `path` (or where it would be created).

    Leaves nothing behind and does not create `path`: a refused run must not write anything.
    Writes a real probe file because permission bits alone lie (root, read-only mounts).
    """
    base = nearest_existing(path)
    if not os.path.isdir(base):
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), base)
    fd, probe = tempfile.mkstemp(prefix=".modgpt-write-probe-", dir=base)
    try:
        os.write(fd, b"ok")
    finally:
        os.close(fd)
        os.unlink(probe)


def free_bytes(path: str) -> int:
    """Free bytes on the filesystem that holds (or would hold) `path`."""
    forced = fault_value("disk_free")
    if forced is not None:
        return int(forced)
    return shutil.disk_usage(nearest_existing(path)).free


def lock_holder(out_dir: str) -> str | None:
    """The pid text of a live run holding out_dir's lock, or None; opens the lock read-only."""
    import fcntl
    path = os.path.join(out_dir, ".lock")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        with contextlib.suppress(OSError):
            return os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        return "?"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def in_use_message(out_dir: str, holder: str) -> str:
    return (f"out_dir '{out_dir}' is in use by another run (pid {holder}); choose another --out_dir "
            f"or stop that run")


class RunLock:
    """An exclusive lock on a run directory so two runs never interleave files in one out_dir.

    Uses fcntl.flock on out_dir/.lock: released automatically when the process dies (even SIGKILL).
    """

    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, ".lock")
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            try:
                with open(self.path) as f:
                    holder = f.read().strip()
            except OSError:
                holder = "?"
            raise RuntimeError(in_use_message(os.path.dirname(self.path), holder or "?")) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# ---------------------------------------------------------------------------------------------
# Test-only fault injection. Real runs never set MODGPT_TEST_FAULT; tests/reliability does, to
# hit windows a signal cannot hit reliably (inside a checkpoint write, in the middle of a step).
#   MODGPT_TEST_FAULT="POINT@ITER:ACTION[,...]"   e.g. "ckpt_write@4:pause", "step@3:pause",
#                                                       "ckpt_write@2:enospc", "disk_free=1000"
# Points: ckpt_write (inside a checkpoint save, after the temporary file/dir is fully written and
# before it is renamed into place; the hook first truncates it to half so it is really partial),
# step (between the backward pass and the parameter update), startup (@0: once the stop handler is
# installed, before the model is built, compiled or restored). Actions: pause (print one
# "[test fault] ..." line to stdout and sleep for good, so the test can SIGKILL the process right
# there), sleep (print the line, sleep 2 s, go on: time for a test's signal to land mid-step),
# enospc (raise OSError(ENOSPC) as a full disk would). "disk_free=N" replaces the free-space
# figure used by the start-up check.

FAULT_ENV = "MODGPT_TEST_FAULT"


def _fault_specs() -> list[str]:
    return [x.strip() for x in os.environ.get(FAULT_ENV, "").split(",") if x.strip()]


def fault_value(name: str) -> str | None:
    for spec in _fault_specs():
        key, eq, val = spec.partition("=")
        if eq and key == name:
            return val
    return None


def truncate_half(path: str) -> None:
    """Cut a file, or every file under a directory, to half its size (a torn write)."""
    files = [path] if os.path.isfile(path) else [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
    for f in files:
        with contextlib.suppress(OSError):
            os.truncate(f, os.path.getsize(f) // 2)


def fault(point: str, it: int, partial: str | None = None) -> None:
    """Test-only: misbehave at `point` on iteration `it` if MODGPT_TEST_FAULT asks; else nothing."""
    for spec in _fault_specs():
        where, _, action = spec.partition(":")
        name, _, at = where.partition("@")
        if name != point or not at.isdigit() or int(at) != it:
            continue
        if action not in ("pause", "sleep", "enospc"):
            raise ValueError(f"{FAULT_ENV}: unknown action {action!r} in {spec!r} (pause, sleep, enospc)")
        if partial is not None and action != "sleep":
            truncate_half(partial)
        if action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), partial)
        print(f"[test fault] {action} in {point} at iteration {it} (pid {os.getpid()}, "
              f"rank {os.environ.get('RANK', '0')})", flush=True)
        sys.stderr.flush()
        if action == "sleep":
            time.sleep(2.0)
            return
        while True:
            time.sleep(3600)


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)
