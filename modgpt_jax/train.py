"""python -m modgpt_jax.train [CONFIG_FILE] [--preset NAME] [--key=value ...]

Setup and its refusals, then the shared loop (modgpt.trainloop) over the JAX Trainer (trainer.py)
on a (data, fsdp) mesh: one jitted, donated step per iteration, orbax checkpoints every eval
interval, JSONL run log, SIGTERM/SIGINT -> checkpoint and exit 0, non-finite loss -> stop (or skip
with --skip_nonfinite).
"""
from __future__ import annotations

import math
import os
import sys

from modgpt import cli, initfrom, io, loop, report
from modgpt import config as C
from modgpt import data as D
from modgpt import hardware as HW
from modgpt import hostmem
from modgpt.stopflag import StopFlag
from modgpt.trainloop import TrainLoop
from modgpt_jax.trainer import BACKEND, Trainer, device_capacity



def fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def discard_setup(run, is_main: bool) -> None:
    """A fresh run refused after setup (e.g. a batch the mesh cannot split): leave nothing behind."""
    if run.lock is not None:
        run.lock.release()
    if run.resume or not is_main or not run.committed:  # uncommitted: nothing was written
        return
    for name in (loop.CONFIG_NAME, ".lock"):
        try:
            os.unlink(os.path.join(run.out_dir, name))
        except OSError:
            pass
    try:
        os.rmdir(run.out_dir)  # only if now empty
    except OSError:
        pass


def main(argv=None) -> int:
    args = cli.parse(argv, prog="python -m modgpt_jax.train")
    hostmem.keep_freed_blocks(args.config.system.device)  # before jax starts its threads (modgpt/hostmem.py)
    from modgpt_jax.distributed import maybe_initialize, pin_platform, platform_error
    pin_platform(args.config.system.device)
    multi = maybe_initialize()
    import jax
    is_main = jax.process_index() == 0
    cfg0 = args.config
    run = None
    try:
        C.check_backend_options(cfg0, BACKEND)
        if (why := platform_error(cfg0.system.device)) is not None:
            raise loop.SetupError(why)
        if multi and not cfg0.train.out_dir:
            raise loop.SetupError("multi-process training needs an explicit --out_dir (the same on every process)")
        if cfg0.train.init_from == "resume" and cfg0.train.out_dir and \
                os.path.isfile(os.path.join(cfg0.train.out_dir, loop.CONFIG_NAME)):
            loop.check_backend(cfg0.train.out_dir, BACKEND)
        source = initfrom.preload(args)  # a weights file fixes the architecture before setup
        # write=False: nothing lands in out_dir until the checkpoint / init weights have loaded
        run = loop.setup(args, BACKEND, has_accelerator=jax.default_backend() != "cpu", is_main=is_main,
                         write=False)
        if run.resume:  # a checkpoint past max_iters is refused before anything is built or written
            from modgpt_jax import checkpoint as CK
            step = CK.latest_step(run.out_dir)
            loop.check_resume_point(run, step, os.path.join(run.out_dir, CK.CKPT_DIR, str(step)))
        cfg = run.cfg
        loop.check_memory(cfg, BACKEND, jax.device_count(), *device_capacity())
        stop = StopFlag(is_main)  # from here a SIGTERM/SIGINT means: stop at the first step boundary
        io.fault("startup", 0)  # test-only hook (a signal while the model is built); no-op otherwise
        sampler = D.BatchSampler(run.data_path, cfg.model.block_size, cfg.train.batch_size, cfg.train.seed,
                                 vocab_size=cfg.model.vocab_size, rank=jax.process_index(),
                                 world=jax.process_count())
        trainer = Trainer(cfg)
    except (C.ConfigError, D.DataError, loop.SetupError, ValueError, FileNotFoundError) as e:
        if run is not None:
            discard_setup(run, is_main)
        return fail(str(e).splitlines()[0])
    try:
        return train(run, trainer, sampler, source and source.tensors, is_main, stop)
    finally:
        if run.lock is not None:
            run.lock.release()


