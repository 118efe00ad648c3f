"""Side-by-side benchmark: the same config and data trained by each backend in a fresh process.

    python -m modgpt.bench [config arguments] [--backends jax,torch,nanogpt] [--iters N]
                           [--warmup N] [--repeat R] [--json FILE] [--timeout S] [--cpus LIST]

Backends: jax (modgpt_jax.train), torch (modgpt_torch.train) and nanogpt (modgpt_torch.baseline, a
plain eager nanoGPT-style PyTorch loop: the reference the torch backend should match). Each runs
warmup + iters steps in a fresh process with logging every step and no evaluation, checkpoint or
end-of-run sample (--eval_interval=0 --sample_at_end=False: a GPT-2 124M run would otherwise
write two 1.5 GB checkpoints and compile an evaluation and a sampler it does not time); the first
`warmup` steps (compilation, allocator warm-up) are discarded and reported as "compile+warm-up".
Timings come from the backends' run logs (per-step wall time, measured after the step's result is
on the host), so every backend is measured the same way.

--repeat R runs R rounds, each round every backend once (the order rotated each round so slow
drifts of a shared machine hit every backend alike); figures are medians over rounds and ratios are
taken within each round, then the median. Compare backends only within one bench run.

Peak memory: the device's high-water mark where the backend reports one (GPU), and always the
process's RSS high-water mark (getrusage of the finished child: host memory including the Python
runtime, libraries and the compiler). "step plan" (JAX): XLA's buffer plan for one training step
per device (parameters, optimizer state and batch + temporaries + outputs - donated). "floor":
what the weights, gradients, AdamW state and saved activations need (modgpt.memory, from the
config); "x floor" is the peak device memory, or where there is none (CPU) XLA's plan, over it.
"""
from __future__ import annotations

import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from modgpt import cli, hostmem
from modgpt.config import arch_name
from modgpt.io import write_json
from modgpt.memory import fmt_bytes
from modgpt.runlog import read

MODULES = {"jax": "modgpt_jax.train", "torch": "modgpt_torch.train", "nanogpt": "modgpt_torch.baseline"}
BACKENDS = tuple(MODULES)
FLAGS = {"backends": f"comma list of {', '.join(BACKENDS)} (default jax,torch)",
         "iters": "timed iterations per run (default 20)",
         "warmup": "discarded first iterations: compile, warm-up (default 3)",
         "repeat": "rounds of every backend, medians reported (default 1)",
         "json": "write the results as JSON to FILE",
         "timeout": "seconds per backend run (default 1800)",
         "cpus": "pin every backend process to these CPUs, e.g. 0 or 0,1 (default: no pinning)"}


def run_child(cmd: list[str], timeout: float, log_path: str, cpus: set[int] | None = None) -> tuple[int, float, int]:
    """Run cmd with output to log_path; (returncode, wall seconds, child's max RSS bytes).

    cpus: CPU affinity of the child (torch's and XLA's thread pools size themselves from it)."""
    t0 = time.time()
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None  # noqa: E731
    with open(log_path, "w") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                p.kill()
                pid, status, usage = os.wait4(p.pid, 0)
                p.returncode = -9
                return -9, time.time() - t0, usage.ru_maxrss * 1024
            time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, time.time() - t0, usage.ru_maxrss * 1024  # Linux: ru_maxrss in KiB


