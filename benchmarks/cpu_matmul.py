"""The linear layers' matmuls and one layer's attention on the CPU, JAX (XLA:CPU) against torch,
shape by shape (history: docs/history/performance-notebook.md, "CPU target").

    python benchmarks/cpu_matmul.py [--n_embd 128] [--tokens 3072] [--block_size 256] [--n_head 4]
                                    [--rounds 5] [--calls 20] [--xla_option KEY=VALUE ...] [--json FILE]

For each linear layer of a GPT block (qkv, attention output, FFN up, FFN down) at width n_embd and
`tokens` rows (batch x block size; 12 x 256 for the CPU target), three products:
  forward  y = x W                (tokens, in) @ (in, out)
  dX       dy W^T                 (tokens, out) @ (out, in)
  dW       the weight gradient, contracting over the tokens: JAX as modgpt_jax's Linear computes it
           on the CPU (components/layers.matmul's backward, with dX left out by XLA), torch as
           autograd's linear backward does (dy^T x, transposes passed to the BLAS).
A second table times JAX's weight gradient written the other ways XLA:CPU could run it, against
the form the model uses: the check to repeat on a new CPU before changing that form.
A third table times one layer's attention, whose products are batched matmuls over (batch, head):
JAX's CPU causal kernel (modgpt_jax.kernels.cpu_attention.cpu_causal, what the model's sdpa backend
runs on the CPU) against torch's F.scaled_dot_product_attention(is_causal=True) (modgpt_torch's),
on (tokens / block_size, block_size, n_head, n_embd / n_head) inputs: the forward, and the forward
with the backward of all of q, k and v. JAX's kernel takes (batch, head)-major copies of q, k and v
and copies its output back (the model's path); torch's sdpa reads strided views, as in modgpt_torch.
--xla_option KEY=VALUE (repeatable) compiles every JAX function with that XLA:CPU option, to see
what another matmul library would change shape by shape; e.g. oneDNN for the matmuls takes both
--xla_option=xla_cpu_use_onednn=true and
--xla_option=xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT (the first
alone changes nothing in jaxlib 0.10).
JAX and torch never share a process (modgpt_jax never imports torch); they alternate, one process
each per round, so a slow spell of the machine lands on both. Both get the same float32 inputs
(numpy; seed 0 for the linear layers, 2 for the attention), and the driver checks that their
products agree (norm and a random projection, 1e-5 relative) before it prints a figure. Each
figure is the median over rounds of the per-round median of --calls calls (wall time, ms);
ratio = jax / torch.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout's packages, installed or not
from modgpt import cli  # noqa: E402

PRODUCTS = ("forward", "dX", "dW")
ATTENTION = ("forward", "fwd+bwd")  # the attention table's timed products
# what is compared between the frameworks: the forward program's output, then the forward+backward's
ATTENTION_CHECKS = ("forward output", "output", "dq", "dk", "dv")
LAYERS = {"qkv": (1, 3), "attn_out": (1, 1), "ffn_up": (1, 4), "ffn_down": (4, 1)}  # in, out per n_embd


def shapes(d: int) -> dict:
    return {name: (a * d, b * d) for name, (a, b) in LAYERS.items()}


def inputs(i: int, o: int, n: int):
    """x (n, in), W (in, out), dy (n, out): the same float32 numbers for both frameworks."""
    import numpy as np
    rng = np.random.default_rng(0)
    return tuple(rng.standard_normal(s, dtype=np.float32) for s in [(n, i), (i, o), (n, o)])


def attention_inputs(b: int, t: int, h: int, hd: int):
    """q, k, v and the output's cotangent dy, each (b, t, h, hd) float32, the same for both."""
    import numpy as np
    rng = np.random.default_rng(2)
    return tuple(rng.standard_normal((b, t, h, hd), dtype=np.float32) for _ in range(4))


def parse_xla_options(specs: list[str]) -> dict:
    """["KEY=VALUE", ...] -> XLA compile options; true/false become booleans, digits integers; VALUE
    may be empty (xla_cpu_experimental_ynn_fusion_type= turns YNNPACK off)."""
    opts = {}
    for spec in specs:
        key, eq, value = spec.partition("=")
        if not eq or not key.startswith("xla_"):
            cli.fail(f"--xla_option must be KEY=VALUE with an XLA option name (xla_...), got {spec!r}")
        opts[key] = {"true": True, "false": False}.get(value.lower(), int(value) if value.isdigit() else value)
    return opts


