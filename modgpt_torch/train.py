"""python -m modgpt_torch.train [CONFIG_FILE] [--preset NAME] [--key=value ...]

Single process on CPU/GPU, or under torchrun with parallel=ddp|zero1|fsdp. The loop follows
docs/backend_contract.md: for it = start..max_iters: evaluate+checkpoint when due, stop at
max_iters, else one optimizer step with lr_at(it).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time

from modgpt import cli, hostmem

PROG = "python -m modgpt_torch.train"
# Run as a script: parse the command line before importing torch (~3 s), so a typo fails at once.
PREPARSED = cli.parse(None, prog=PROG) if __name__ == "__main__" else None
if __name__ == "__main__":
    hostmem.keep_freed_blocks(PREPARSED.config.system.device)  # before torch starts its threads (modgpt/hostmem.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from modgpt import initfrom, io, loop, report  # noqa: E402
from modgpt.stopflag import StopFlag  # noqa: E402
from modgpt import config as C  # noqa: E402
from modgpt import data as D  # noqa: E402
from modgpt import hardware as HW  # noqa: E402
from modgpt_torch import checkpoint as CK  # noqa: E402
from modgpt_torch import kernels as K  # noqa: E402
from modgpt_torch import parallel as P  # noqa: E402
from modgpt_torch.model import GPT  # noqa: E402
from modgpt_torch.weights import load_canonical  # noqa: E402

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


class Step:
    """A launched optimizer step: its iteration, lr, when its host work began, the tokens seen after
    it, and its loss, gradient norm and finiteness on their way to the host. On a GPU those three are
    copied into pinned memory and an event is recorded right behind the step, so reading them
    later (read()) waits for this step only, not for the steps launched after it; elsewhere the
    step has finished by the time it is made."""

    def __init__(self, it: int, loss_sum, norm, finite, lr: float, began: float, tokens: int):
        self.it, self.lr, self.began, self.tokens = it, lr, began, tokens
        dtype = torch.float32 if loss_sum.device.type == "cuda" else torch.float64
        self.host, self.event = P.to_host(torch.stack([x.to(dtype) for x in (loss_sum, norm, finite)]), timing=True)
        self.done_at = None if self.event is not None else time.time()

    def read(self) -> tuple[float, float, bool]:
        """(loss summed over micro steps, gradient norm, finite), waiting for the step."""
        if self.event is not None:
            self.event.synchronize()
            self.done_at = time.time()
        loss, norm, finite = self.host.tolist()
        return loss, norm, finite == 1.0

    def seconds(self, prev: "Step | None", last_done: float) -> float:
        """The step's time: from the previous step's completion when that was still pending as this
        one was launched (prev), measured on the device's clock; else from its own host work or the
        previous step's read (last_done), whichever came later."""
        if prev is None:
            return self.done_at - max(self.began, last_done)
        if self.event is not None:
            return prev.event.elapsed_time(self.event) / 1000
        return self.done_at - prev.done_at


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def device_capacity(device, d: P.Dist) -> tuple[int | None, str]:
    """(bytes per process, the device in words) for loop.check_memory: the GPU's memory, or on the CPU
    the host's available memory shared by the processes on it (torchrun's local world size)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return props.total_memory, f"a {props.name}"
    avail = loop.host_available_bytes()
    n = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return (None if avail is None else avail // n), ("the host" if n == 1 else f"each of the host's {n} processes")


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
    args = PREPARSED if argv is None and PREPARSED is not None else cli.parse(argv, prog=PROG)
    hostmem.keep_freed_blocks(args.config.system.device)
    mode = args.config.system.parallel
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
        return train(run, model, ck, stop, d, device, mode)
    finally:
        if run.lock is not None:
            run.lock.release()
        P.shutdown(d)


def train(run, model, ck, stop: StopFlag, d: P.Dist, device, mode: str) -> int:
    cfg = run.cfg
    t = cfg.train
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model.to(device)
    kernels = K.apply_kernels(model, cfg, device.type)  # --kernels: swapped in once, before wrapping
    raw = model
    wrapped = P.wrap(model, mode, d, device)
    scaler = torch.amp.GradScaler(device.type, enabled=t.dtype == "float16")
    # One step in flight where the optimizer can skip a non-finite update by itself (fused AdamW's
    # found_inf, the flag GradScaler uses): step it's finiteness is then read after step it+1 is
    # launched, and the host never makes the device wait between steps (docs/performance.md).
    # ZeRO-1 and FSDP (sharded optimizer state) and fp16 (GradScaler owns found_inf) read it at once.
    deferred = mode in ("none", "ddp") and not scaler.is_enabled()
    opt = P.make_optimizer(param_groups(raw, t.weight_decay), mode, lr=t.learning_rate,
                           betas=(t.beta1, t.beta2), eps=t.adam_eps,
                           **({"fused": True} if device.type == "cuda" or deferred else {}))
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
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        if device.type == "cuda":  # from pinned memory the copy is asynchronous; from pageable memory
            x, y = x.pin_memory(), y.pin_memory()  # it may wait for the stream (the step in flight)
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    # -- report, log header ---------------------------------------------------------------------
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    precision = t.dtype + (" (TF32 matmuls)" if device.type == "cuda" and t.dtype == "float32" else "")
    peak_dtype = "tf32" if device.type == "cuda" and t.dtype == "float32" else t.dtype
    peak = HW.peak_tflops(dev_name, peak_dtype, cfg.system.peak_tflops)
    pdesc = P.describe(mode, d)
    log = loop.open_log(run, enabled=d.is_main)
    progress = report.Progress(cfg, start, enabled=d.is_main)
    if d.is_main:
        attention = K.describe_attention(cfg.model, DTYPES[t.dtype], device)
        extra = {"compile": "torch.compile" if t.compile else "eager", "init": t.init_from,
                 "kernels": K.describe(kernels, device.type), "attention": attention,
                 "host malloc": hostmem.keep_freed_blocks()}
        print(report.startup_report(run, BACKEND, dev_name, d.world, precision, peak, pdesc, extra), flush=True)
        versions = {"torch": torch.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}
        log.header(**report.header_record(run, BACKEND, dev_name, d.world, peak, versions, pdesc),
                   attention=attention, kernels=list(kernels), resumed_from=last_ckpt)
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

    class SaveFailed(Exception):
        """A checkpoint write failed (disk full, I/O error); every rank stops."""

    def save(it: int) -> None:
        nonlocal last_ckpt
        msd, osd = P.full_state(raw, opt, mode, d)
        err = None
        if d.is_main:
            state = dict(model=msd, optimizer=osd, iter=it, config=cfg.to_dict(), backend=BACKEND,
                         parallel=mode, sampler=sampler.state(), rng=CK.rng_state(), best_val_loss=best_val,
                         scaler=scaler.state_dict(), tokens_seen=tokens_seen, skipped_steps=skipped)
            try:
                last_ckpt = CK.save(run.out_dir, state, t.keep_checkpoints)
                log.event("checkpoint", iter=it, message=last_ckpt)
            except Exception as e:  # noqa: BLE001 - ENOSPC arrives as OSError or torch's RuntimeError
                err = e
        if P.any_flag(d, err is not None, device):  # also the barrier after the save
            msg = report.save_failed_message(it, err, last_ckpt, BACKEND, run.out_dir) if err else ""
            raise SaveFailed(msg)

    params = [p for p in raw.parameters()]
    accum = t.gradient_accumulation_steps
    clip = t.grad_clip if t.grad_clip > 0 else float("inf")  # inf: scale clamps to exactly 1
    it = start
    saved_at = start if ck is not None else None  # the iteration of the newest checkpoint on disk

    def on_abort(signame: str) -> str:  # a second signal: drop a save in progress, end the log
        msg = report.aborted_message(signame, it, last_ckpt, BACKEND, run.out_dir)
        if d.is_main:
            CK.remove_stale_temps(run.out_dir)
            log.end("interrupted", iter=it, best_val_loss=finite_or_none(best_val), message=msg)
        return msg
    stop.on_abort = on_abort
    vote = P.StopVote(d, device)
    last_done = 0.0  # when the previous step's metrics were read

    pending = None  # deferred: the launched step whose metrics are not read yet (a Step)
    overlapped = None  # the step that was still pending when `pending` was launched

    def finish(s: Step, prev: Step | None) -> bool:
        """Read a step's metrics (waiting for it), count or refuse it if non-finite, log it. prev: the
        step still in flight when s was launched. False: non-finite without --skip_nonfinite; the
        failure is recorded and the run stops."""
        nonlocal skipped, last_done
        loss_sum, norm, ok = s.read()
        dt = s.seconds(prev, last_done)
        last_done = s.done_at
        if not ok:
            if not t.skip_nonfinite:
                msg = report.nonfinite_message(s.it, loss_sum, norm, last_ckpt)
                if d.is_main:
                    log.end("failed", iter=s.it, best_val_loss=finite_or_none(best_val), message=msg)
                    progress.close()
                    print(f"error: {msg}", file=sys.stderr, flush=True)
                return False
            skipped += 1
            if d.is_main:
                log.event("skipped_step", iter=s.it, message=f"non-finite loss/grad norm; {skipped} skipped")
        stats = {"loss": None}
        if loop.log_due(s.it, cfg):  # loss_sum: summed over ranks when the step was launched
            stats = loop.iter_stats(cfg, loss_sum / d.world, s.lr, norm, dt, peak, d.world,
                                    peak_memory(device), s.tokens, skipped)
            if d.is_main:
                log.iter(iter=s.it, **stats)
        progress.step(s.it, stats)
        return True

    def drain() -> bool:
        nonlocal pending, overlapped
        done, prev, pending, overlapped = pending, overlapped, None, None
        return done is None or finish(done, prev)

    try:
        while True:
            due = loop.eval_due(it, cfg)
            if (due or it == t.max_iters) and not drain():
                return 1
            if due:
                ev = evaluate()
                best_val = min(best_val, ev["val"])
                if d.is_main:
                    log.eval(iter=it, train_loss=ev["train"], val_loss=ev["val"], tokens_seen=tokens_seen)
                    progress.message(f"eval {it}: train loss {ev['train']:.4f}, val loss {ev['val']:.4f}")
                if saved_at != it:
                    save(it)
                    saved_at = it
            if it == t.max_iters:
                break
            if vote(stop.set):  # under torchrun every rank stops at the same step (one step later)
                if not drain():
                    return 1
                if saved_at != it:
                    save(it)
                    saved_at = it
                if d.is_main:
                    msg = report.interrupted_message(stop.signal or "a signal on another rank", it, last_ckpt,
                                                   BACKEND, run.out_dir)
                    log.end("interrupted", iter=it, best_val_loss=finite_or_none(best_val), message=msg)
                    progress.close()
                    print(msg, flush=True)
                return 0
            t0 = time.time()
            lr = loop.lr_at(it, t)
            for g in opt.param_groups:
                g["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(accum):
                x, y = batch("train", it, micro)
                with P.no_sync(wrapped, mode, micro == accum - 1):
                    with autocast:  # the logits are not kept: autograd needs none of them (GPT-2 124M,
                        # batch 16 x 1024: 1.5 GiB of bf16 logits held through the backward otherwise)
                        loss = step_model(x, y)[1] / accum
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()
            scaler.unscale_(opt)
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
            io.fault("step", it)  # test-only hook (a kill between backward and update); no-op otherwise
            # fp16: inf grads are the scaler's business (it skips the step and lowers the scale).
            # Ranks agree without a collective: the norm is of the all-reduced gradients, and a
            # non-finite loss on any rank makes its gradients, hence every rank's norm, non-finite.
            finite = torch.isfinite(loss_sum) & (torch.isfinite(norm) | torch.tensor(scaler.is_enabled()))
            tokens_seen += loop.tokens_per_iter(cfg)
            if deferred:
                opt.found_inf = (~finite).to(torch.float32)  # 1: the fused kernel leaves all state as is
                opt.step()
            elif bool(finite.item()):
                scaler.step(opt)
            scaler.update()  # also after a skipped step: unscale_ then update is one cycle (fp16)
            opt.zero_grad(set_to_none=True)
            step = Step(it, P.total(d, loss_sum) if loop.log_due(it, cfg) else loss_sum, norm, finite, lr, t0,
                        tokens_seen)
            if deferred:  # read the previous step now, this one at the next boundary
                done, prev, pending, overlapped = pending, overlapped, step, pending
            else:
                done, prev = step, None
            if done is not None and not finish(done, prev):
                return 1
            it += 1
    except SaveFailed as e:
        if d.is_main:
            log.end("failed", iter=it, best_val_loss=finite_or_none(best_val), message=str(e))
            progress.close()
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except Exception as e:
        if d.is_main:
            log.end("failed", iter=it, best_val_loss=finite_or_none(best_val), message=f"{type(e).__name__}: {e}")
        raise
    progress.close()
    if d.is_main:
        log.end("completed", iter=it, best_val_loss=finite_or_none(best_val), message=f"checkpoint {last_ckpt}")
        print(report.done_message(it, best_val, last_ckpt), flush=True)
    if t.max_iters > 0 and t.sample_at_end:
        from modgpt_torch.sample import end_of_run_sample
        sample_model = P.full_model(raw, mode, d, device)
        if d.is_main:
            text = end_of_run_sample(sample_model, cfg, device)
            if text is not None:
                print(f"sample (seed {t.seed}, temperature 0.8):\n{text}", flush=True)
        P.barrier(d)  # the other ranks wait for rank 0's sample instead of tearing the group down under it
    return 0


if __name__ == "__main__":
    P.run_main(main)  # not sys.exit(main()): see parallel.exit_process