def bench_backend(backend: str, argv: list[str], iters: int, warmup: int, workdir: str,
                  timeout: float, cpus: set[int] | None = None) -> dict:
    """Run one backend in a fresh process and summarise its log."""
    out_dir = tempfile.mkdtemp(prefix=f"{backend}-", dir=workdir)
    os.rmdir(out_dir)  # the backend creates it (and refuses an existing run)
    total = warmup + iters
    cmd = [sys.executable, "-m", MODULES[backend], *argv, f"--max_iters={total}",
           f"--lr_decay_iters={max(total, 1)}", "--log_interval=1", "--eval_interval=0",
           "--sample_at_end=False", "--progress=False", f"--out_dir={out_dir}"]
    t_start = time.time()
    rc, wall, rss = run_child(cmd, timeout, out_dir + ".out", cpus)
    res = {"backend": backend, "command": shlex.join(cmd), "returncode": rc, "process_wall_s": wall,
           "peak_rss_bytes": rss}
    if rc != 0:
        with open(out_dir + ".out", errors="replace") as f:
            lines = [ln for ln in f.read().strip().splitlines() if ln.strip()]
        err = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "(no output)")
        res["error"] = ("timed out: " if rc == -9 else "") + err
        return res
    recs = read(out_dir)
    header = next((x for x in recs if x["type"] == "header"), {})
    steps = [x for x in recs if x["type"] == "iter"]
    timed = [x for x in steps if x["iter"] >= warmup]
    plan = next((x for x in recs if x["type"] == "event" and x.get("event") == "step_memory"), {})
    res["step_plan_bytes"] = plan.get("total_bytes")  # XLA's plan for one step (JAX), per device
    res["memory_floor_bytes"] = header.get("memory_floor_bytes")  # modgpt.memory's estimate, per device
    if not timed:
        res["error"] = f"no timed iterations in the log ({len(steps)} logged)"
        return res
    dts = [x["dt"] for x in timed]
    dt = statistics.median(dts)
    tpi = header.get("tokens_per_iter", 0)
    mfus = [x["mfu"] for x in timed if isinstance(x.get("mfu"), (int, float))]
    cpu = str(header.get("device", "")).lower() in ("cpu", "")
    mems = [x["peak_mem_bytes"] for x in steps if isinstance(x.get("peak_mem_bytes"), (int, float))]
    res.update(device=header.get("device"), n_devices=header.get("n_devices"), versions=header.get("versions"),
               attention=header.get("attention"), arch=header.get("arch_name"), params=header.get("params"),
               tokens_per_iter=tpi,
               flops_per_token=header.get("flops_per_token"), peak_tflops=header.get("peak_tflops"),
               ms_per_iter=1000 * dt, ms_per_iter_mean=1000 * statistics.fmean(dts),
               ms_per_iter_stdev=1000 * (statistics.stdev(dts) if len(dts) > 1 else 0.0),
               ms_per_iter_all=[1000 * d for d in dts],
               tokens_per_sec=tpi / dt if dt else 0.0, mfu=statistics.median(mfus) if mfus else None,
               peak_device_mem_bytes=None if cpu or not mems else max(mems),
               warmup_s=sum(x["dt"] for x in steps if x["iter"] < warmup),
               startup_s=header.get("time", t_start) - t_start, timed_iters=len(timed))
    return res


def combine(runs: list[dict]) -> dict:
    """One backend's rounds -> medians (the first round's static fields)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return dict(runs[0], rounds=len(runs))
    def med(key):
        vals = [r.get(key) for r in ok]
        return statistics.median(vals) if None not in vals else None
    out = dict(ok[0])
    for key in ("ms_per_iter", "ms_per_iter_stdev", "tokens_per_sec", "mfu", "warmup_s", "startup_s"):
        out[key] = med(key)
    for key in ("peak_rss_bytes", "peak_device_mem_bytes", "step_plan_bytes", "memory_floor_bytes"):
        vals = [r[key] for r in ok if r.get(key)]
        out[key] = max(vals) if vals else None
    out.update(rounds=len(runs), failed_rounds=len(runs) - len(ok),
               ms_per_iter_rounds=[r["ms_per_iter"] for r in ok])
    return out


def round_ratios(rounds: list[dict[str, dict]], backends: list[str]) -> dict[str, list[float]]:
    """tokens/s ratios a/b for each ordered pair, one per round where both ran (in round order)."""
    out = {}
    for a in backends:
        for b in backends:
            vals = [r[a]["tokens_per_sec"] / r[b]["tokens_per_sec"] for r in rounds
                    if a != b and "error" not in r[a] and "error" not in r[b] and r[b]["tokens_per_sec"]]
            if vals:
                out[f"{a}/{b}"] = vals
    return out


def ratios(rounds: list[dict[str, dict]], backends: list[str]) -> dict[str, float]:
    """tokens/s ratios a/b for each ordered pair, measured within each round, median over rounds."""
    return {pair: statistics.median(v) for pair, v in round_ratios(rounds, backends).items()}


def ratio_line(pair: str, per_round: list[float]) -> str:
    """'tokens/s a/b: median (median of R rounds: min-max)': the spread says whether a difference
    between backends is larger than the machine's round-to-round noise."""
    line = f"tokens/s {pair}: {statistics.median(per_round):.2f}"
    if len(per_round) > 1:
        line += f" (median of {len(per_round)} rounds: {min(per_round):.2f}-{max(per_round):.2f})"
    return line


