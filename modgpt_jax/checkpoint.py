"""orbax checkpoints in out_dir/checkpoints: {params, opt_state} (sharded arrays) + JSON run state.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoints readable. Restore takes the current mesh's shardings as
its target, so a run saved on one mesh shape resumes on another.
"""
from __future__ import annotations

import contextlib
import gc
import os
import sys
import tempfile
import time

import jax
import orbax.checkpoint as ocp

CKPT_DIR = "checkpoints"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's name for a step being written


def _fault_tmp_class():
    """Test-only (MODGPT_TEST_FAULT=ckpt_write@N:...): orbax's atomic-rename temp dir with the
    modgpt.io.fault hook run just before the rename, on a fully written but truncated temp dir."""
    from orbax.checkpoint._src.path.atomicity import AtomicRenameTemporaryPath

    from modgpt import io

    class FaultTemporaryPath(AtomicRenameTemporaryPath):
        async def finalize(self, *a, **kw):
            name = self.get().name
            if name.split(".")[0].isdigit():
                io.fault("ckpt_write", int(name.split(".")[0]), partial=str(self.get()))
            return await super().finalize(*a, **kw)
    return FaultTemporaryPath


class CheckpointError(RuntimeError):
    """No checkpoint, or an unreadable one; the message says what to do."""


def exit_if_unreadable(e: CheckpointError) -> None:
    """After a failed orbax read, print the one-line error and leave without interpreter teardown:
    orbax's abandoned asynchronous reads would otherwise print pages of tracebacks at exit. Nothing
    is held at that point (a run takes its lock only after the checkpoint has loaded)."""
    if getattr(e, "unreadable", False):
        sys.stdout.flush()
        print(f"error: {e}", file=sys.stderr, flush=True)
        os._exit(2)


def manager(out_dir: str, keep: int | None = None, read_only: bool = False) -> ocp.CheckpointManager:
    if read_only:  # orbax warns that read-only managers do not save; that is the point here
        from absl import logging
        logging.set_verbosity(logging.ERROR)
    from modgpt import io
    extra = {}
    if not read_only and "ckpt_write" in os.environ.get(io.FAULT_ENV, ""):
        extra["temporary_path_class"] = _fault_tmp_class()
    # cleanup: a killed save leaves '<step>.orbax-checkpoint-tmp'; the writer holds the run lock,
    # so no temp dir is live and removing them is safe (readers never look at them anyway)
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only,
                                        enable_async_checkpointing=False,
                                        cleanup_tmp_directories=not read_only, **extra)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(out_dir, CKPT_DIR)), options=opts,
                                 item_names=("state", "meta"))


def save(mgr: ocp.CheckpointManager, it: int, params, opt_state, meta: dict) -> None:
    """Blocking save of iteration `it` (the state after `it` optimizer steps)."""
    state = {"params": params, "opt_state": opt_state}
    mgr.save(it, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
             force=True)
    mgr.wait_until_finished()


def remove_temps(out_dir: str) -> None:
    """Remove orbax's temporary directories of an unfinished save (a run stopped at once mid-save)."""
    import shutil
    d = os.path.join(out_dir, CKPT_DIR)
    for name in os.listdir(d) if os.path.isdir(d) else []:
        if TMP_SUFFIX in name:
            shutil.rmtree(os.path.join(d, name), ignore_errors=True)


def latest_step(out_dir: str) -> int | None:
    d = os.path.join(out_dir, CKPT_DIR)
    if not os.path.isdir(d):
        return None
    return manager(out_dir, read_only=True).latest_step()


def read_meta(out_dir: str, step: int | None = None) -> dict:
    mgr = manager(out_dir, read_only=True)
    step = mgr.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in '{os.path.join(out_dir, CKPT_DIR)}'")
    return mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


@contextlib.contextmanager
def _stderr_only_on_success():
    """Hold back what orbax/TensorStore write to stderr (fd 2, native code included) and replay it
    only if the block succeeds: a corrupt checkpoint then reports our one line, not pages of logs."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                buf.seek(0)
                sys.stderr.write(buf.read().decode(errors="replace"))


def restore(out_dir: str, params_target, opt_target, step: int | None = None):
    """(params, opt_state, meta) of `step` (default latest), placed like the targets' shardings.

    Targets are pytrees of arrays or jax.ShapeDtypeStruct with .sharding (the current mesh's).
    """
    mgr = manager(out_dir, read_only=True)
    step = mgr.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in '{os.path.join(out_dir, CKPT_DIR)}'; train first "
                              f"(python -m modgpt_jax.train --out_dir={out_dir})")

    def abstract(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    target = {"params": jax.tree.map(abstract, params_target)}
    if opt_target is not None:
        target["opt_state"] = jax.tree.map(abstract, opt_target)
    try:
        if opt_target is None:  # sampling/export: parameters only
            args = ocp.args.Composite(state=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True), meta=ocp.args.JsonRestore())
        else:
            args = ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
        with _stderr_only_on_success():
            try:
                out = mgr.restore(step, args=args)
            except Exception:
                # let the aborted read's other async tasks fail and be collected while stderr is
                # still held back, so their tracebacks do not follow our one-line error
                mgr.close()
                time.sleep(0.5)
                gc.collect()
                raise
    except Exception as e:  # noqa: BLE001 - orbax raises many types; report one short line
        why = " ".join(str(e).split())
        why = why.split(" See full TensorStore details")[0][:200]
        path = os.path.join(out_dir, CKPT_DIR, str(step))
        err = CheckpointError(f"checkpoint '{path}' is unreadable ({type(e).__name__}: {why}); it is "
                              f"truncated, corrupt or from another architecture: delete it to resume "
                              f"from the previous one")
        err.unreadable = True
        raise err from None
    finally:
        mgr.close()  # stop orbax's worker threads now, not at interpreter exit (they print there)
    st = out["state"]
    return st["params"], st.get("opt_state"), out["meta"]
