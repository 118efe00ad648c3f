"""python -m modgpt_torch.train [CONFIG_FILE] [--preset NAME] [--key=value ...]

Single process on CPU/GPU, or under torchrun with parallel=ddp|zero1|fsdp. The loop follows
docs/backend_contract.md: for it = start..max_iters: evaluate+checkpoint when due, stop at
max_iters, else one optimizer step with lr_at(it).
"""
from __future__ import annotations

import math
import os
import sys

from modgpt import cli, hostmem

PROG = "python -m modgpt_torch.train"
# Run as a script: parse the command line before importing torch (~3 s), so a typo fails at once.
PREPARSED = cli.parse(None, prog=PROG) if __name__ == "__main__" else None
if __name__ == "__main__":
    hostmem.keep_freed_blocks(PREPARSED.config.system.device)  # before torch starts its threads (modgpt/hostmem.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from modgpt import config as C  # noqa: E402
from modgpt import data as D  # noqa: E402
from modgpt import hardware as HW  # noqa: E402
from modgpt import initfrom, io, loop, report  # noqa: E402
from modgpt.stopflag import StopFlag  # noqa: E402
from modgpt.trainloop import TrainLoop  # noqa: E402
from modgpt_torch import checkpoint as CK  # noqa: E402
from modgpt_torch import kernels as K  # noqa: E402
from modgpt_torch import parallel as P  # noqa: E402
from modgpt_torch.model import GPT  # noqa: E402
from modgpt_torch.trainer import BACKEND, DTYPES, Trainer, fresh_seed  # noqa: E402
from modgpt_torch.weights import load_canonical  # noqa: E402

SETUP_ERRORS = (C.ConfigError, D.DataError, loop.SetupError, CK.CheckpointError, FileNotFoundError,
                ValueError)


def pick_device(cfg: C.Config, d: P.Dist) -> torch.device:
    want = cfg.system.device
    if want in ("cuda", "gpu") or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise loop.SetupError(f"device={want} but no CUDA device is available; use --device=cpu")
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def check_launch(mode: str, d: P.Dist) -> None:
    """--parallel and torchrun go together: a mode without torchrun has no process group to join,
    and torchrun without a mode would train its processes side by side without syncing them."""
    if mode != "none" and not d.enabled:
        raise loop.SetupError(f"--parallel={mode} needs torchrun: torchrun --nproc_per_node=N -m modgpt_torch.train "
                              f"... --parallel={mode} (or --parallel=none for one process)")
    if mode == "none" and d.world > 1:
        raise loop.SetupError(f"torchrun started {d.world} processes but --parallel=none; pass --parallel=ddp, "
                              f"zero1 or fsdp (or start one process)")


class OtherRankFailed(loop.SetupError):
    """Another rank hit a setup error and reports it; this rank exits 2 quietly."""


def agree(d: P.Dist, err: Exception | None, device) -> None:
    """Collective: every rank raises if any rank failed, so no rank waits forever for the others.

    Rank 0 prints its own error; another rank prints its error only when rank 0 had none.
    """
    if not P.any_flag(d, err is not None, device):
        return
    rank0_failed = P.any_flag(d, d.is_main and err is not None, device)
    if err is not None and (d.is_main or not rank0_failed):
        raise err
    raise OtherRankFailed("")


def setup_device(d: P.Dist):
    return torch.device("cuda", d.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def guarded(d: P.Dist, fn):
    """Run fn() on every rank; setup errors anywhere make every rank raise (see agree)."""
    out, err = None, None
    try:
        out = fn()
    except SETUP_ERRORS as e:
        err = e
    agree(d, err, setup_device(d))
    return out


def do_setup(args, d: P.Dist):
    """Resolve and check the run on every rank; nothing is written yet (commit() does that)."""
    init = args.config.train.init_from
    out_dir = args.config.train.out_dir

    def resolve():
        C.check_backend_options(args.config, BACKEND)
        check_launch(args.config.system.parallel, d)
        if init == "resume" and out_dir and os.path.isfile(os.path.join(out_dir, loop.CONFIG_NAME)):
            loop.check_backend(out_dir, BACKEND)
        src = initfrom.preload(args)  # a weights file fixes the architecture before setup
        r = loop.setup(args, BACKEND, has_accelerator=torch.cuda.is_available(), is_main=d.is_main,
                       write=False)
        if r.cfg.train.batch_size % d.world:
            raise loop.SetupError(f"batch_size={r.cfg.train.batch_size} is the global batch and cannot be split "
                                  f"over the {d.world} torchrun processes; set --batch_size to a multiple of "
                                  f"{d.world} or start fewer processes")
        if r.resume:  # a checkpoint past max_iters is refused before anything is loaded or written
            ck = CK.latest(r.out_dir)
            loop.check_resume_point(r, None if ck is None else CK.iter_of(ck), ck)
        return r, src
    run, source = guarded(d, resolve)
    if d.enabled and out_dir == "":  # a generated name (it holds the time): take rank 0's everywhere
        import torch.distributed as dist
        name = [run.out_dir]
        dist.broadcast_object_list(name, src=0)
        run.out_dir, run.cfg = name[0], run.cfg.replace(out_dir=name[0])
    return run, source


def build(run, source, d: P.Dist):
    """The model with its starting weights and, when resuming, the checkpoint (read-only)."""
    cfg = run.cfg
    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model)  # same init on every rank (same seed, built on CPU)
    ck = None
    if run.resume and CK.latest(run.out_dir) is None:
        if d.is_main:  # killed before its first checkpoint: nothing to restore, nothing lost
            print(report.no_checkpoint_note(run.out_dir), flush=True)
    elif run.resume:
        ck = CK.load_latest(run.out_dir)
        CK.load_model_state(model, ck["model"], CK.latest(run.out_dir))
        saved = ck.get("config")
        if saved is not None and C.from_dict(saved).model != cfg.model:
            raise CK.CheckpointError(f"checkpoint '{CK.latest(run.out_dir)}' holds another architecture "
                                     f"than {run.out_dir}/{loop.CONFIG_NAME}")
    elif source is not None:
        load_canonical(model, source.tensors)
    return model, ck