def ref_backend(backends: list[str]) -> str:
    return "torch" if "torch" in backends else backends[0]


def over_floor(r: dict) -> str:
    """Device memory over the floor: the measured peak where there is one (GPU), else XLA's plan,
    marked "(plan)" (a GPU whose runtime reports no peak falls back to it too, and says so)."""
    floor = r.get("memory_floor_bytes")
    if r.get("peak_device_mem_bytes") and floor:
        return f"{r['peak_device_mem_bytes'] / floor:.2f}"
    if r.get("step_plan_bytes") and floor:
        return f"{r['step_plan_bytes'] / floor:.2f}(plan)"
    return "-"


def table(results: list[dict], ratio: dict[str, float]) -> str:
    ok = [r for r in results if "error" not in r]
    ref = ref_backend([r["backend"] for r in results])
    head = ["backend", "tokens/s", "ms/iter", "+-stdev", "MFU", "peak dev mem", "step plan", "floor", "x floor",
            "peak RSS", "compile+warm-up s", "startup s", f"x {ref}"]
    rows = []
    for r in results:
        if "error" not in r:
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
            rel = 1.0 if r["backend"] == ref else ratio.get(f"{r['backend']}/{ref}")
            rows.append([r["backend"], f"{r['tokens_per_sec']:,.0f}", f"{r['ms_per_iter']:.1f}",
                         f"{r['ms_per_iter_stdev']:.1f}", mfu, fmt_bytes(r.get("peak_device_mem_bytes")),
                         fmt_bytes(r.get("step_plan_bytes")), fmt_bytes(r.get("memory_floor_bytes")), over_floor(r),
                         fmt_bytes(r.get("peak_rss_bytes")), f"{r['warmup_s']:.1f}", f"{r['startup_s']:.1f}",
                         "-" if rel is None else f"{rel:.2f}"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*["-" * w for w in widths])] + [fmt.format(*r) for r in rows]
    lines += [f"{r['backend']:<{widths[0]}}  FAILED: {r['error']}" for r in results if "error" in r]
    if not ok:
        lines.append("(no backend finished)")
    return "\n".join(lines)


# environment variables that change how fast (or what) a backend computes: XLA and JAX options,
# thread counts and wait policies of OpenMP/MKL/BLAS, torch and CUDA settings, the C allocator's
# (modgpt/hostmem.py's setting among them). The children inherit them, so a run with XLA_FLAGS set
# is not the same experiment as one without: the report says which it was. TF_CPP_* are the log
# levels XLA reads (verbose logging slows a step); other TF_* names are not XLA's (Terraform's too).
TIMING_ENV_PREFIXES = ("XLA_", "JAX_", "TF_CPP_", "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "TORCH",
                       "PYTORCH_", "CUDA_", "NCCL_", "MALLOC_")
TIMING_ENV_NAMES = tuple(k for k in hostmem.ALLOCATOR_ENV if not k.startswith(TIMING_ENV_PREFIXES)) + (
    hostmem.OPT_OUT,)


def timing_env() -> dict[str, str]:
    """The set environment variables named by TIMING_ENV_PREFIXES or TIMING_ENV_NAMES, by name."""
    return {k: os.environ[k] for k in sorted(os.environ)
            if k.startswith(TIMING_ENV_PREFIXES) or k in TIMING_ENV_NAMES}


def env_line(env: dict[str, str]) -> str:
    """'environment: K=V ...' (shell-quoted), or that none of the variables is set."""
    if not env:
        names = [p + "*" for p in TIMING_ENV_PREFIXES] + list(TIMING_ENV_NAMES)
        return "environment: none of " + ", ".join(names) + " set"
    return "environment: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())


