"""Framework-free pieces of the training loop both backends share: the lr schedule, run setup and its
checks, when to evaluate and log, and the run log (what a run prints: modgpt.report). Keeping them
here keeps the backends' defaults, refusals and logs identical.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

from modgpt import config as C
from modgpt import data as D
from modgpt import flops as F
from modgpt import hardware as HW
from modgpt import io
from modgpt import memory as MEM
from modgpt.memory import fmt_bytes
from modgpt.io import RunLock, write_json
from modgpt.presets import SCHEDULE_KEYS
from modgpt.resolve import data_vocab, resolve_auto_size, resolve_schedule
from modgpt.runlog import RunLog

CONFIG_NAME = "config.json"
MARGIN_BYTES = 16 << 20  # free space kept beyond the checkpoints (logs, config, filesystem slack)


def lr_at(it: int, t: C.TrainConfig) -> float:
    """Linear warmup then cosine decay to min_lr (nanoGPT's schedule); `it` counts from 0."""
    if it < t.warmup_iters:
        return t.learning_rate * (it + 1) / (t.warmup_iters + 1)
    if it > t.lr_decay_iters:
        return t.min_lr
    span = max(1, t.lr_decay_iters - t.warmup_iters)
    ratio = (it - t.warmup_iters) / span
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return t.min_lr + coeff * (t.learning_rate - t.min_lr)


@dataclass
class Run:
    """What setup() resolved: the final config and where things live."""
    cfg: C.Config
    data_path: str
    meta: dict
    out_dir: str
    size_reason: str
    resume: bool
    lock: RunLock | None = None
    is_main: bool = True
    backend: str = ""
    committed: bool = False
    saved: C.Config | None = None  # resume: the run's config as saved in its config.json
    schedule: dict | None = None  # where max_iters, warmup_iters and lr_decay_iters came from, in words
    tasks: dict | None = None  # --eval_tasks: name -> items, read and checked before training starts


class SetupError(RuntimeError):
    """A problem found before training starts; printed as one line, exit status 2."""


def load_eval_tasks(cfg: C.Config, data_path: str, meta: dict) -> dict | None:
    """--eval_tasks: each task's items, read (downloaded once) and encoded with the run's tokenizer
    now, so that a missing file or an unencodable item stops the run before it starts."""
    t = cfg.train
    names = [x.strip() for x in t.eval_tasks.split(",") if x.strip()]
    if not names:
        return None
    from modgpt import evaluate as E
    from modgpt import tasks as TK
    tok = D.get_tokenizer(meta, data_path)
    out = {}
    for name in names:
        items = E.load_items(name, t.eval_tasks_input or None, cfg, t.eval_tasks_limit or None)
        TK.requests(items, tok.encode, cfg.model.block_size, skip_unencodable=False)
        out[name] = items
    return out


def ensure_data(cfg: C.Config, verbose: bool = True) -> str:
    """The dataset directory; shakespeare datasets are prepared automatically when missing."""
    from modgpt.prepare import prepare
    path = D.dataset_dir(cfg.train.data_dir, cfg.train.dataset)
    if not os.path.isfile(os.path.join(path, "meta.json")):
        # Tiny Shakespeare takes seconds; a web corpus takes hours and is prepared on purpose
        if cfg.train.dataset in ("shakespeare_char", "shakespeare"):
            if verbose:  # stdout: stderr is kept for the one-line error if preparing fails
                print(f"data: '{path}' not prepared yet; preparing {cfg.train.dataset} now", flush=True)
            prepare(cfg.train.dataset, data_dir=cfg.train.data_dir, progress=verbose)
        else:
            raise D.DataError(f"no prepared data for dataset '{cfg.train.dataset}' in '{path}'; run "
                              f"`{D.prepare_command(path)}`, or pick --dataset=shakespeare_char")
    return path


def default_out_dir(backend: str, cfg: C.Config) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{stamp}-{backend}-{C.arch_name(cfg.model)}")


def checkpoint_bytes(cfg: C.Config) -> int:
    """Estimated size of one checkpoint: float32 weights plus AdamW's two moments, plus slack."""
    return 12 * F.count(cfg.model).params + (1 << 20)


def dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def check_writable(out_dir: str, cfg: C.Config | None = None) -> None:
    """Refuse early when out_dir cannot be written or the disk cannot hold the run's checkpoints.

    Creates nothing (the probe file is removed; out_dir itself is made only by commit()). The
    space needed is keep_checkpoints + 1 checkpoints (a new one is written before the oldest is
    dropped), less what out_dir already holds, plus a margin.
    """
    try:
        io.probe_writable(out_dir)
    except OSError as e:
        why = e.strerror or type(e).__name__
        at = os.path.abspath(str(e.filename)) if e.filename else None
        where = f" at '{e.filename}'" if at and at != os.path.abspath(out_dir) else ""
        raise SetupError(f"out_dir '{out_dir}' is not writable ({why}{where}); choose another --out_dir") from None
    if cfg is None:
        return
    one = checkpoint_bytes(cfg)
    need = max(one, (cfg.train.keep_checkpoints + 1) * one - dir_bytes(out_dir)) + MARGIN_BYTES
    free = io.free_bytes(out_dir)
    if free < need:
        raise SetupError(f"out_dir '{out_dir}' has {free / 2**20:.1f} MiB free but the run needs about "
                         f"{need / 2**20:.1f} MiB ({cfg.train.keep_checkpoints} checkpoints of "
                         f"~{one / 2**20:.1f} MiB + one being written); free space, lower "
                         f"--keep_checkpoints or choose another --out_dir")


def host_available_bytes() -> int | None:
    """The host memory available to a new allocation (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(cfg: C.Config, backend: str, n_devices: int, capacity: int | None, where: str) -> None:
    """Refuse, before anything is built, a run whose memory floor (modgpt.memory: a lower bound) is
    larger than each device's memory: it could only fail later, after compilation, with an
    out-of-memory error. capacity: bytes per device (None: unknown, no check); where: the device in
    words. MODGPT_MEMORY_CHECK=0 turns the check off."""
    if not capacity or os.environ.get("MODGPT_MEMORY_CHECK", "1") == "0":
        return
    e = MEM.for_run(cfg, backend, n_devices)
    if e.total <= capacity:
        return
    hint = "lower --batch_size (raise --gradient_accumulation_steps to keep the tokens per step)"
    if backend == "jax" and not e.remat:
        hint += ", or add --remat=True"
    raise SetupError(f"this run needs at least {fmt_bytes(e.total)} per device (weights, gradients and AdamW "
                     f"state {fmt_bytes(e.state)}, activations {fmt_bytes(e.activations)}; python -m modgpt.memory)"
                     f" but {where} has {fmt_bytes(capacity)}: {hint}; MODGPT_MEMORY_CHECK=0 tries anyway")


def setup(args, backend: str, has_accelerator: bool, is_main: bool = True, write: bool = True) -> Run:
    """Resolve size/vocab/data/out_dir for a training run; raises SetupError/DataError/ConfigError.

    For init_from=resume the out_dir must hold a config.json from the same backend; the saved
    architecture must equal the requested one (training options may change, e.g. max_iters).
    Everything checkable (data files, out_dir writable and free, not locked by a live run) is
    checked before anything is written. With write=False nothing is written at all: the backend
    then loads its checkpoint / init weights (which can still fail) and calls commit(run), which
    creates out_dir, takes the lock and writes config.json.
    """
    cfg = args.config
    explicit = set(args.explicit)
    resume = cfg.train.init_from == "resume"
    saved = None
    if resume:
        if not cfg.train.out_dir:
            raise SetupError("init_from=resume needs --out_dir=RUN_DIR (the run to continue)")
        saved_path = os.path.join(cfg.train.out_dir, CONFIG_NAME)
        if not os.path.isfile(saved_path):
            raise SetupError(f"cannot resume: '{saved_path}' not found (no run in that out_dir)")
        saved = read_saved_config(saved_path)
        # The saved run fixes the architecture; keys given now override training options only.
        flat = C.to_flat(saved)
        for k in explicit:
            flat[k] = getattr(getattr(cfg, C.KEY_SECTION[k]), k)
        cfg = C.from_flat({**flat, "init_from": "resume", "out_dir": cfg.train.out_dir})
        if cfg.model != saved.model:
            diff = [k for k in C.to_flat(saved) if C.KEY_SECTION[k] == "model"
                    and getattr(saved.model, k) != getattr(cfg.model, k)]
            raise SetupError(f"cannot resume with a different architecture: {diff[0]}="
                             f"{getattr(cfg.model, diff[0])!r} but the checkpoint has "
                             f"{getattr(saved.model, diff[0])!r}")
        reason = f"size from the resumed run ({C.arch_name(cfg.model)})"
        budget: set[str] = set()
    else:
        cfg, reason, budget = resolve_auto_size(cfg, explicit, has_accelerator)
    origin = {k: args.origin(k) or ("CPU budget" if k in budget else "the resumed run" if resume else "default")
              for k in SCHEDULE_KEYS}
    cfg, schedule = resolve_schedule(cfg, explicit, origin, follow=not resume)
    if is_main:  # a tracker that cannot start is refused before data or out_dir are touched
        from modgpt import track
        track.check(cfg)
    data_path = ensure_data(cfg, verbose=is_main) if is_main else D.dataset_dir(cfg.train.data_dir, cfg.train.dataset)
    meta = D.load_meta(data_path)
    for split in D.SPLITS:  # a truncated .bin is refused here, before out_dir is touched
        D.open_split(data_path, split, meta)
    cfg = data_vocab(cfg, explicit, resume, meta["vocab_size"])
    if meta["vocab_size"] > cfg.model.vocab_size:
        raise D.DataError(f"the data's vocab_size {meta['vocab_size']} ({data_path}/meta.json) exceeds the "
                          f"model's vocab_size {cfg.model.vocab_size}; set --vocab_size={meta['vocab_size']}")
    if cfg.model.block_size + 2 > min(meta["train_tokens"], meta["val_tokens"]):
        raise D.DataError(f"block_size {cfg.model.block_size} is longer than the data's smaller split "
                          f"({min(meta['train_tokens'], meta['val_tokens'])} tokens)")
    tasks = load_eval_tasks(cfg, data_path, meta)
    out_dir = cfg.train.out_dir or default_out_dir(backend, cfg)
    cfg = cfg.replace(out_dir=out_dir)
    run = Run(cfg=cfg, data_path=data_path, meta=meta, out_dir=out_dir, size_reason=reason, resume=resume,
              is_main=is_main, backend=backend, saved=saved, schedule=schedule, tasks=tasks)
    if is_main:
        holder = io.lock_holder(out_dir)
        if holder is not None:
            raise SetupError(io.in_use_message(out_dir, holder))
        check_fresh(run)
        check_writable(out_dir, cfg)
        if write:
            commit(run)
    return run


def check_resume_point(run: Run, ckpt_iter: int | None, ckpt: str | None) -> None:
    """Refuse to resume from a checkpoint beyond max_iters: the loop only stops at max_iters, so it
    would train on without end (or report iterations it never ran)."""
    if ckpt_iter is None or ckpt_iter <= run.cfg.train.max_iters:
        return
    own = run.saved.train.max_iters if run.saved is not None else 0
    what = (f"--max_iters={own} (the run's own) or any value >= {ckpt_iter}" if own >= ckpt_iter
            else f"--max_iters={ckpt_iter} or more")
    raise SetupError(f"cannot resume: the latest checkpoint ({ckpt}) is at iteration {ckpt_iter}, past "
                     f"--max_iters={run.cfg.train.max_iters}; pass {what} to train on")


def check_fresh(run: Run) -> None:
    if not run.resume and os.path.isfile(os.path.join(run.out_dir, CONFIG_NAME)):
        raise SetupError(f"out_dir '{run.out_dir}' already holds a run; pass --init_from=resume to continue "
                         f"it or choose another --out_dir")


def commit(run: Run) -> None:
    """The first write of a run: create out_dir, take its lock, write config.json (fresh runs).

    Re-checks under the lock, so two runs started at once cannot both get past setup().
    No-op on non-main processes and when already committed.
    """
    if not run.is_main or run.committed:
        return
    try:
        os.makedirs(run.out_dir, exist_ok=True)
        run.lock = RunLock(run.out_dir).acquire()
    except RuntimeError as e:
        raise SetupError(str(e)) from None
    except OSError as e:
        raise SetupError(f"out_dir '{run.out_dir}' is not writable ({e.strerror}); "
                         f"choose another --out_dir") from None
    try:
        check_fresh(run)
        if not run.resume:
            write_json(os.path.join(run.out_dir, CONFIG_NAME), {**run.cfg.to_dict(), "backend": run.backend})
    except BaseException:
        run.lock.release()
        run.lock = None
        raise
    run.committed = True


def check_backend(out_dir: str, backend: str, reading: bool = False) -> None:
    """Refuse another backend's run (its checkpoint format differs), naming the command that reads it:
    the other trainer to resume it, or with reading=True (sample, export) the other sampler/exporter.
    A missing or unreadable config.json is left to the caller's own checks."""
    import json
    try:
        with open(os.path.join(out_dir, CONFIG_NAME)) as f:
            saved = json.load(f).get("backend")
    except (OSError, ValueError, AttributeError):
        return
    if saved and saved != backend:
        other = "modgpt_jax" if saved == "jax" else "modgpt_torch"
        if reading:
            raise SetupError(f"out_dir '{out_dir}' holds a {saved} run; sample it with `python -m {other}.sample "
                             f"--out_dir={out_dir}` (or export it with `python -m {other}.export`)")
        raise SetupError(f"out_dir '{out_dir}' holds a {saved} run; resume it with `python -m {other}.train "
                         f"--init_from=resume --out_dir={out_dir}`, or export it and use --init_from=FILE.safetensors")


def read_saved_config(path: str) -> C.Config:
    """A run's config.json (which also records the backend) as a Config."""
    import json
    with open(path) as f:
        d = json.load(f)
    d.pop("backend", None)
    return C.from_dict(d)


def tokens_per_iter(cfg: C.Config) -> int:
    t = cfg.train
    return t.batch_size * t.gradient_accumulation_steps * cfg.model.block_size


def eval_due(it: int, cfg: C.Config) -> bool:
    """Evaluate (and checkpoint) at every eval_interval and at the last iteration; never when
    eval_interval is 0."""
    every = cfg.train.eval_interval
    return every > 0 and (it % every == 0 or it == cfg.train.max_iters)


def log_due(it: int, cfg: C.Config) -> bool:
    """Log (and print) iteration `it`: every log_interval and the last one."""
    return it % cfg.train.log_interval == 0 or it == cfg.train.max_iters - 1


def iter_stats(cfg: C.Config, loss: float, lr: float, grad_norm: float, dt: float, peak: float | None,
               n_devices: int, peak_mem: int | None, tokens_seen: int, skipped: int) -> dict:
    tps = tokens_per_iter(cfg) / dt if dt > 0 else 0.0
    c = F.count(cfg.model)
    return dict(loss=loss, lr=lr, grad_norm=grad_norm, dt=dt, tokens_per_sec=tps,
                mfu=HW.mfu(c.flops_per_token, tps, peak, n_devices), peak_mem_bytes=peak_mem,
                tokens_seen=tokens_seen, skipped_steps=skipped)


def open_log(run: Run, enabled: bool) -> RunLog:
    """The run log, with the trackers the run asks for (modgpt.track) on the process that writes it."""
    sinks = []
    if enabled and (run.cfg.train.wandb or run.cfg.train.tensorboard):
        from modgpt import track
        sinks = track.open_sinks(run)
    return RunLog(run.out_dir, enabled=enabled, sinks=sinks)


