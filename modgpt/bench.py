"""Side-by-side benchmark: the same config and data trained by each backend in a fresh process.

    python -m modgpt.bench [config arguments] [--backends jax,torch] [--iters N] [--warmup N]
                           [--json FILE] [--keep]

Each backend runs `python -m modgpt_<backend>.train` for warmup + iters steps with logging every
step and no evaluation; the first `warmup` steps (compilation, allocator warm-up) are discarded and
reported separately. Timings come from the backends' own run logs (per-step wall time measured
after the step's result is on the host), so both are measured the same way.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from modgpt import cli
from modgpt.config import arch_name
from modgpt.io import write_json
from modgpt.loop import fmt_bytes
from modgpt.runlog import read

BACKENDS = ("jax", "torch")


def bench_backend(backend: str, argv: list[str], iters: int, warmup: int, workdir: str,
                  timeout: float) -> dict:
    """Run one backend in a fresh process and summarise its log."""
    out_dir = os.path.join(workdir, backend)
    total = warmup + iters
    cmd = [sys.executable, "-m", f"modgpt_{backend}.train", *argv, f"--max_iters={total}",
           f"--lr_decay_iters={max(total, 1)}", "--log_interval=1", f"--eval_interval={10 ** 9}",
           "--eval_iters=1", "--progress=False", f"--out_dir={out_dir}"]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.time() - t0
    res = {"backend": backend, "command": shlex.join(cmd), "returncode": r.returncode, "process_wall_s": wall}
    if r.returncode != 0:
        res["error"] = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        return res
    recs = read(out_dir)
    header = next((x for x in recs if x["type"] == "header"), {})
    steps = [x for x in recs if x["type"] == "iter"]
    timed = [x for x in steps if x["iter"] >= warmup]
    if not timed:
        res["error"] = f"no timed iterations in the log ({len(steps)} logged)"
        return res
    dts = [x["dt"] for x in timed]
    dt = statistics.median(dts)
    tpi = header.get("tokens_per_iter", 0)
    mfus = [x["mfu"] for x in timed if x.get("mfu") is not None]
    mems = [x["peak_mem_bytes"] for x in steps if x.get("peak_mem_bytes")]
    res.update(device=header.get("device"), n_devices=header.get("n_devices"), versions=header.get("versions"),
               arch=header.get("arch_name"), params=header.get("params"),
               flops_per_token=header.get("flops_per_token"), ms_per_iter=1000 * dt,
               ms_per_iter_mean=1000 * statistics.fmean(dts),
               ms_per_iter_stdev=1000 * (statistics.stdev(dts) if len(dts) > 1 else 0.0),
               tokens_per_sec=tpi / dt if dt else 0.0, mfu=statistics.median(mfus) if mfus else None,
               peak_mem_bytes=max(mems) if mems else None,
               warmup_s=sum(x["dt"] for x in steps if x["iter"] < warmup),
               startup_s=wall - sum(x["dt"] for x in steps), timed_iters=len(timed))
    return res


def table(results: list[dict]) -> str:
    ok = [r for r in results if "error" not in r]
    ref = min((r["ms_per_iter"] for r in ok), default=None)
    head = ["backend", "tokens/s", "ms/iter (median)", "+-stdev", "MFU", "peak mem", "warm-up s",
            "startup s", "speed vs fastest"]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["backend"], "FAILED: " + r["error"]] + [""] * (len(head) - 2))
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        rows.append([r["backend"], f"{r['tokens_per_sec']:,.0f}", f"{r['ms_per_iter']:.1f}",
                     f"{r['ms_per_iter_stdev']:.1f}", mfu, fmt_bytes(r.get("peak_mem_bytes")),
                     f"{r['warmup_s']:.1f}", f"{r['startup_s']:.1f}", f"{ref / r['ms_per_iter']:.2f}x"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*["-" * w for w in widths])] + [fmt.format(*r) for r in rows])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = {"backends": "comma list of backends (default jax,torch)", "iters": "timed iterations (default 20)",
             "warmup": "discarded iterations (default 3)", "json": "write results as JSON to FILE",
             "timeout": "seconds per backend (default 1800)"}
    args = cli.parse(argv, prog="python -m modgpt.bench", extra_flags=flags)
    backends = str(args.flags.get("backends", "jax,torch")).split(",")
    for b in backends:
        if b not in BACKENDS:
            cli.fail(f"option '--backends' takes a comma list of {', '.join(BACKENDS)}; got '{b}'")
    try:
        iters, warmup = int(args.flags.get("iters", 20)), int(args.flags.get("warmup", 3))
        timeout = float(args.flags.get("timeout", 1800))
        if iters < 1 or warmup < 0:
            raise ValueError
    except ValueError:
        cli.fail("options '--iters' (>= 1), '--warmup' (>= 0) and '--timeout' must be numbers")
    # Forward the config arguments (not bench's own flags) to each backend verbatim.
    own = {f"--{k}" for k in flags}
    fwd, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in own:
            skip = "=" not in a
            continue
        fwd.append(a)
    cfg = args.config
    print(f"bench: {arch_name(cfg.model)}  backends={','.join(backends)}  iters={iters} (+{warmup} warm-up)")
    results = []
    with tempfile.TemporaryDirectory(prefix="modgpt-bench-") as work:
        for b in backends:
            print(f"  running {b} ...", flush=True)
            results.append(bench_backend(b, fwd, iters, warmup, work, timeout))
    print(table(results))
    ok = [r for r in results if "error" not in r]
    if len(ok) == 2:
        a, b = ok
        print(f"ratio {a['backend']}/{b['backend']} tokens/s: {a['tokens_per_sec'] / b['tokens_per_sec']:.2f}")
    dev = next((r.get("device") for r in ok), None)
    print(f"device: {dev}  python {platform.python_version()}  host {platform.node()}")
    for r in ok:
        print(f"  {r['backend']} versions: {r.get('versions')}")
    print("command: python -m modgpt.bench " + shlex.join(argv))
    if args.flags.get("json"):
        write_json(str(args.flags["json"]), {"command": ["python", "-m", "modgpt.bench", *argv],
                                             "time": time.strftime("%Y-%m-%d %H:%M:%S"), "results": results})
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