def machine() -> dict:
    """CPU model, cores, load, and the environment variables a timing depends on."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": model, "cores": os.cpu_count(), "host": platform.node(), "os": platform.platform(),
            "python": platform.python_version(), "loadavg_1_5_15": load, "env": timing_env()}


def forwarded(argv: list[str]) -> list[str]:
    """The config arguments (not bench's own flags), passed to every backend verbatim."""
    own = {f"--{k}" for k in FLAGS}
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
    return fwd


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = cli.parse(argv, prog="python -m modgpt.bench", extra_flags=FLAGS)
    backends = [b for b in str(args.flags.get("backends", "jax,torch")).split(",")]
    for b in backends:
        if b not in BACKENDS:
            cli.fail(f"option '--backends' takes a comma list of {', '.join(BACKENDS)}; got '{b}'")
    if len(set(backends)) != len(backends):
        cli.fail(f"option '--backends' lists a backend twice: '{','.join(backends)}'")
    try:
        iters, warmup = int(args.flags.get("iters", 20)), int(args.flags.get("warmup", 3))
        repeat, timeout = int(args.flags.get("repeat", 1)), float(args.flags.get("timeout", 1800))
        if iters < 1 or warmup < 0 or repeat < 1 or timeout <= 0:
            raise ValueError
    except ValueError:
        cli.fail("options '--iters' (>= 1), '--warmup' (>= 0), '--repeat' (>= 1) and '--timeout' (> 0) "
                 "take numbers")
    cpus = None
    if args.flags.get("cpus") is not None:
        try:
            cpus = {int(c) for c in str(args.flags["cpus"]).split(",")}
            if not cpus <= os.sched_getaffinity(0):
                raise ValueError
        except ValueError:
            cli.fail(f"option '--cpus' takes a comma list of CPU numbers from "
                     f"{sorted(os.sched_getaffinity(0))}; got '{args.flags['cpus']}'")
    json_path = cli.output_file_flag(args, "json")
    fwd = forwarded(argv)
    command = ["python", "-m", "modgpt.bench", *argv]
    print(f"bench: {arch_name(args.config.model)}  backends={','.join(backends)}  iters={iters} "
          f"(+{warmup} warm-up)  rounds={repeat}" + (f"  cpus={sorted(cpus)}" if cpus else ""), flush=True)
    before = machine()
    rounds: list[dict[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="modgpt-bench-") as work:
        for k in range(repeat):
            order = backends[k % len(backends):] + backends[:k % len(backends)]
            rnd = {}
            for b in order:
                print(f"  round {k + 1}/{repeat}: {b} ...", flush=True)
                rnd[b] = bench_backend(b, fwd, iters, warmup, work, timeout, cpus)
                if "error" not in rnd[b]:
                    print(f"    {rnd[b]['ms_per_iter']:.1f} ms/iter", flush=True)
            rounds.append(rnd)
    results = [combine([r[b] for r in rounds]) for b in backends]
    per_round = round_ratios(rounds, backends)
    ratio = ratios(rounds, backends)
    after = machine()
    print(table(results, ratio))
    for pair in ("jax/torch", "torch/nanogpt", "jax/nanogpt"):
        if pair in per_round:
            print(ratio_line(pair, per_round[pair]))
    ok = [r for r in results if "error" not in r]
    dev = next((r.get("device") for r in ok), None)
    print(f"device: {dev}  cpu: {before['cpu']} x{before['cores']}  load avg before {before['loadavg_1_5_15']} "
          f"after {after['loadavg_1_5_15']}")
    for r in ok:
        print(f"  {r['backend']} versions: {r.get('versions')}; attention: {r.get('attention') or '-'}")
    print("peak RSS: the process's resident-set high-water mark (getrusage), host memory incl. runtime")
    print("step plan: XLA's memory plan for one step per device (jax): arguments + temporaries + outputs - donated")
    print("floor: what weights, gradients, AdamW state and saved activations need (python -m modgpt.memory); "
          "x floor: peak dev mem / floor, else \"(plan)\" = step plan / floor")
    print(env_line(before["env"]))
    print("command: " + shlex.join(command))
    if json_path:
        write_json(json_path, {"command": command, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                    "machine": before, "loadavg_after": after["loadavg_1_5_15"],
                                    "iters": iters, "warmup": warmup, "repeat": repeat,
                                    "cpus": sorted(cpus) if cpus else None,
                                    "ratios": ratio, "round_ratios": per_round, "results": results,
                                    "rounds": [[r[b] for b in backends] for r in rounds]})
    return 0 if len(ok) == len(results) and all(r.get("failed_rounds", 0) == 0 for r in ok) else 1


if __name__ == "__main__":
    raise SystemExit(main())
