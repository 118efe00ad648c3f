"""The torch Trainer: the model (kernels applied, then wrapped for DDP / ZeRO-1 / FSDP), AdamW, the
GradScaler, the batches, with what the shared loop (modgpt.trainloop) asks of it: launch a step,
evaluate, save, restore, vote."""
from __future__ import annotations

import contextlib
import time

import torch

from modgpt import config as C
from modgpt import data as D
from modgpt import io, loop
from modgpt.trainloop import SaveFailed, timed_seconds
from modgpt_torch import checkpoint as CK
from modgpt_torch import kernels as K
from modgpt_torch import parallel as P

BACKEND = "torch"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Step:
    """A launched optimizer step: its iteration, lr, when its host work began, and its loss, gradient
    norm and finiteness on their way to the host. On a GPU those three are copied into pinned memory
    and an event is recorded right behind the step, so reading them later waits for this step only,
    not for the steps launched after it; elsewhere the step has finished by the time it is made."""

    def __init__(self, it: int, loss_sum, norm, finite, lr: float, began: float, world: int):
        self.it, self.lr, self.began, self.world = it, lr, began, world
        dtype = torch.float32 if loss_sum.device.type == "cuda" else torch.float64
        self.host, self.event = P.to_host(torch.stack([x.to(dtype) for x in (loss_sum, norm, finite)]), timing=True)
        self.done_at = None if self.event is not None else time.time()

    def read(self) -> tuple[float, float, bool]:
        """(loss, gradient norm, finite), waiting for the step; the loss a mean over the ranks when
        it was summed over them (on log iterations)."""
        if self.event is not None:
            self.event.synchronize()
            self.done_at = time.time()
        loss, norm, finite = self.host.tolist()
        return loss / self.world, norm, finite == 1.0

    def seconds(self, prev: "Step | None", last_done: float) -> float:
        """On a GPU, from the previous step's completion on the device's clock; else the host's."""
        if prev is not None and self.event is not None:
            return prev.event.elapsed_time(self.event) / 1000
        return timed_seconds(self.began, self.done_at, prev, last_done)