def matmul_precision(dtype: str, platform: str, setting) -> tuple[str, str]:
    """(the precision line of the start-up report, the peak-FLOPs dtype MFU is measured against).
    On a GPU, XLA computes float32 matmuls in TF32 unless jax_default_matmul_precision (`setting`)
    asks for more (the parity suite sets "highest"), so a float32 run's MFU is against the TF32
    tensor-core peak, as the torch backend's is (it enables TF32 for float32 runs)."""
    if dtype != "float32" or platform != "gpu":
        return dtype, dtype
    if setting in (None, "default", "tensorfloat32", "TF32_TF32_F32"):
        return "float32 (TF32 matmuls, XLA's default on a GPU)", "tf32"
    if setting in ("bfloat16", "fastest", "BF16_BF16_F32"):
        return f"float32 (bfloat16 matmuls: matmul precision {setting})", "bfloat16"
    return f"float32 (matmul precision {setting})", "float32"


def train(run, trainer: Trainer, sampler, init_tensors, is_main: bool, stop: StopFlag) -> int:
    """Restore or initialize, commit the run, report, run the shared loop, sample at the end."""
    import jax

    import flax
    import optax
    import orbax.checkpoint
    from modgpt_jax import checkpoint as CK
    from modgpt_jax import kernels as K
    from modgpt_jax import sharding as S
    cfg, t = run.cfg, run.cfg.train
    dev = jax.devices()[0]
    n_dev = jax.device_count()
    precision, peak_dtype = matmul_precision(t.dtype, jax.default_backend(), jax.config.jax_default_matmul_precision)
    peak = HW.peak_tflops(dev.device_kind, peak_dtype, cfg.system.peak_tflops)
    par = S.describe(trainer.mesh)
    start, best, skipped = 0, math.inf, 0
    restored = run.resume and CK.latest_step(run.out_dir) is not None
    if run.resume and not restored:
        if is_main:  # killed before its first checkpoint: nothing to restore, nothing lost
            print(report.no_checkpoint_note(run.out_dir), flush=True)
    elif run.resume:
        try:
            meta = trainer.restore(run.out_dir)
        except CK.CheckpointError as e:
            CK.exit_if_unreadable(e)
            return fail(str(e))
        start, best, skipped = meta["iter"], meta.get("best_val_loss") or math.inf, meta.get("skipped_steps", 0)
    elif init_tensors is not None:
        trainer.load_canonical(init_tensors)
    try:
        loop.commit(run)  # the run's first write: out_dir, lock, config.json
    except loop.SetupError as e:
        return fail(str(e))
    trainer.attach(run, sampler)
    log = loop.open_log(run, is_main)
    prog = report.Progress(cfg, start, enabled=is_main)
    attention = K.describe_attention(cfg.model, t.dtype, trainer.kernels)
    if is_main:
        print(report.startup_report(run, BACKEND, dev.device_kind, n_dev, precision, peak, par,
                                    extra={"mesh": dict(trainer.mesh.shape), "init": t.init_from, "kernels": K.describe(trainer.kernels),
                                           "attention": attention, "host malloc": hostmem.keep_freed_blocks()}),
              flush=True)
    versions = dict(jax=jax.__version__, flax=flax.__version__, optax=optax.__version__,
                    orbax=orbax.checkpoint.__version__)
    log.header(**report.header_record(run, BACKEND, dev.device_kind, n_dev, peak, versions, par),
               attention=attention, kernels=list(trainer.kernels), resumed_from=start if restored else None)
    if restored:
        log.event("resumed", iter=start, message=f"resumed from checkpoint {start}")
    tl = TrainLoop(run, trainer, log, prog, stop, start=start, best=best, skipped=skipped,
                   last_ckpt=trainer.checkpoint_path(start) if restored else None, peak=peak, n_devices=n_dev)
    try:
        rc = tl.run()
    finally:
        log.close()
    if tl.completed and t.max_iters > 0 and t.sample_at_end:
        from modgpt_jax.inference import end_of_run_sample, host_model
        model = host_model(trainer.graphdef, trainer.params)  # collective: every process gathers
        text = end_of_run_sample(model, cfg) if is_main else None
        if text is not None:
            print(f"sample (seed {t.seed}, temperature 0.8):\n{text}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