def device_capacity(device, d: P.Dist) -> tuple[int | None, str]:
    """(bytes per process, the device in words) for loop.check_memory: the GPU's memory, or on the CPU
    the host's available memory shared by the processes on it (torchrun's local world size)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return props.total_memory, f"a {props.name}"
    avail = loop.host_available_bytes()
    n = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return (None if avail is None else avail // n), ("the host" if n == 1 else f"each of the host's {n} processes")


def main(argv=None) -> int:
    args = PREPARSED if argv is None and PREPARSED is not None else cli.parse(argv, prog=PROG)
    hostmem.keep_freed_blocks(args.config.system.device)
    d = P.Dist()
    run = None
    try:
        dev_type = "cuda" if (args.config.system.device in ("cuda", "gpu") or
                              (args.config.system.device == "auto" and torch.cuda.is_available())) else "cpu"
        d = P.init(dev_type)
        device = pick_device(args.config, d)
        run, source = do_setup(args, d)
        guarded(d, lambda: loop.check_memory(run.cfg, BACKEND, d.world, *device_capacity(device, d)))
        stop = StopFlag(d.is_main)  # from here a SIGTERM/SIGINT means: stop at the first step boundary
        io.fault("startup", 0)  # test-only hook (a signal while the model is built); no-op otherwise
        model, ck = guarded(d, lambda: build(run, source, d))
        guarded(d, lambda: loop.commit(run))  # the run's first write: out_dir, lock, config.json
    except SETUP_ERRORS as e:
        if not isinstance(e, OtherRankFailed):
            prefix = "" if d.is_main else f"rank {d.rank}: "
            print(f"error: {prefix}{str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        if run is not None and run.lock is not None:
            run.lock.release()
        P.shutdown(d)
        return 2
    try:
        return train(run, model, ck, stop, d, device)
    finally:
        if run.lock is not None:
            run.lock.release()
        P.shutdown(d)


def train(run, model, ck, stop: StopFlag, d: P.Dist, device) -> int:
    """Build the Trainer, restore or seed, report, run the shared loop, sample at the end."""
    cfg, t = run.cfg, run.cfg.train
    trainer = Trainer(run, model, device, d)
    start, best, skipped, last_ckpt = 0, math.inf, 0, None
    if ck is not None:
        meta = trainer.restore(ck)
        start, best, skipped = meta["iter"], meta["best_val_loss"] or math.inf, meta["skipped_steps"]
        last_ckpt = CK.latest(run.out_dir)
    else:
        fresh_seed(cfg, d)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    precision = t.dtype + (" (TF32 matmuls)" if device.type == "cuda" and t.dtype == "float32" else "")
    peak_dtype = "tf32" if device.type == "cuda" and t.dtype == "float32" else t.dtype
    peak = HW.peak_tflops(dev_name, peak_dtype, cfg.system.peak_tflops)
    pdesc = P.describe(cfg.system.parallel, d)
    log = loop.open_log(run, enabled=d.is_main)
    progress = report.Progress(cfg, start, enabled=d.is_main)
    if d.is_main:
        attention = K.describe_attention(cfg.model, DTYPES[t.dtype], device)
        extra = {"compile": "torch.compile" if t.compile else "eager", "init": t.init_from,
                 "kernels": K.describe(trainer.kernels, device.type), "attention": attention,
                 "host malloc": hostmem.keep_freed_blocks()}
        print(report.startup_report(run, BACKEND, dev_name, d.world, precision, peak, pdesc, extra), flush=True)
        versions = {"torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}
        log.header(**report.header_record(run, BACKEND, dev_name, d.world, peak, versions, pdesc),
                   attention=attention, kernels=list(trainer.kernels), resumed_from=last_ckpt)
        if ck is not None:
            log.event("resumed", iter=start, message=f"from {last_ckpt}")
    tl = TrainLoop(run, trainer, log, progress, stop, start=start, best=best, skipped=skipped,
                   last_ckpt=last_ckpt, peak=peak, n_devices=d.world)
    try:
        rc = tl.run()
    finally:
        log.close()
    if tl.completed and t.max_iters > 0 and t.sample_at_end:
        from modgpt_torch.sample import end_of_run_sample
        sample_model = P.full_model(trainer.raw, cfg.system.parallel, d, device)
        if d.is_main:
            text = end_of_run_sample(sample_model, cfg, device)
            if text is not None:
                print(f"sample (seed {t.seed}, temperature 0.8):\n{text}", flush=True)
        P.barrier(d)  # the other ranks wait for rank 0's sample instead of tearing the group down under it
    return rc


if __name__ == "__main__":
    P.run_main(main)  # not sys.exit(main()): see parallel.exit_process