def param_groups(model, weight_decay: float) -> list[dict]:
    """Decay on matrices and embeddings (ndim >= 2) only; norms and biases excluded."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


class Trainer:
    def __init__(self, run, model, device: torch.device, d: P.Dist):
        cfg = self.cfg = run.cfg
        t = cfg.train
        self.run, self.device, self.d, self.mode = run, device, d, cfg.system.parallel
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        model.to(device)
        self.kernels = K.apply_kernels(model, cfg, device.type)  # --kernels: swapped in once, before wrapping
        self.raw = model
        self.wrapped = P.wrap(model, self.mode, d, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=t.dtype == "float16")
        # One step in flight where the optimizer can skip a non-finite update by itself: step it's
        # finiteness is read after step it+1 is launched. ZeRO-1 and FSDP (sharded optimizer state)
        # and float16 (GradScaler owns the flag) read it at once.
        self.in_flight = self.mode in ("none", "ddp") and not self.scaler.is_enabled()
        self.opt = P.make_optimizer(param_groups(model, t.weight_decay), self.mode, lr=t.learning_rate,
                                    betas=(t.beta1, t.beta2), eps=t.adam_eps,
                                    **({"fused": True} if device.type == "cuda" or self.in_flight else {}))
        self.step_model = torch.compile(self.wrapped) if t.compile else self.wrapped
        self.autocast = (torch.autocast(device.type, dtype=DTYPES[t.dtype]) if t.dtype != "float32"
                         else contextlib.nullcontext())
        self.sampler = D.BatchSampler(run.data_path, cfg.model.block_size, t.batch_size, t.seed,
                                      vocab_size=cfg.model.vocab_size, rank=d.rank, world=d.world)
        self.params = list(model.parameters())
        self.clip = t.grad_clip if t.grad_clip > 0 else float("inf")  # inf: the scale clamps to exactly 1
        self.vote = P.StopVote(d, device)

    def restore(self, ck: dict) -> dict:
        """The optimizer, scaler and RNG state of a checkpoint (its model is loaded already); its
        iter, best_val_loss and skipped_steps."""
        P.load_optimizer(self.raw, self.opt, ck["optimizer"], self.mode)
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        CK.set_rng_state(ck["rng"])
        return dict(iter=ck["iter"], best_val_loss=ck.get("best_val_loss"), skipped_steps=ck.get("skipped_steps", 0))

    def batch(self, split: str, it: int, micro: int = 0):
        x, y = (torch.from_numpy(a) for a in self.sampler.get(split, it, micro))
        if self.device.type == "cuda":  # from pinned memory the copy is asynchronous; from pageable memory
            x, y = x.pin_memory(), y.pin_memory()  # it may wait for the stream (the step in flight)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def launch(self, it: int, lr: float) -> Step:
        """Forward and backward over the micro batches, clipping, and the AdamW update at lr; a
        non-finite step leaves every parameter and moment as it was."""
        began = time.time()
        opt, scaler, accum = self.opt, self.scaler, self.cfg.train.gradient_accumulation_steps
        for g in opt.param_groups:
            g["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(accum):
            x, y = self.batch("train", it, micro)
            with P.no_sync(self.wrapped, self.mode, micro == accum - 1):
                with self.autocast:  # the logits are not kept: autograd needs none of them
                    loss = self.step_model(x, y)[1] / accum
                scaler.scale(loss).backward()
            loss_sum += loss.detach()
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        io.fault("step", it)  # test-only hook (a kill between backward and update); no-op otherwise
        # fp16: inf grads are the scaler's business (it skips the step and lowers the scale). Ranks
        # agree without a collective: the norm is of the all-reduced gradients, and a non-finite loss
        # on any rank makes its gradients, hence every rank's norm, non-finite.
        finite = torch.isfinite(loss_sum) & (torch.isfinite(norm) | torch.tensor(scaler.is_enabled()))
        if self.in_flight:
            # found_inf is how GradScaler skips a fused AdamW step on the device (1: all state left as
            # is); no public API skips a step without reading the flag on the host, which would stall
            opt.found_inf = (~finite).to(torch.float32)
            opt.step()
        elif bool(finite.item()):
            scaler.step(opt)
        scaler.update()  # also after a skipped step: unscale_ then update is one cycle (fp16)
        opt.zero_grad(set_to_none=True)
        logged = loop.log_due(it, self.cfg)  # then the loss is summed over the ranks
        return Step(it, P.total(self.d, loss_sum) if logged else loss_sum, norm, finite, lr, began,
                    self.d.world if logged else 1)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean loss over eval_iters fixed batches of each split (the same at every evaluation)."""
        t = self.cfg.train
        self.step_model.eval()
        out = {}
        for split in ("train", "val"):
            tot = 0.0
            for k in range(t.eval_iters):
                x, y = self.batch(split, D.EVAL_ITER + k)
                with self.autocast:
                    tot += self.step_model(x, y)[1].item()
            out[split] = P.mean(self.d, tot / t.eval_iters, self.device)
        self.step_model.train()
        return out

    def task_loglik(self):
        """loglik(x, y, mask) of the current weights for modgpt.tasks, in the run's precision."""
        def loglik(x, y, mask):
            self.step_model.eval()
            try:
                with torch.no_grad(), self.autocast:
                    logits = self.step_model(torch.as_tensor(x, device=self.device))[0]
                lp = torch.log_softmax(logits.float(), -1)
                lp = lp.gather(-1, torch.as_tensor(y, dtype=torch.int64, device=self.device)[..., None])[..., 0]
                return (lp * torch.as_tensor(mask, device=self.device)).sum(-1).double().cpu().numpy()
            finally:
                self.step_model.train()
        return loglik

    def checkpoint_path(self, it: int) -> str:
        return CK.path_for(self.run.out_dir, it)

    def save(self, it: int, meta: dict) -> str:
        """Gather the full state on rank 0, which writes it; SaveFailed on every rank if that failed."""
        msd, osd = P.full_state(self.raw, self.opt, self.mode, self.d)
        err = None
        if self.d.is_main:
            state = dict(meta, model=msd, optimizer=osd, config=self.cfg.to_dict(), backend=BACKEND,
                         parallel=self.mode, sampler=self.sampler.state(), rng=CK.rng_state(),
                         scaler=self.scaler.state_dict())
            try:
                CK.save(self.run.out_dir, state, self.cfg.train.keep_checkpoints)
            except Exception as e:  # noqa: BLE001 - ENOSPC arrives as OSError or torch's RuntimeError
                err = e
        if P.any_flag(self.d, err is not None, self.device):  # also the barrier after the save
            raise SaveFailed(it, err)
        return self.checkpoint_path(it)

    def remove_partial_save(self) -> None:
        CK.remove_stale_temps(self.run.out_dir)

    def peak_memory(self) -> int | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        try:
            import resource
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        except Exception:
            return None

    def first_step_report(self):
        return None


def fresh_seed(cfg: C.Config, d: P.Dist) -> None:
    """A fresh run's dropout RNG: different per rank."""
    torch.manual_seed(cfg.train.seed + d.rank)
