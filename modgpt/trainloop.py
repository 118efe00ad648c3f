"""The training loop both backends run, over a backend's Trainer (docs/backend_contract.md).

For it = start .. max_iters: evaluate and checkpoint when due, stop at max_iters or on a stop
signal, else one optimizer step at lr_at(it). Where the trainer allows (`in_flight`), step it+1 is
launched before step it's metrics are read, so the device never waits for the host between steps;
the step still pending is read before anything that needs the state after it: an evaluation, a
checkpoint, a stop. A non-finite step changes nothing by itself on the device; the loop learns of
it one step later and skips it or stops.

A Trainer provides: launch(it, lr) -> a launched step (its `it`, `lr`, `read()` -> (loss, grad
norm, finite) and `seconds(prev, last_done)`), in_flight, evaluate() -> {"train", "val"},
save(it, meta) -> the checkpoint's path (raising SaveFailed on every process when any failed),
checkpoint_path(it), remove_partial_save(), vote(flag) (the processes agree on a stop),
peak_memory(), first_step_report() -> (message, record fields) or None, task_loglik() -> the current
weights' loglik(x, y, mask) for evaluation tasks (modgpt.tasks).
"""
from __future__ import annotations

import math
import sys

from modgpt import loop, report


class SaveFailed(Exception):
    """A checkpoint write failed (disk full, I/O error); raised on every process of the run."""

    def __init__(self, it: int, error: Exception | None):
        super().__init__(f"checkpoint {it}: {error}")
        self.it, self.error = it, error


