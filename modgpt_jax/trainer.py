"""The JAX Trainer: model, mesh, shardings, optimizer and the jitted step for one config, with what
the shared loop (modgpt.trainloop) asks of it: launch a step, evaluate, save, restore, vote."""
from __future__ import annotations

import os
import time

import numpy as np

from modgpt import config as C
from modgpt import data as D
from modgpt import io, loop
from modgpt.trainloop import SaveFailed, timed_seconds

BACKEND = "jax"


class LaunchedStep:
    """An optimizer step dispatched to the devices; its metrics on their way to the host."""

    def __init__(self, it: int, lr: float, metrics, began: float):
        self.it, self.lr, self.metrics, self.began, self.done_at = it, lr, metrics, began, None

    def read(self) -> tuple[float, float, bool]:
        """(loss, gradient norm, finite), waiting for the step."""
        import jax
        m = jax.device_get(self.metrics)
        self.done_at = time.time()
        return float(m["loss"]), float(m["grad_norm"]), bool(m["ok"])

    def seconds(self, prev, last_done: float) -> float:
        return timed_seconds(self.began, self.done_at, prev, last_done)


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

    def dispatch(self, x, y, it: int, lr: float | None = None):
        """Start the optimizer step of iteration it at lr (default lr_at(it)) and return at once, without
        waiting for it: a LaunchedStep. A non-finite step changes nothing: the step itself keeps the
        old state (step.py)."""
        import jax
        began = time.time()
        lr = loop.lr_at(it, self.cfg.train) if lr is None else lr
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
        return LaunchedStep(it, lr, m, began)

    def step(self, x, y, it: int) -> dict:
        """One optimizer step at iteration it, waited for: its loss, grad_norm and ok (finite)."""
        loss, norm, ok = self.dispatch(x, y, it).read()
        return dict(loss=loss, grad_norm=norm, ok=ok)

    # -- what the shared loop (modgpt.trainloop) asks of a trainer ------------------------------
    in_flight = True  # the step guards itself against non-finite updates, so it need not be read at once

    def attach(self, run, sampler: D.BatchSampler) -> None:
        """The run the loop trains: its out_dir (checkpoints) and batches."""
        from modgpt_jax import checkpoint as CK
        from modgpt_jax.distributed import StopVote
        self.run, self.sampler = run, sampler
        self.mgr = CK.manager(run.out_dir, keep=self.cfg.train.keep_checkpoints)
        self.vote = StopVote()

    def launch(self, it: int, lr: float) -> LaunchedStep:
        return self.dispatch(*self.batch(self.sampler, it), it, lr)

    def evaluate(self, sampler: D.BatchSampler | None = None) -> dict:
        """Mean loss over eval_iters fixed batches of each split (the same at every evaluation)."""
        from modgpt_jax import sharding as S
        sampler = sampler or self.sampler
        out = {}
        for split in ("train", "val"):
            losses = []
            for k in range(self.cfg.train.eval_iters):
                x, y = sampler.get(split, D.EVAL_ITER + k)
                losses.append(float(self.eval_fn(self.params, S.put_batch(x, self.mesh), S.put_batch(y, self.mesh))))
            out[split] = float(np.mean(losses))
        return out

    def task_loglik(self):
        """loglik(x, y, mask) of the current weights for modgpt.tasks (inputs replicated; one compile
        per padded length)."""
        import jax
        import jax.numpy as jnp

        from modgpt_jax import step as ST
        if not hasattr(self, "_task_fn"):
            dtype = ST.DTYPES[self.cfg.train.dtype]

            def f(params, x, y, mask):
                from flax import nnx
                logits = nnx.merge(self.graphdef, ST.cast(params, dtype))(x)[0].astype(jnp.float32)
                lp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), y[..., None], axis=-1)[..., 0]
                return (lp * mask).sum(-1)
            self._task_fn = jax.jit(f, in_shardings=(self.param_sh, self.repl, self.repl, self.repl),
                                    out_shardings=self.repl)

        def loglik(x, y, mask):
            put = [jax.make_array_from_process_local_data(self.repl, np.asarray(a)) for a in (x, y, mask)]
            return np.asarray(jax.device_get(self._task_fn(self.params, *put)), dtype=np.float64)
        return loglik

    def checkpoint_path(self, it: int) -> str:
        from modgpt_jax.checkpoint import CKPT_DIR
        return os.path.join(self.run.out_dir, CKPT_DIR, str(it))

    def save(self, it: int, meta: dict) -> str:
        """Checkpoint iteration it (orbax, every process its shards); SaveFailed on a write error
        (OSError, or tensorstore's own through orbax), which leaves only orbax's temporary directory."""
        from modgpt_jax import checkpoint as CK
        meta = dict(meta, backend=BACKEND, sampler=self.sampler.state(), mesh=dict(self.mesh.shape),
                    config=self.cfg.to_dict())
        try:
            CK.save(self.mgr, it, self.params, self.opt_state, meta)
        except Exception as e:  # noqa: BLE001 - disk full / I/O error in any of orbax's forms
            raise SaveFailed(it, e) from None
        return self.checkpoint_path(it)

    def restore(self, out_dir: str) -> dict:
        """Parameters and optimizer state from out_dir's latest checkpoint, placed on this mesh; its meta
        (iter, best_val_loss, skipped_steps). Raises CheckpointError."""
        from modgpt_jax import checkpoint as CK
        self.params, self.opt_state, meta = CK.restore(out_dir, self.params, self.opt_state)
        return meta

    def remove_partial_save(self) -> None:
        from modgpt_jax import checkpoint as CK
        CK.remove_temps(self.run.out_dir)

    def peak_memory(self) -> int | None:
        return peak_memory()

    def first_step_report(self):
        """XLA's memory plan of the compiled step against the floor: (message, run-log fields)."""
        import jax

        from modgpt import memory as MEM
        pm = self.step_memory
        if pm is None:
            return None
        floor = MEM.for_run(self.cfg, BACKEND, jax.device_count()).total
        msg = (f"step memory (XLA plan, per device): {loop.fmt_bytes(pm['total'])} = arguments "
               f"{loop.fmt_bytes(pm['arguments'])} + temporaries {loop.fmt_bytes(pm['temporaries'])} + "
               f"outputs {loop.fmt_bytes(pm['outputs'])} - donated {loop.fmt_bytes(pm['aliased'])}; "
               f"{pm['total'] / floor:.2f}x the floor of {loop.fmt_bytes(floor)}")
        return msg, dict(floor_bytes=floor, **{f"{k}_bytes": v for k, v in pm.items()})


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


def host_device():
    """This process's CPU device for host-side arrays (jax.devices("cpu")[0] may be another
    process's under jax.distributed), or None (the default device) where JAX has no CPU backend
    (JAX_PLATFORMS without cpu)."""
    import jax
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return None
