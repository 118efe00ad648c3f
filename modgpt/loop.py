"""Framework-free pieces of the training loop both backends share: lr schedule, run setup, the
startup report, progress output and the run log. Keeping them here keeps the backends' reports,
defaults and logs identical.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import time
from dataclasses import dataclass

from modgpt import config as C
from modgpt import data as D
from modgpt import flops as F
from modgpt import hardware as HW
from modgpt.io import RunLock, write_json
from modgpt.presets import resolve_auto_size
from modgpt.runlog import RunLog

CONFIG_NAME = "config.json"
MIN_FREE_BYTES = 64 << 20  # refuse to start with less free disk than this in out_dir


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


def padded_vocab(n: int) -> int:
    """Data vocab -> model vocab: BPE vocabularies are padded to a multiple of 64 (50257 -> 50304)."""
    return n if n <= 256 else 64 * math.ceil(n / 64)


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


class SetupError(RuntimeError):
    """A problem found before training starts; printed as one line, exit status 2."""


def ensure_data(cfg: C.Config, verbose: bool = True) -> str:
    """The dataset directory; shakespeare datasets are prepared automatically when missing."""
    from modgpt.prepare import DATASETS, prepare
    path = D.dataset_dir(cfg.train.data_dir, cfg.train.dataset)
    if not os.path.isfile(os.path.join(path, "meta.json")):
        if cfg.train.dataset in DATASETS and cfg.train.dataset != "text":
            if verbose:
                print(f"data: '{path}' not prepared yet; preparing {cfg.train.dataset} now", file=sys.stderr)
            prepare(cfg.train.dataset, data_dir=cfg.train.data_dir, progress=verbose)
        else:
            raise D.DataError(f"no prepared data for dataset '{cfg.train.dataset}' in '{path}'; run "
                              f"`python -m modgpt.prepare text --input FILE --data_dir {cfg.train.data_dir}` "
                              f"and move the result there, or pick --dataset=shakespeare_char")
    return path


def default_out_dir(backend: str, cfg: C.Config) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{stamp}-{backend}-{C.arch_name(cfg.model)}")


def check_writable(out_dir: str) -> None:
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write-probe-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as e:
        raise SetupError(f"out_dir '{out_dir}' is not writable ({e.strerror}); choose another --out_dir") from None
    free = shutil.disk_usage(out_dir).free
    if free < MIN_FREE_BYTES:
        raise SetupError(f"out_dir '{out_dir}' has only {free >> 20} MiB free; checkpoints need more "
                         f"(at least {MIN_FREE_BYTES >> 20} MiB); free space or choose another --out_dir")


def setup(args, backend: str, has_accelerator: bool, is_main: bool = True) -> Run:
    """Resolve size/vocab/data/out_dir for a training run; raises SetupError/DataError/ConfigError.

    For init_from=resume the out_dir must hold a config.json from the same backend; the saved
    architecture must equal the requested one (training options may change, e.g. max_iters).
    """
    cfg = args.config
    explicit = set(args.explicit)
    resume = cfg.train.init_from == "resume"
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
    else:
        cfg, reason = resolve_auto_size(cfg, explicit, has_accelerator)
    data_path = ensure_data(cfg, verbose=is_main) if is_main else D.dataset_dir(cfg.train.data_dir, cfg.train.dataset)
    meta = D.load_meta(data_path)
    if "vocab_size" not in explicit and not resume and not cfg.train.init_from.startswith("nanogpt:"):
        cfg = cfg.replace(vocab_size=padded_vocab(meta["vocab_size"]))
    if meta["vocab_size"] > cfg.model.vocab_size:
        raise D.DataError(f"the data's vocab_size {meta['vocab_size']} ({data_path}/meta.json) exceeds the "
                          f"model's vocab_size {cfg.model.vocab_size}; set --vocab_size={meta['vocab_size']}")
    if cfg.model.block_size + 2 > min(meta["train_tokens"], meta["val_tokens"]):
        raise D.DataError(f"block_size {cfg.model.block_size} is longer than the data's smaller split "
                          f"({min(meta['train_tokens'], meta['val_tokens'])} tokens)")
    out_dir = cfg.train.out_dir or default_out_dir(backend, cfg)
    cfg = cfg.replace(out_dir=out_dir)
    run = Run(cfg=cfg, data_path=data_path, meta=meta, out_dir=out_dir, size_reason=reason, resume=resume)
    if is_main:
        check_writable(out_dir)
        if not resume and os.path.isfile(os.path.join(out_dir, CONFIG_NAME)):
            raise SetupError(f"out_dir '{out_dir}' already holds a run; pass --init_from=resume to continue "
                             f"it or choose another --out_dir")
        try:
            run.lock = RunLock(out_dir).acquire()
        except RuntimeError as e:
            raise SetupError(str(e)) from None
        if not resume:
            write_json(os.path.join(out_dir, CONFIG_NAME), {**cfg.to_dict(), "backend": backend})
    return run


def check_backend(out_dir: str, backend: str) -> None:
    """Refuse to resume another backend's run (its checkpoint format differs)."""
    import json
    p = os.path.join(out_dir, CONFIG_NAME)
    with open(p) as f:
        saved = json.load(f).get("backend")
    if saved and saved != backend:
        other = "modgpt_jax" if saved == "jax" else "modgpt_torch"
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


