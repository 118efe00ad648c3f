"""Where the JAX training step's time goes: the step and its parts, each compiled and timed alone.

    python -m modgpt_jax.breakdown [config arguments] [--iters N] [--warmup N] [--json FILE]

Parts (same config, shardings, dtype and random tokens as the step; dropout keys as the step draws):
  step           the whole optimizer step, as train.py runs it (parameters and AdamW state donated)
  fwd+bwd        the loss and its gradient with respect to every parameter (no optimizer)
  forward        the loss alone
  trunk fwd+bwd  embeddings, blocks and final norm, forward and backward (a fixed random cotangent
                 on the final norm's output stands in for the LM head's)
  head fwd+bwd   LM head and cross-entropy, forward and backward, on a fixed (B, T, D) input
  optimizer      grad norm, clipping and the gated AdamW update (modgpt_jax/step.py) on fixed grads

Each part is the median of --iters timed calls, each waited for, after --warmup. TFLOP/s counts the
part's share of the matmul FLOPs (modgpt.flops, PaLM convention: the full T x T attention); MFU is
that over the device's peak where it is known. The parts overlap (trunk + head = fwd+bwd, which the
step contains); the residue "step - A x fwd+bwd - optimizer" (A micro-batches) is what the whole
step loses or gains by being one program. Timings of parts compiled alone can differ from their share of the fused step:
read them as a guide to where the time goes, and the step's own figure as the measurement.
"""
from __future__ import annotations

import shlex
import statistics
import sys
import time

from modgpt import cli, hostmem
from modgpt import config as C
from modgpt import flops as F
from modgpt import hardware as HW
from modgpt.bench import env_line, timing_env
from modgpt.io import write_json

FLAGS = {"iters": "timed calls per part (default 10)", "warmup": "untimed calls first (default 2)",
         "json": "write the results as JSON to FILE"}


def _timed(fn, iters: int, warmup: int) -> tuple[float, float]:
    """(median seconds, compile + warm-up seconds) of fn(), each call waited for."""
    import jax
    t0 = time.perf_counter()
    for _ in range(warmup):
        jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times), first