class TrainLoop:
    def __init__(self, run, trainer, log, progress, stop, *, start: int = 0, best: float = math.inf,
                 skipped: int = 0, last_ckpt: str | None = None, peak: float | None = None, n_devices: int = 1):
        self.run_, self.trainer, self.log, self.progress, self.stop = run, trainer, log, progress, stop
        self.cfg = run.cfg
        self.it, self.best, self.skipped, self.last_ckpt = start, best, skipped, last_ckpt
        self.saved_at = start if last_ckpt is not None else None  # the iteration of the newest checkpoint
        self.peak, self.n_devices = peak, n_devices
        self.pending = self.overlapped = None  # the launched step not read yet; the one in flight with it
        self.last_done = 0.0  # when the previous step's metrics were read
        self.completed = False  # ran to max_iters (not stopped, not failed)
        stop.on_abort = self.on_abort

    def bits_per_byte(self, ev: dict) -> dict:
        """{train_bpb, val_bpb}: each split's loss in bits over the UTF-8 bytes its evaluation targets
        decode to (the same fixed batches every time, so the bytes are counted once); {} when the
        tokenizer's tokens have no byte lengths of their own."""
        from modgpt import data as D
        if not hasattr(self, "_bytes_per_token"):
            try:
                lengths = D.token_bytes(self.run_.meta, self.run_.data_path)
            except D.DataError:  # the tokenizer's files are gone: the run trains on, without bits per byte
                lengths = None
            self._bytes_per_token = None if lengths is None else D.eval_bytes_per_token(
                self.trainer.sampler, self.cfg.train.eval_iters, lengths)
        if not self._bytes_per_token:
            return {}
        return {f"{s}_bpb": ev[s] / math.log(2) / self._bytes_per_token[s] for s in ("train", "val")
                if self._bytes_per_token[s] > 0}

    def score_tasks(self) -> dict:
        """--eval_tasks: {<task>_acc, <task>_acc_norm} of the current weights (every process scores the
        same items, so a sharded model's collectives line up)."""
        if not self.run_.tasks:
            return {}
        from modgpt import data as D
        from modgpt import tasks as TK
        tok = D.get_tokenizer(self.run_.meta, self.run_.data_path)
        loglik = self.trainer.task_loglik()
        out = {}
        for name, items in self.run_.tasks.items():
            res = TK.score(name, items, tok.encode, self.cfg.model.block_size, loglik)
            out[f"{name}_acc"], out[f"{name}_acc_norm"] = res.acc, res.acc_norm
        return out

    def best_or_none(self) -> float | None:
        return None if math.isinf(self.best) else self.best

    def error(self, msg: str, it: int) -> None:
        """A failed run: its end record and one error line."""
        self.log.end("failed", iter=it, best_val_loss=self.best_or_none(), message=msg)
        self.progress.close()
        if self.run_.is_main:
            print(f"error: {msg}", file=sys.stderr, flush=True)

    def run(self) -> int:
        """0 completed or stopped by a signal (checkpoint written), 1 failed (error printed)."""
        try:
            return self._loop()
        except SaveFailed as e:
            self.error(report.save_failed_message(e.it, e.error or OSError("on another process"),
                                                  self.last_ckpt, self.run_.backend, self.run_.out_dir), e.it)
            return 1
        except Exception as e:
            self.log.end("failed", iter=self.it, best_val_loss=self.best_or_none(), message=f"{type(e).__name__}: {e}")
            raise

    def _loop(self) -> int:
        t, run = self.cfg.train, self.run_
        first = True
        while True:
            it = self.it
            due = loop.eval_due(it, self.cfg)
            if (due or it >= t.max_iters) and not self.drain():
                return 1
            if due:
                ev = self.trainer.evaluate()
                self.best = min(self.best, ev["val"])
                bpb = self.bits_per_byte(ev)
                scores = self.score_tasks()
                self.log.eval(iter=it, train_loss=ev["train"], val_loss=ev["val"], **bpb, **scores,
                              tokens_seen=it * loop.tokens_per_iter(self.cfg))
                shown = f", val bpb {bpb['val_bpb']:.4f}" if "val_bpb" in bpb else ""
                shown += "".join(f", {k.replace('_', ' ')} {v:.4f}" for k, v in scores.items() if k.endswith("acc_norm"))
                self.progress.message(f"eval {it}: train loss {ev['train']:.4f}, val loss {ev['val']:.4f}{shown}")
                self.save(it)
            if it >= t.max_iters:
                break
            if self.trainer.vote(self.stop.set):  # every process stops at the same boundary
                if not self.drain():
                    return 1
                self.save(it)
                msg = report.interrupted_message(self.stop.signal or "a signal on another process", it,
                                                 self.last_ckpt, run.backend, run.out_dir)
                self.log.end("interrupted", iter=it, best_val_loss=self.best_or_none(), message=msg)
                self.progress.close()
                if run.is_main:
                    print(msg, flush=True)
                return 0
            step = self.trainer.launch(it, loop.lr_at(it, t))
            if first:
                first = False
                plan = self.trainer.first_step_report()
                if plan is not None:
                    self.log.event("step_memory", iter=it, message=plan[0], **plan[1])
                    self.progress.message(plan[0])
            if self.trainer.in_flight:  # read the previous step now, this one at the next boundary
                done, prev = self.pending, self.overlapped
                self.pending, self.overlapped = step, self.pending
            else:
                done, prev = step, None
            if done is not None and not self.finish(done, prev):
                return 1
            self.it = it + 1
        self.completed = True
        self.progress.close()
        self.log.end("completed", iter=self.it, best_val_loss=self.best_or_none(),
                     message=f"finished {t.max_iters} iterations; checkpoint {self.last_ckpt}")
        if run.is_main:
            print(report.done_message(t.max_iters, self.best, self.last_ckpt), flush=True)
        return 0

    def save(self, it: int) -> None:
        """Checkpoint iteration it unless the newest checkpoint is it (a resumed run's first boundary)."""
        if self.saved_at == it:
            return
        meta = dict(iter=it, best_val_loss=self.best_or_none(), skipped_steps=self.skipped,
                    tokens_seen=it * loop.tokens_per_iter(self.cfg))
        self.last_ckpt = self.trainer.save(it, meta)
        self.saved_at = it
        self.log.event("checkpoint", iter=it, message=self.last_ckpt)

    def drain(self) -> bool:
        done, prev, self.pending, self.overlapped = self.pending, self.overlapped, None, None
        return done is None or self.finish(done, prev)

    def finish(self, s, prev) -> bool:
        """Read a launched step (waiting for it), count or refuse it if non-finite, log it. prev: the
        step still in flight when s was launched. False: non-finite without --skip_nonfinite."""
        loss, norm, ok = s.read()
        dt = s.seconds(prev, self.last_done)
        self.last_done = s.done_at
        if not ok:
            if not self.cfg.train.skip_nonfinite:
                self.error(report.nonfinite_message(s.it, loss, norm, self.last_ckpt), s.it)
                return False
            self.skipped += 1
            self.log.event("skipped_step", iter=s.it, message=f"non-finite loss or gradient norm at iteration "
                                                               f"{s.it}; update skipped ({self.skipped} so far)")
        stats = {"loss": None}
        if loop.log_due(s.it, self.cfg):
            stats = loop.iter_stats(self.cfg, loss, s.lr, norm, dt, self.peak, self.n_devices,
                                    self.trainer.peak_memory(), (s.it + 1) * loop.tokens_per_iter(self.cfg),
                                    self.skipped)
            self.log.iter(iter=s.it, **stats)
        self.progress.step(s.it, stats)
        return True

    def on_abort(self, signame: str) -> str:
        """A second signal (stopflag): drop a save in progress, end the log; the line to print."""
        if self.run_.is_main:
            self.trainer.remove_partial_save()
        msg = report.aborted_message(signame, self.it, self.last_ckpt, self.run_.backend, self.run_.out_dir)
        self.log.end("interrupted", iter=self.it, best_val_loss=self.best_or_none(), message=msg)
        return msg


def timed_seconds(began: float, done_at: float, prev, last_done: float) -> float:
    """A step's time on the host clock: from the previous step's completion when that was still
    pending as this one was launched (prev), else from its own host work or the previous step's read
    (last_done), whichever came later."""
    if prev is not None:
        return done_at - prev.done_at
    return done_at - max(began, last_done)