def startup_report(run: Run, backend: str, device_name: str, n_devices: int, precision: str,
                   peak: float | None, parallel_desc: str, extra: dict | None = None) -> str:
    """The report both backends print before training."""
    cfg = run.cfg
    c = F.count(cfg.model)
    lines = [f"modgpt {backend} backend", C.summary_tree(cfg, c.params, c.flops_per_token)]
    rows = [
        ("size", run.size_reason),
        ("device", f"{device_name} x{n_devices}"),
        ("precision", precision),
        ("peak", f"{peak:g} TFLOP/s per device" if peak else "unknown (MFU not reported; set --peak_tflops)"),
        ("parallel", parallel_desc),
        ("tokens/iter", f"{tokens_per_iter(cfg):,} (batch {cfg.train.batch_size} x accum "
                        f"{cfg.train.gradient_accumulation_steps} x block {cfg.model.block_size})"),
        ("data", f"{run.data_path} ({run.meta['tokenizer']}, vocab {run.meta['vocab_size']}, "
                 f"{run.meta['train_tokens']:,} train tokens)"),
        ("schedule", f"{cfg.train.max_iters} iters, lr {cfg.train.learning_rate:g} -> {cfg.train.min_lr:g}, "
                     f"warmup {cfg.train.warmup_iters}"),
        ("out_dir", run.out_dir + ("  (resuming)" if run.resume else "")),
    ]
    rows += list((extra or {}).items())
    lines.append("TRAINING:")
    lines += [f"  {k + ':':<14}{v}" for k, v in rows]
    return "\n".join(lines)


def header_record(run: Run, backend: str, device_name: str, n_devices: int, peak: float | None,
                  versions: dict, parallel_desc: str) -> dict:
    c = F.count(run.cfg.model)
    return dict(backend=backend, config=run.cfg.to_dict(), arch_name=C.arch_name(run.cfg.model),
                params=c.params, flops_per_token=c.flops_per_token, device=device_name, n_devices=n_devices,
                peak_tflops=peak, dtype=run.cfg.train.dtype, parallel=parallel_desc,
                tokens_per_iter=tokens_per_iter(run.cfg), versions=versions, resumed=run.resume,
                pid=os.getpid())


def fmt_bytes(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 2**30:.2f}GiB" if n >= 2**30 else f"{n / 2**20:.0f}MiB"


class Progress:
    """Per-iteration output: a tqdm bar on a terminal, plain lines every log_interval otherwise."""

    def __init__(self, cfg: C.Config, start_iter: int, enabled: bool = True):
        self.cfg = cfg
        self.enabled = enabled
        self.bar = None
        if enabled and cfg.train.progress and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=cfg.train.max_iters, initial=start_iter, unit="it", dynamic_ncols=True)

    def step(self, it: int, stats: dict) -> None:
        """Called every iteration with at least loss (or None); prints on log intervals."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if stats.get("loss") is not None:
                self.bar.set_postfix_str(self.line(it, stats, short=True), refresh=False)
        elif stats.get("loss") is not None:
            print(self.line(it, stats), flush=True)

    def line(self, it: int, s: dict, short: bool = False) -> str:
        mfu = f"{100 * s['mfu']:.1f}%" if s.get("mfu") is not None else "-"
        parts = [f"iter {it}: loss {s['loss']:.4f}", f"lr {s['lr']:.2e}", f"{1000 * s['dt']:.0f}ms/it",
                 f"{s['tokens_per_sec']:,.0f} tok/s", f"mfu {mfu}"]
        if not short:
            parts += [f"mem {fmt_bytes(s.get('peak_mem_bytes'))}", f"gnorm {s['grad_norm']:.3f}"]
        return ", ".join(parts)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def eval_due(it: int, cfg: C.Config) -> bool:
    """Evaluate (and checkpoint) at every eval_interval and at the last iteration."""
    return it % cfg.train.eval_interval == 0 or it == cfg.train.max_iters


def iter_stats(cfg: C.Config, loss: float, lr: float, grad_norm: float, dt: float, peak: float | None,
               n_devices: int, peak_mem: int | None, tokens_seen: int, skipped: int) -> dict:
    tps = tokens_per_iter(cfg) / dt if dt > 0 else 0.0
    c = F.count(cfg.model)
    return dict(loss=loss, lr=lr, grad_norm=grad_norm, dt=dt, tokens_per_sec=tps,
                mfu=HW.mfu(c.flops_per_token, tps, peak, n_devices), peak_mem_bytes=peak_mem,
                tokens_seen=tokens_seen, skipped_steps=skipped)


def open_log(run: Run, enabled: bool) -> RunLog:
    return RunLog(run.out_dir, enabled=enabled)


def resume_hint(backend: str, out_dir: str) -> str:
    mod = "modgpt_jax" if backend == "jax" else "modgpt_torch"
    return f"resume with: python -m {mod}.train --init_from=resume --out_dir={out_dir}"
