"""python -m modgpt_torch.train [CONFIG_FILE] [--preset NAME] [--key=value ...]

Single process on CPU/GPU, or under torchrun with parallel=ddp|zero1|fsdp. The loop follows
docs/backend_contract.md: for it = start..max_iters: evaluate+checkpoint when due, stop at
max_iters, else one optimizer step with lr_at(it).
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time

import numpy as np
import torch

from modgpt import cli, loop
from modgpt import config as C
from modgpt import data as D
from modgpt import hardware as HW
from modgpt import weights as W
from modgpt.presets import SIZE_KEYS
from modgpt_torch import checkpoint as CK
from modgpt_torch import parallel as P
from modgpt_torch.model import ConfigurableGPT
from modgpt_torch.weights import (load_canonical, nanogpt_model_config, nanogpt_to_canonical,
                                  read_nanogpt)

BACKEND = "torch"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SETUP_ERRORS = (C.ConfigError, D.DataError, loop.SetupError, CK.CheckpointError, FileNotFoundError,
                ValueError)


def pick_device(cfg: C.Config, d: P.Dist) -> torch.device:
    want = cfg.system.device
    if want in ("cuda", "gpu") or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise loop.SetupError(f"device={want} but no CUDA device is available; use --device=cpu")
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def preload_init_source(args) -> dict | None:
    """For nanogpt:/safetensors init, fix the architecture before setup; returns what to load."""
    init = args.config.train.init_from
    if init.startswith("nanogpt:"):
        margs, state = read_nanogpt(init[len("nanogpt:"):])
        flat = nanogpt_model_config(margs)
        args.config = args.config.replace(**flat)
        args.explicit |= set(flat)
        return {"kind": "nanogpt", "state": state}
    if init.endswith(".safetensors"):
        tensors, fcfg = W.load(init)
        if not (args.explicit & set(SIZE_KEYS)):  # the file's config decides the architecture
            flat = {k: getattr(fcfg.model, k) for k in C.to_flat(fcfg) if C.KEY_SECTION[k] == "model"}
            args.config = args.config.replace(**flat)
            args.explicit |= set(flat)
        elif "vocab_size" not in args.explicit:
            args.config = args.config.replace(vocab_size=fcfg.model.vocab_size)
            args.explicit.add("vocab_size")
        # refuse before setup writes anything into out_dir
        check_same_arch(args.config.model, fcfg.model, init)
        return {"kind": "safetensors", "tensors": tensors, "model": fcfg.model}
    return None


def check_same_arch(want: C.ModelConfig, got: C.ModelConfig, source: str) -> None:
    diff = [k for k in C.to_flat(C.Config(model=want)) if C.KEY_SECTION[k] == "model"
            and getattr(want, k) != getattr(got, k)]
    if diff:
        raise loop.SetupError(f"{source} has {diff[0]}={getattr(got, diff[0])!r} but the run asks for "
                              f"{getattr(want, diff[0])!r}; drop the conflicting option")


def do_setup(args, d: P.Dist):
    """Resolve the run on rank 0 first (it writes config.json and takes the lock), then the others."""
    init = args.config.train.init_from
    out_dir = args.config.train.out_dir
    if init == "resume" and out_dir and os.path.isfile(os.path.join(out_dir, loop.CONFIG_NAME)):
        loop.check_backend(out_dir, BACKEND)
    source = preload_init_source(args)
    has_acc = torch.cuda.is_available()
    err = None
    run = None
    if d.is_main:
        try:
            run = loop.setup(args, BACKEND, has_accelerator=has_acc, is_main=True)
        except SETUP_ERRORS as e:
            err = e
    if P.any_flag(d, err is not None, torch.device("cpu") if not has_acc else torch.device("cuda", d.local_rank)):
        if err is None:
            raise SystemExit(2)  # rank 0 reports
        raise err
    if not d.is_main:
        if args.config.train.out_dir == "":  # follow rank 0's generated out_dir
            raise loop.SetupError("set --out_dir under torchrun so every rank writes the same run")
        run = loop.setup(args, BACKEND, has_accelerator=has_acc, is_main=False)
    if source is not None and source["kind"] == "safetensors":
        check_same_arch(run.cfg.model, source["model"], init)
    return run, source


class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checkpoints and exits at the next step boundary."""

    def __init__(self):
        self.set = False
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        if self.set and signum == signal.SIGINT:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.set = True


