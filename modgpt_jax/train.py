"""python -m modgpt_jax.train [CONFIG_FILE] [--preset NAME] [--key=value ...]

The loop of docs/backend_contract.md on a (data, fsdp) mesh: one jitted, donated step per
iteration, orbax checkpoints every eval interval, JSONL run log, SIGTERM/SIGINT -> checkpoint and
exit 0, non-finite loss -> stop (or skip with --skip_nonfinite).
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

from modgpt import cli, initfrom, io, loop, report
from modgpt import config as C
from modgpt import data as D
from modgpt import hardware as HW
from modgpt import memory as MEM
from modgpt import hostmem
from modgpt.stopflag import StopFlag

BACKEND = "jax"


class Trainer:
    """Model, mesh, shardings, optimizer and the jitted functions for one config."""

    def __init__(self, cfg: C.Config, devices=None, seed: int | None = None):
        import jax
        from flax import nnx

        from modgpt_jax import sharding as S
        from modgpt_jax import step as ST
        from modgpt_jax.kernels import apply_kernels
        from modgpt_jax.model import build
        from modgpt_jax.weights import param_dict
        self.cfg = cfg
        self.mesh = S.make_mesh(cfg.system, devices)
        S.check_batch(cfg.train.batch_size, self.mesh)
        # built in host memory: the accelerator then holds only the sharded copy (self.params), not
        # this one as well (GPT-2 124M: 475 MiB, 3.7% of its floor at batch 16 x 1024)
        with jax.default_device(host_device()):
            self.model = build(cfg, cfg.train.seed if seed is None else seed)
        self.kernels = apply_kernels(self.model, cfg)  # --kernels: swapped in once, before anything traces
        self.graphdef, _ = nnx.split(self.model)
        self.param_sh = S.param_shardings(self.model, self.mesh)
        self.repl = S.replicated(self.mesh)
        self.params = S.put_params(param_dict(self.model), self.param_sh)
        self.tx = ST.make_optimizer(cfg.train, cfg.system.scan_layers)
        self.opt_sh = ST.opt_shardings(self.tx, jax.eval_shape(self.tx.init, self.params), self.param_sh, self.repl)
        self.opt_state = jax.jit(self.tx.init, out_shardings=self.opt_sh)(self.params)
        self.batch_sh = S.batch_sharding(self.mesh, 3, lead=1)  # (A, B, T)
        self.step_fn = ST.jit_train_step(ST.make_train_step(self.graphdef, cfg, self.tx), self.param_sh,
                                         self.opt_sh, self.batch_sh, self.repl)
        loss_fn = ST.make_loss_fn(self.graphdef, ST.DTYPES[cfg.train.dtype])
        self.eval_fn = jax.jit(loss_fn, in_shardings=(self.param_sh, S.batch_sharding(self.mesh),
                                                      S.batch_sharding(self.mesh)), out_shardings=self.repl)
        self.base_key = jax.random.key(cfg.train.seed)
        self._compiled_step = None  # the step compiled ahead of time on first use (step_memory below)
        self.step_memory: dict | None = None

    def set_params(self, params) -> None:
        from modgpt_jax import sharding as S
        self.params = S.put_params(params, self.param_sh)

    def load_canonical(self, tensors) -> None:
        from modgpt_jax.weights import load_canonical, param_dict
        load_canonical(self.model, tensors)
        self.set_params(param_dict(self.model))

    def sync_model(self):
        """The nnx model holding the current (trained) parameters."""
        from flax import nnx
        return nnx.merge(self.graphdef, self.params)

    def batch(self, sampler: D.BatchSampler, it: int):
        """(xs, ys) (A, B, T) global arrays: this process loads only its slice of each micro batch."""
        from modgpt_jax import sharding as S
        A = self.cfg.train.gradient_accumulation_steps
        xy = [sampler.get("train", it, m) for m in range(A)]
        xs, ys = np.stack([a for a, _ in xy]), np.stack([b for _, b in xy])
        return S.put_batch(xs, self.mesh, lead=1), S.put_batch(ys, self.mesh, lead=1)

    def dispatch(self, x, y, it: int) -> dict:
        """Start the optimizer step of iteration it (lr_at(it)) and return at once, without waiting
        for it: {"metrics": device arrays, "lr": float}. collect() reads them. The loop dispatches
        step it+1 before reading step it's metrics, so the device never waits for the host between
        steps (a non-finite step changes nothing: the step itself keeps the old state, step.py)."""
        import jax
        lr = loop.lr_at(it, self.cfg.train)
        key = jax.random.fold_in(self.base_key, it)
        args = (self.params, self.opt_state, x, y, np.float32(lr), key)
        if jax.config.jax_disable_jit:  # op by op (the parity suite runs one-shot checks eagerly)
            out = self.step_fn(*args)
        else:
            if self._compiled_step is None:  # the compilation the first jit call would do, done
                # explicitly so that XLA's memory plan of the step can be reported (step_memory)
                self._compiled_step = self.step_fn.lower(*args).compile()
                self.step_memory = memory_plan(self._compiled_step)
            try:
                out = self._compiled_step(*args)
            except (TypeError, ValueError):  # inputs laid out unlike the first call's: jit recompiles
                out = self.step_fn(*args)
        self.params, self.opt_state, m = out
        io.fault("step", it)  # test-only hook (a kill while the step runs); no-op otherwise
        return dict(metrics=m, lr=lr)

    @staticmethod
    def collect(pending: dict) -> dict:
        """Wait for a dispatched step; its host metrics: loss, grad_norm, ok (finite), lr."""
        import jax
        m = jax.device_get(pending["metrics"])
        return dict(loss=float(m["loss"]), grad_norm=float(m["grad_norm"]), ok=bool(m["ok"]), lr=pending["lr"])

    def step(self, x, y, it: int) -> dict:
        """One optimizer step at iteration it, waited for; its host metrics (collect)."""
        return self.collect(self.dispatch(x, y, it))

    def evaluate(self, sampler: D.BatchSampler) -> dict:
        from modgpt_jax import sharding as S
        out = {}
        for split in ("train", "val"):
            losses = []
            for k in range(self.cfg.train.eval_iters):
                x, y = sampler.get(split, 10**9 + k)
                losses.append(float(self.eval_fn(self.params, S.put_batch(x, self.mesh), S.put_batch(y, self.mesh))))
            out[split] = float(np.mean(losses))
        return out


def memory_plan(compiled) -> dict | None:
    """XLA's buffer plan of a compiled executable, per device, in bytes: arguments, outputs, the part
    of the outputs aliased to donated arguments, temporaries, and total = what the step needs
    (arguments + outputs - aliased + temporaries). None where the backend gives no analysis."""
    try:
        a = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not implemented on some backends
        return None
    if a is None:
        return None
    plan = dict(arguments=int(a.argument_size_in_bytes), outputs=int(a.output_size_in_bytes),
                aliased=int(a.alias_size_in_bytes), temporaries=int(a.temp_size_in_bytes))
    plan["total"] = plan["arguments"] + plan["outputs"] - plan["aliased"] + plan["temporaries"]
    return plan


def device_capacity() -> tuple[int | None, str]:
    """(bytes per device, the device in words) for loop.check_memory: an accelerator's memory limit,
    or on the CPU the host's available memory shared by this process's devices."""
    import jax
    dev = jax.local_devices()[0]
    if dev.platform == "cpu":
        avail = loop.host_available_bytes()
        n = jax.local_device_count()
        return (None if avail is None else avail // n), ("the host" if n == 1 else f"each of the host's {n} CPU devices")
    try:
        limit = (dev.memory_stats() or {}).get("bytes_limit")
    except Exception:  # noqa: BLE001 - unsupported on some platforms
        limit = None
    return limit, f"a {dev.device_kind}"


def peak_memory() -> int | None:
    import jax
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - unsupported on some platforms
        return None
    return stats.get("peak_bytes_in_use") if stats else None


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
        return train_loop(run, trainer, sampler, source and source.tensors, is_main, stop)
    finally:
        if run.lock is not None:
            run.lock.release()


def host_device():
    """This process's CPU device for host-side arrays (jax.devices("cpu")[0] may be another
    process's under jax.distributed), or None (the default device) where JAX has no CPU backend
    (JAX_PLATFORMS without cpu)."""
    import jax
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return None


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


def train_loop(run, trainer: Trainer, sampler, init_tensors, is_main: bool, stop: StopFlag) -> int:
    import jax

    import flax
    import optax
    import orbax.checkpoint
    from modgpt_jax import checkpoint as CK
    from modgpt_jax import sharding as S
    from modgpt_jax import kernels as K
    from modgpt_jax.distributed import StopVote
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
            trainer.params, trainer.opt_state, meta = CK.restore(run.out_dir, trainer.params, trainer.opt_state)
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
    log = loop.open_log(run, is_main)
    mgr = CK.manager(run.out_dir, keep=t.keep_checkpoints)
    prog = report.Progress(cfg, start, enabled=is_main)
    attention = K.describe_attention(cfg.model, t.dtype, trainer.kernels)
    if is_main:
        print(report.startup_report(run, BACKEND, dev.device_kind, n_dev, precision, peak, par,
                                  extra={"mesh": dict(trainer.mesh.shape), "kernels": K.describe(trainer.kernels),
                                         "attention": attention, "host malloc": hostmem.keep_freed_blocks()}),
              flush=True)
    versions = dict(jax=jax.__version__, flax=flax.__version__, optax=optax.__version__,
                    orbax=orbax.checkpoint.__version__)
    log.header(**report.header_record(run, BACKEND, dev.device_kind, n_dev, peak, versions, par),
               attention=attention, kernels=list(trainer.kernels), resumed_from=start if restored else None)
    if restored:
        log.event("resumed", iter=start, message=f"resumed from checkpoint {start}")
    last_saved = start if restored else None

    def ckpt_path(step):
        return None if step is None else os.path.join(run.out_dir, CK.CKPT_DIR, str(step))

    def save(it):
        nonlocal last_saved
        meta = dict(iter=it, best_val_loss=None if math.isinf(best) else best, skipped_steps=skipped,
                    backend=BACKEND, sampler=sampler.state(), mesh=dict(trainer.mesh.shape),
                    config=cfg.to_dict())
        try:
            CK.save(mgr, it, trainer.params, trainer.opt_state, meta)
        except Exception as e:  # noqa: BLE001 - disk full / I/O error (OSError, or tensorstore's own
            # errors through orbax): orbax leaves only its temp dir; the last complete step stays
            msg = report.save_failed_message(it, e, ckpt_path(last_saved), BACKEND, run.out_dir)
            log.end("failed", iter=it, best_val_loss=None if math.isinf(best) else best, message=msg)
            prog.close()
            print(f"error: {msg}", file=sys.stderr, flush=True)
            return False
        last_saved = it
        log.event("checkpoint", iter=it, message=f"saved checkpoint {it}")
        return True

    it = start

    def on_abort(signame: str) -> str:  # a second signal: drop a save in progress, end the log
        if is_main:
            CK.remove_temps(run.out_dir)
        msg = report.aborted_message(signame, it, ckpt_path(last_saved), BACKEND, run.out_dir)
        log.end("interrupted", iter=it, best_val_loss=None if math.isinf(best) else best, message=msg)
        return msg
    stop.on_abort = on_abort
    plan_unreported = True
    floor = MEM.for_run(cfg, BACKEND, n_dev).total  # the step plan is compared with it
    # One step in flight: step it is dispatched before step it-1's metrics are read, so the device
    # never waits on the host between steps (batch, dispatch and logging cost ~3 ms of host time per
    # step at GPT-2 124M's batch and parameter count, docs/performance.md). The pending step is
    # read (drained) before anything that needs the state after it: evaluation, checkpoints, stop.
    vote = StopVote()
    pending = None  # (iteration, Trainer.dispatch's handle, time its host work began)
    last_done = 0.0  # when the previous step's metrics arrived

    def finish() -> bool:
        """Wait for the pending step, if any, and log it; False: it was non-finite and the run stops."""
        nonlocal pending, skipped, last_done
        if pending is None:
            return True
        p_it, handle, began = pending
        pending = None
        m = trainer.collect(handle)
        now = time.time()
        dt = now - max(began, last_done)  # in flight: the time between two steps' completions
        last_done = now
        if not m["ok"]:
            if t.skip_nonfinite:
                skipped += 1
                log.event("skipped_step", iter=p_it, message=f"non-finite loss/grads at iteration {p_it}; "
                                                             f"update skipped")
            else:
                msg = report.nonfinite_message(p_it, m["loss"], m["grad_norm"], ckpt_path(last_saved))
                log.end("failed", iter=p_it, best_val_loss=None if math.isinf(best) else best, message=msg)
                prog.close()
                print(f"error: {msg}", file=sys.stderr)
                return False
        if loop.log_due(p_it, cfg):
            st = loop.iter_stats(cfg, m["loss"], m["lr"], m["grad_norm"], dt, peak, n_dev, peak_memory(),
                                 (p_it + 1) * loop.tokens_per_iter(cfg), skipped)
            log.iter(iter=p_it, **st)
            prog.step(p_it, st)
        else:
            prog.step(p_it, {"loss": None})
        return True

    while True:
        due = loop.eval_due(it, cfg)
        if (due or it >= t.max_iters) and not finish():
            return 1
        if due:
            ev = trainer.evaluate(sampler)
            best = min(best, ev["val"])
            log.eval(iter=it, train_loss=ev["train"], val_loss=ev["val"], tokens_seen=it * loop.tokens_per_iter(cfg))
            prog.message(f"eval {it}: train loss {ev['train']:.4f}, val loss {ev['val']:.4f}")
            if not (restored and it == start) and not save(it):
                return 1
        if it >= t.max_iters:
            break
        if vote(stop.signal is not None):  # multi-process: every process stops at the same step
            if not finish():
                return 1
            if last_saved != it and not save(it):
                return 1
            msg = report.interrupted_message(stop.signal or "a signal on another process", it, ckpt_path(it),
                                           BACKEND, run.out_dir)
            log.end("interrupted", iter=it, best_val_loss=None if math.isinf(best) else best, message=msg)
            prog.close()
            if is_main:
                print(msg, flush=True)
            return 0
        began = time.time()
        x, y = trainer.batch(sampler, it)
        handle = trainer.dispatch(x, y, it)
        if plan_unreported and trainer.step_memory is not None:
            plan_unreported = False
            pm = trainer.step_memory
            msg = (f"step memory (XLA plan, per device): {loop.fmt_bytes(pm['total'])} = arguments "
                   f"{loop.fmt_bytes(pm['arguments'])} + temporaries {loop.fmt_bytes(pm['temporaries'])} + "
                   f"outputs {loop.fmt_bytes(pm['outputs'])} - donated {loop.fmt_bytes(pm['aliased'])}; "
                   f"{pm['total'] / floor:.2f}x the floor of {loop.fmt_bytes(floor)}")
            log.event("step_memory", iter=it, message=msg, floor_bytes=floor,
                      **{f"{k}_bytes": v for k, v in pm.items()})
            prog.message(msg)
        if not finish():
            return 1
        pending = (it, handle, began)
        it += 1
    prog.close()
    log.end("completed", iter=it, best_val_loss=None if math.isinf(best) else best,
            message=f"finished {t.max_iters} iterations")
    if is_main:
        print(report.done_message(t.max_iters, best, ckpt_path(last_saved)), flush=True)
    if t.max_iters > 0 and t.sample_at_end:
        from modgpt_jax.inference import end_of_run_sample, host_model
        model = host_model(trainer.graphdef, trainer.params)  # collective: every process gathers
        text = end_of_run_sample(model, cfg) if is_main else None
        if text is not None:
            print(f"sample (seed {t.seed}, temperature 0.8):\n{text}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