def _fingerprints(*arrays) -> list[list[float]]:
    """[Frobenius norm, <a, P>, rms(P)] of each result, P a fixed random probe of its shape: the norm
    alone would not see a transposed or permuted result, the projection does."""
    import numpy as np
    out = []
    for a in arrays:
        a = np.asarray(a, dtype=np.float64)
        probe = np.random.default_rng(1).standard_normal(a.shape)
        out.append([float(np.linalg.norm(a)), float(np.vdot(a, probe)), float(np.sqrt(np.mean(probe**2)))])
    return out


def _median_ms(fn, calls: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def run_jax(d: int, n: int, calls: int, att: tuple, xla_options: dict) -> dict:
    from modgpt import hostmem
    hostmem.keep_freed_blocks()  # as the train command does, before jax starts its threads
    import jax
    import jax.numpy as jnp

    from modgpt_jax.kernels.cpu_attention import cpu_causal
    from modgpt_jax.kernels.cpu_linear import matmul, transposes_input
    barrier = jax.lax.optimization_barrier  # keeps a materialized transpose from being folded back

    if xla_options:  # refused options are one line, before anything is timed; later errors are real
        try:
            jax.jit(lambda a: a + 1).lower(jnp.zeros(8)).compile(compiler_options=xla_options)
        except Exception as e:  # an option XLA does not know, or a value it refuses
            why = (str(e).splitlines() or [type(e).__name__])[0][:300]
            cli.fail(f"--xla_option: XLA refused {xla_options}: {why}")

    def compiled(f, *args):
        return jax.jit(f).lower(*args).compile(compiler_options=xla_options)
    forms = {  # other ways to write the weight gradient, each the same product
        "x^T dy": lambda x, dy: barrier(x.T) @ dy,
        "(dy^T x)^T": lambda x, dy: barrier(barrier(dy.T) @ x).T,
        "einsum": lambda x, dy: jnp.einsum("ni,no->io", x, dy),  # what autodiff of x @ w writes
    }
    out = {}
    for name, (i, o) in shapes(d).items():
        x, w, dy = (jnp.asarray(a) for a in inputs(i, o, n))
        fwd = compiled(lambda x, w: x @ w, x, w)
        dx = compiled(lambda dy, w: dy @ w.T, dy, w)
        dw = compiled(lambda x, w, dy: jax.vjp(matmul, x, w)[1](dy)[1], x, w, dy)
        out[name] = {"forward": _median_ms(lambda: fwd(x, w).block_until_ready(), calls),
                     "dX": _median_ms(lambda: dx(dy, w).block_until_ready(), calls),
                     "dW": _median_ms(lambda: dw(x, w, dy).block_until_ready(), calls),
                     "checks": _fingerprints(fwd(x, w), dx(dy, w), dw(x, w, dy)), "dW forms": {},
                     "model_form": "x^T dy" if transposes_input(i, o) else "(dy^T x)^T"}
        for form, f in forms.items():
            f = compiled(f, x, dy)
            out[name]["dW forms"][form] = _median_ms(lambda: f(x, dy).block_until_ready(), calls)
            out[name]["checks"].append(_fingerprints(f(x, dy))[0])
    q, k, v, dy = (jnp.asarray(a) for a in attention_inputs(*att))

    def fwd_bwd(q, k, v, dy):
        y, vjp = jax.vjp(cpu_causal, q, k, v)
        return (y, *vjp(dy))
    fwd, fb = compiled(cpu_causal, q, k, v), compiled(fwd_bwd, q, k, v, dy)
    out["attention"] = {"forward": _median_ms(lambda: fwd(q, k, v).block_until_ready(), calls),
                        "fwd+bwd": _median_ms(lambda: jax.block_until_ready(fb(q, k, v, dy)), calls),
                        "checks": _fingerprints(fwd(q, k, v), *fb(q, k, v, dy))}
    return out


def run_torch(d: int, n: int, calls: int, att: tuple) -> dict:
    from modgpt import hostmem
    hostmem.keep_freed_blocks()
    import torch
    out = {}
    with torch.no_grad():
        for name, (i, o) in shapes(d).items():
            x, w, dy = (torch.from_numpy(a) for a in inputs(i, o, n))
            w = w.t().contiguous()  # nn.Linear's (out, in) weight; its gradient compared as (in, out)
            out[name] = {"forward": _median_ms(lambda: x @ w.t(), calls),
                         "dX": _median_ms(lambda: dy @ w, calls),
                         "dW": _median_ms(lambda: dy.t() @ x, calls),
                         "checks": _fingerprints(x @ w.t(), dy @ w, (dy.t() @ x).t())}
    # (B, nh, T, hd) views of (B, T, nh, hd) tensors, as modgpt_torch's attention hands them to sdpa
    q, k, v, dy = (torch.from_numpy(a).transpose(1, 2) for a in attention_inputs(*att))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def fwd():
        with torch.no_grad():
            return sdpa(q, k, v, is_causal=True)

    def fwd_bwd():
        y = sdpa(q, k, v, is_causal=True)
        return (y, *torch.autograd.grad(y, (q, k, v), dy))
    results = (t.detach().transpose(1, 2).numpy() for t in (fwd(), *fwd_bwd()))  # back to (B, T, nh, hd)
    out["attention"] = {"forward": _median_ms(fwd, calls), "fwd+bwd": _median_ms(fwd_bwd, calls),
                        "checks": _fingerprints(*results)}
    return out


def check_agreement(jax_run: dict, torch_run: dict, rtol: float = 1e-5) -> None:
    """Exit (status 1, one line) unless both frameworks computed the same products: each result's
    norm, and its projection on a fixed random probe, agree to rtol of the norm (times the probe's
    rms for the projection: the size of <error, P> for an error of that norm). float32 products
    over 3072 terms land about 1e-7 apart here; a product of bfloat16-rounded inputs is off by 1e-3,
    a wrong operand or a transposed or permuted result by far more."""
    for name in jax_run:
        jc, tc = jax_run[name]["checks"], torch_run[name]["checks"]
        forms = [f"dW as {f}" for f in jax_run[name].get("dW forms", {})]
        labels = ATTENTION_CHECKS if name == "attention" else PRODUCTS
        pairs = list(zip(labels, jc, tc)) + [(f, j, tc[-1]) for f, j in zip(forms, jc[len(PRODUCTS):])]
        for prod, (jn, jp, pn), (tn, tp, _) in pairs:
            if not (abs(jn - tn) <= rtol * tn and abs(jp - tp) <= rtol * tn * pn):
                sys.exit(f"cpu_matmul: {name} {prod} differs between jax and torch "
                         f"(norms {jn:.7g} and {tn:.7g}, projections {jp:.7g} and {tp:.7g})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/cpu_matmul.py", description=__doc__.split("\n")[0],
                                 allow_abbrev=False)
    ap.add_argument("--n_embd", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=12 * 256)
    ap.add_argument("--block_size", type=int, default=None,
                    help="the attention's sequence length (default 256 where it divides --tokens, else --tokens)")
    ap.add_argument("--n_head", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--xla_option", action="append", default=[], metavar="KEY=VALUE",
                    help="compile the JAX side with this XLA:CPU option (repeatable)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures (unrounded) as JSON to FILE")
    ap.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    ap.error = lambda msg: cli.fail(msg.replace("\n", " "))  # one line, exit 2, as every modgpt command
    a = ap.parse_args(argv)
    if a.block_size is None:
        a.block_size = 256 if a.tokens % 256 == 0 else a.tokens
    for flag in ("n_embd", "tokens", "block_size", "n_head", "rounds", "calls"):
        if getattr(a, flag) < 1:
            cli.fail(f"--{flag} must be a positive integer, got {getattr(a, flag)}")
    if a.tokens % a.block_size:
        cli.fail(f"--block_size must divide --tokens (the attention's batch is tokens / block_size), "
                 f"got {a.block_size} and {a.tokens}")
    if a.n_embd % a.n_head:
        cli.fail(f"--n_head must divide --n_embd, got {a.n_head} and {a.n_embd}")
    xla_options = parse_xla_options(a.xla_option)
    att = (a.tokens // a.block_size, a.block_size, a.n_head, a.n_embd // a.n_head)
    if a.json is not None:  # checked before any work, as the other commands do
        cli.writable_file("json", a.json)
    if a.worker:
        if a.worker == "jax":
            print(json.dumps(run_jax(a.n_embd, a.tokens, a.calls, att, xla_options)))
        else:
            print(json.dumps(run_torch(a.n_embd, a.tokens, a.calls, att)))
        return 0
    runs = {"jax": [], "torch": []}
    for _ in range(a.rounds):
        for fw in runs:
            cmd = [sys.executable, __file__, f"--worker={fw}", f"--n_embd={a.n_embd}", f"--tokens={a.tokens}",
                   f"--block_size={a.block_size}", f"--n_head={a.n_head}", f"--calls={a.calls}",
                   *(f"--xla_option={o}" for o in a.xla_option)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            last = (r.stderr.strip().splitlines() or [""])[-1]
            if r.returncode == 2 and last.startswith("error:"):  # the worker refused an option: one line
                print(last, file=sys.stderr)
                return 2
            if r.returncode != 0:
                sys.exit(f"cpu_matmul: the {fw} worker failed:\n{r.stderr.strip()[-2000:]}")
            runs[fw].append(json.loads(r.stdout.strip().splitlines()[-1]))
        if len(runs["torch"]) == 1:  # after the first pair: a mismatch ends the run before more rounds
            check_agreement(runs["jax"][0], runs["torch"][0])
    print(f"linear-layer matmuls, n_embd {a.n_embd}, {a.tokens} tokens, float32; wall ms, median of "
          f"{a.rounds} rounds x {a.calls} calls" + (f"; JAX compiled with {xla_options}" if xla_options else ""))
    print(f"{'layer':10s} {'(in, out)':12s} {'product':8s} {'jax':>8s} {'torch':>8s} {'jax/torch':>10s}")
    rows = []
    for name, shape in list(shapes(a.n_embd).items()) + [("one block", None)]:
        for prod in PRODUCTS:
            if shape is None:  # the block's total: the sum of its layers' medians
                med = {fw: sum(r[fw] for r in rows if r["product"] == prod) for fw in runs}
            else:
                med = {fw: statistics.median(r[name][prod] for r in runs[fw]) for fw in runs}
            rows.append(dict(layer=name, shape=None if shape is None else list(shape), product=prod, **med,
                             ratio=med["jax"] / med["torch"]))
    for r in rows:
        shape = "" if r["shape"] is None else str(tuple(r["shape"]))
        print(f"{r['layer']:10s} {shape:12s} {r['product']:8s} {r['jax']:8.2f} {r['torch']:8.2f} {r['ratio']:10.2f}")
    forms = list(runs["jax"][0][next(iter(shapes(a.n_embd)))]["dW forms"])
    print("JAX's weight gradient written other ways (ms; x the model's form, components/layers.matmul):")
    print(f"{'layer':10s} {'model':>8s} " + " ".join(f"{f:>19s}" for f in forms))
    form_rows = []
    for name in shapes(a.n_embd):
        model = statistics.median(r[name]["dW"] for r in runs["jax"])
        alt = {f: statistics.median(r[name]["dW forms"][f] for r in runs["jax"]) for f in forms}
        same = runs["jax"][0][name]["model_form"]
        form_rows.append(dict(layer=name, model=model, model_form=same, **alt))
        print(f"{name:10s} {model:8.2f} " + " ".join(
            f"{f'{alt[f]:.2f} (x{alt[f] / model:.2f})' + ('=' if f == same else ' '):>19s}" for f in forms))
    print("=: the model's own form, compiled again (its ratio is the measurement's noise)")
    b, t, h, hd = att
    print(f"one layer's attention, batch {b} x T {t}, {h} heads of {hd} (JAX: the CPU causal kernel; "
          f"torch: sdpa):")
    print(f"{'product':8s} {'jax':>8s} {'torch':>8s} {'jax/torch':>10s}")
    att_rows = []
    for prod in ATTENTION:
        med = {fw: statistics.median(r["attention"][prod] for r in runs[fw]) for fw in runs}
        att_rows.append(dict(product=prod, **med, ratio=med["jax"] / med["torch"]))
        print(f"{prod:8s} {med['jax']:8.2f} {med['torch']:8.2f} {med['jax'] / med['torch']:10.2f}")
    from modgpt.bench import env_line, machine
    command = ["python", "benchmarks/cpu_matmul.py", *(sys.argv[1:] if argv is None else argv)]
    host = machine()
    print(env_line(host["env"]))
    print("command: " + " ".join(command))
    if a.json:
        from modgpt.io import write_json
        write_json(a.json, dict(n_embd=a.n_embd, tokens=a.tokens, rounds=a.rounds, calls=a.calls,
                                machine=host, rows=rows, jax_dw_forms=form_rows,
                                attention=dict(batch=b, block_size=t, n_head=h, head_dim=hd, rows=att_rows),
                                xla_options=xla_options,
                                command=command, time=time.strftime("%Y-%m-%d %H:%M:%S")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