def measure(cfg: C.Config, iters: int = 10, warmup: int = 2) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from modgpt_jax import sharding as S
    from modgpt_jax import step as ST
    from modgpt_jax.model import cross_entropy
    from modgpt_jax.train import matmul_precision
    from modgpt_jax.trainer import Trainer

    trainer = Trainer(cfg)
    t, m = cfg.train, cfg.model
    B, T, D = t.batch_size, m.block_size, m.n_embd
    A = t.gradient_accumulation_steps
    dtype = ST.DTYPES[t.dtype]
    rng = np.random.default_rng(0)
    xs = rng.integers(0, m.vocab_size, (A, B, T), dtype=np.int32)
    ys = rng.integers(0, m.vocab_size, (A, B, T), dtype=np.int32)
    X, Y = S.put_batch(xs, trainer.mesh, lead=1), S.put_batch(ys, trainer.mesh, lead=1)
    x, y = S.put_batch(xs[0], trainer.mesh), S.put_batch(ys[0], trainer.mesh)
    key = jax.random.key(t.seed) if m.dropout > 0 else None
    gd = trainer.graphdef
    loss_fn = ST.make_loss_fn(gd, dtype)

    def trunk(params, x, ct):
        model = nnx.merge(gd, ST.cast(params, dtype))
        return jnp.vdot(model.features(x, key=key).astype(jnp.float32), ct)

    def head(params, h, y):
        model = nnx.merge(gd, ST.cast(params, dtype))
        return cross_entropy(model.head(h), y)

    def optimizer(grads, opt_state, params):
        norm = ST.global_norm(grads)
        return ST.gated_update(trainer.tx, ST.clip(grads, norm, t.grad_clip), opt_state, params,
                               jnp.float32(t.learning_rate), jnp.isfinite(norm))

    p = trainer.params
    ct = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float32)
    h = jax.random.normal(jax.random.key(2), (B, T, D), jnp.float32).astype(dtype)
    fwd = jax.jit(loss_fn)
    fb = jax.jit(jax.value_and_grad(loss_fn))
    tr = jax.jit(jax.value_and_grad(trunk))
    hd = jax.jit(jax.value_and_grad(head, argnums=(0, 1)))
    opt = jax.jit(optimizer)
    grads = fb(p, x, y, key)[1]
    lr = np.float32(t.learning_rate)
    state = {"p": trainer.params, "o": trainer.opt_state}

    def whole():  # the donated step: feed each call's outputs to the next, as training does
        state["p"], state["o"], metrics = trainer.step_fn(state["p"], state["o"], X, Y, lr,
                                                          jax.random.key(0))
        return metrics

    c = F.count(m)
    bd = c.breakdown
    tokens = A * B * T
    fl = {"step": c.flops_per_token * tokens, "fwd+bwd": c.flops_per_token * tokens / A,
          "forward": c.forward_flops_per_token * tokens / A,
          "trunk fwd+bwd": (c.flops_per_token - bd["lm_head"]) * tokens / A,
          "head fwd+bwd": bd["lm_head"] * tokens / A, "optimizer": 0.0}
    parts = {"step": whole, "fwd+bwd": lambda: fb(state["p"], x, y, key),
             "forward": lambda: fwd(state["p"], x, y, key), "trunk fwd+bwd": lambda: tr(state["p"], x, ct),
             "head fwd+bwd": lambda: hd(state["p"], h, y), "optimizer": lambda: opt(grads, state["o"], state["p"])}
    dev = jax.devices()[0]
    _, peak_dtype = matmul_precision(t.dtype, jax.default_backend(), jax.config.jax_default_matmul_precision)
    peak = HW.peak_tflops(dev.device_kind, peak_dtype, cfg.system.peak_tflops)
    rows = []
    for name, fn in parts.items():
        sec, first = _timed(fn, iters, warmup)
        tf = fl[name] / sec / 1e12 if fl[name] else None
        rows.append(dict(part=name, ms=1e3 * sec, compile_s=first, tflops=tf,
                         mfu=tf / peak if (tf and peak) else None))
    step_ms = rows[0]["ms"]
    for r in rows:
        r["pct_of_step"] = 100 * r["ms"] / step_ms
    by = {r["part"]: r["ms"] for r in rows}
    import flax
    import optax
    return dict(arch=C.arch_name(m), device=dev.device_kind, n_devices=jax.device_count(),
                dtype=t.dtype, batch=[A, B, T], peak_tflops=peak, iters=iters, warmup=warmup, parts=rows,
                # the step runs fwd+bwd once per micro-batch (A of them), then the optimizer once
                residue_ms=by["step"] - A * by["fwd+bwd"] - by["optimizer"],
                versions={"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__})


def table(res: dict) -> str:
    head = ["part", "ms", "% of step", "TFLOP/s", "MFU", "compile+warm-up s"]
    body = [[r["part"], f"{r['ms']:.2f}", f"{r['pct_of_step']:.0f}%",
             "-" if r["tflops"] is None else f"{r['tflops']:.1f}",
             "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%", f"{r['compile_s']:.1f}"] for r in res["parts"]]
    w = [max(len(str(row[i])) for row in [head] + body) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{n}}}" for n in w)
    A, B, T = res["batch"]
    lines = [f"breakdown: {res['arch']}  {res['dtype']}  batch {A}x{B}x{T}  {res['device']} x{res['n_devices']}  "
             f"median of {res['iters']} calls", fmt.format(*head), fmt.format(*["-" * n for n in w])]
    lines += [fmt.format(*row) for row in body]
    fb = "fwd+bwd" if A == 1 else f"{A} x fwd+bwd"
    lines.append(f"step - {fb} - optimizer: {res['residue_ms']:+.2f} ms "
                 "(negative: the step overlaps or fuses what the parts run apart)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = cli.parse(argv, prog="python -m modgpt_jax.breakdown", extra_flags=FLAGS)
    cfg = args.config
    hostmem.keep_freed_blocks(cfg.system.device)  # before jax starts its threads, as train.py does
    from modgpt_jax.distributed import pin_platform, platform_error
    pin_platform(cfg.system.device)
    if cfg.system.size == "auto":  # no dataset is read: auto would need one
        cfg = cfg.replace(size="none")
    iters = cli.positive_int_flag(args, "iters", 10)
    warmup = cli.positive_int_flag(args, "warmup", 2)
    json_path = cli.output_file_flag(args, "json")
    if (why := platform_error(cfg.system.device)) is not None:
        cli.fail(why)
    command = ["python", "-m", "modgpt_jax.breakdown", *(sys.argv[1:] if argv is None else argv)]
    res = measure(cfg, iters, warmup)
    res.update(command=command, time=time.strftime("%Y-%m-%d %H:%M:%S"), env=timing_env())
    print(table(res))
    print(env_line(res["env"]))  # XLA_FLAGS and the like: part of the experiment (modgpt/bench.py)
    print("command: " + shlex.join(command))
    if json_path:
        write_json(json_path, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