def peak_memory(device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    except Exception:
        return None


def param_groups(model, weight_decay: float) -> list[dict]:
    """Decay on matrices and embeddings (ndim >= 2) only; norms and biases excluded."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def main(argv=None) -> int:
    args = cli.parse(argv, prog="python -m modgpt_torch.train")
    mode = args.config.system.parallel
    d = P.Dist()
    try:
        dev_type = "cuda" if (args.config.system.device in ("cuda", "gpu") or
                              (args.config.system.device == "auto" and torch.cuda.is_available())) else "cpu"
        d = P.init(dev_type)
        device = pick_device(args.config, d)
        run, source = do_setup(args, d)
    except SETUP_ERRORS as e:
        if d.is_main:
            print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        P.shutdown(d)
        return 2
    try:
        return train(run, source, d, device, mode)
    finally:
        if run.lock is not None:
            run.lock.release()
        P.shutdown(d)


def train(run, source, d: P.Dist, device, mode: str) -> int:
    cfg = run.cfg
    t = cfg.train
    torch.manual_seed(t.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = ConfigurableGPT(cfg.model)  # same init on every rank (same seed, built on CPU)
    ck = None
    if run.resume:
        ck = CK.load_latest(run.out_dir)
        model.load_state_dict(ck["model"])
    elif source is not None and source["kind"] == "nanogpt":
        load_canonical(model, nanogpt_to_canonical(source["state"], cfg.model))
    elif source is not None:
        load_canonical(model, source["tensors"])
    model.to(device)
    raw = model
    wrapped = P.wrap(model, mode, d, device)
    opt = P.make_optimizer(param_groups(raw, t.weight_decay), mode, lr=t.learning_rate,
                           betas=(t.beta1, t.beta2), eps=t.adam_eps,
                           **({"fused": True} if device.type == "cuda" else {}))
    scaler = torch.amp.GradScaler(device.type, enabled=t.dtype == "float16")
    start, best_val, tokens_seen, skipped, last_ckpt = 0, float("inf"), 0, 0, None
    if ck is not None:
        P.load_optimizer(raw, opt, ck["optimizer"], mode)
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        CK.set_rng_state(ck["rng"])
        start, best_val = ck["iter"], ck.get("best_val_loss", float("inf"))
        tokens_seen, skipped = ck.get("tokens_seen", 0), ck.get("skipped_steps", 0)
        last_ckpt = CK.latest(run.out_dir)
    else:
        torch.manual_seed(t.seed + d.rank)  # dropout masks differ per rank
    step_model = torch.compile(wrapped) if t.compile else wrapped
    autocast = (torch.autocast(device.type, dtype=DTYPES[t.dtype]) if t.dtype != "float32"
                else contextlib.nullcontext())
    sampler = D.BatchSampler(run.data_path, cfg.model.block_size, t.batch_size, t.seed,
                             vocab_size=cfg.model.vocab_size, rank=d.rank, world=d.world)

    def batch(split, it, micro=0):
        x, y = sampler.get(split, it, micro)
        x, y = torch.from_numpy(x).to(device, non_blocking=True), torch.from_numpy(y).to(device, non_blocking=True)
        return x, y

    # -- report, log header ---------------------------------------------------------------------
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    precision = t.dtype + (" (TF32 matmuls)" if device.type == "cuda" and t.dtype == "float32" else "")
    peak_dtype = "tf32" if device.type == "cuda" and t.dtype == "float32" else t.dtype
    peak = HW.peak_tflops(dev_name, peak_dtype, cfg.system.peak_tflops)
    pdesc = P.describe(mode, d)
    log = loop.open_log(run, enabled=d.is_main)
    progress = loop.Progress(cfg, start, enabled=d.is_main)
    if d.is_main:
        extra = {"compile": "torch.compile" if t.compile else "eager", "init": t.init_from}
        print(loop.startup_report(run, BACKEND, dev_name, d.world, precision, peak, pdesc, extra), flush=True)
        versions = {"torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}
        log.header(**loop.header_record(run, BACKEND, dev_name, d.world, peak, versions, pdesc),
                   resumed_from=last_ckpt)
        if ck is not None:
            log.event("resumed", iter=start, message=f"from {last_ckpt}")

    @torch.no_grad()
    def evaluate() -> dict:
        step_model.eval()
        out = {}
        for split in ("train", "val"):
            tot = 0.0
            for k in range(t.eval_iters):
                x, y = batch(split, 10**9 + k)
                with autocast:
                    tot += step_model(x, y)[1].item()
            out[split] = P.mean(d, tot / t.eval_iters, device)
        step_model.train()
        return out

    def save(it: int) -> str | None:
        msd, osd = P.full_state(raw, opt, mode, d)
        path = None
        if d.is_main:
            state = dict(model=msd, optimizer=osd, iter=it, config=cfg.to_dict(), backend=BACKEND,
                         parallel=mode, sampler=sampler.state(), rng=CK.rng_state(), best_val_loss=best_val,
                         scaler=scaler.state_dict(), tokens_seen=tokens_seen, skipped_steps=skipped)
            path = CK.save(run.out_dir, state, t.keep_checkpoints)
            log.event("checkpoint", iter=it, message=path)
        P.barrier(d)
        return path

    stop = StopFlag()
    params = [p for p in raw.parameters()]
    accum = t.gradient_accumulation_steps
    clip = t.grad_clip if t.grad_clip > 0 else float("inf")  # inf: scale clamps to exactly 1
    it = start
    try:
        while True:
            if loop.eval_due(it, cfg):
                ev = evaluate()
                best_val = min(best_val, ev["val"])
                if d.is_main:
                    log.eval(iter=it, train_loss=ev["train"], val_loss=ev["val"], tokens_seen=tokens_seen)
                    progress.message(f"eval {it}: train loss {ev['train']:.4f}, val loss {ev['val']:.4f}")
                if not (run.resume and it == start):
                    last_ckpt = save(it) or last_ckpt
            if it == t.max_iters:
                break
            if P.any_flag(d, stop.set, device):
                if not (loop.eval_due(it, cfg) and not (run.resume and it == start)):
                    last_ckpt = save(it) or last_ckpt
                if d.is_main:
                    log.end("interrupted", iter=it, best_val_loss=best_val, message="stopped by signal")
                    progress.close()
                    print(f"interrupted at iteration {it}; checkpoint {last_ckpt}; "
                          f"{loop.resume_hint(BACKEND, run.out_dir)}", flush=True)
                return 0
            t0 = time.time()
            lr = loop.lr_at(it, t)
            for g in opt.param_groups:
                g["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(accum):
                x, y = batch("train", it, micro)
                with P.no_sync(wrapped, mode, micro == accum - 1):
                    with autocast:
                        _, loss = step_model(x, y)
                        loss = loss / accum
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()
            scaler.unscale_(opt)
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
            # fp16: inf grads are the scaler's business (it skips the step and lowers the scale)
            finite = torch.isfinite(loss_sum) & (torch.isfinite(norm) | torch.tensor(scaler.is_enabled()))
            if not bool(finite.item()):
                if not t.skip_nonfinite:
                    msg = (f"non-finite loss or gradient norm at iteration {it} (loss {loss_sum.item()}, "
                           f"grad norm {norm.item()}); last good checkpoint: {last_ckpt or 'none'}; "
                           f"lower learning_rate or set --skip_nonfinite=True")
                    if d.is_main:
                        log.end("failed", iter=it, best_val_loss=best_val, message=msg)
                        progress.close()
                        print(f"error: {msg}", file=sys.stderr, flush=True)
                    return 1
                skipped += 1
                opt.zero_grad(set_to_none=True)
                if d.is_main:
                    log.event("skipped_step", iter=it, message=f"non-finite loss/grad norm; {skipped} skipped")
            else:
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
            tokens_seen += loop.tokens_per_iter(cfg)
            stats = {"loss": None}
            if it % t.log_interval == 0 or it == t.max_iters - 1:
                lossf = P.mean(d, loss_sum.item(), device)
                dt = time.time() - t0
                stats = loop.iter_stats(cfg, lossf, lr, float(norm.item()), dt, peak, d.world,
                                        peak_memory(device), tokens_seen, skipped)
                if d.is_main:
                    log.iter(iter=it, **stats)
            progress.step(it, stats)
            it += 1
    except Exception as e:
        if d.is_main:
            log.end("failed", iter=it, best_val_loss=best_val, message=f"{type(e).__name__}: {e}")
        raise
    progress.close()
    if d.is_main:
        log.end("completed", iter=it, best_val_loss=best_val if math.isfinite(best_val) else None,
                message=f"checkpoint {last_ckpt}")
        print(f"done: {it} iterations, best val loss {best_val:.4f}, checkpoint {last_ckpt}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
