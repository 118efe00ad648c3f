"""Ablation sweeps: a base preset plus one-change-at-a-time variants (or a full grid), each trained as its
own run with the same data and token budget, with one or more seeds, then compared with modgpt.compare
(with seeds: means, 95% intervals and paired tests against the base variant, modgpt.stats).

    python -m modgpt.sweep --base PRESET --vary OPTION=V1,V2 [--vary ...] [--grid] [--backend jax|torch]
                           [--seeds N|S1,S2,...] [--parallel_runs K] [--devices 0,1,...]
                           [--launcher local|slurm] [--slurm_* ...] [--runs_dir DIR] [--name NAME]
                           [--dry_run] [--key=value ...]
    python -m modgpt.sweep --variants gpt2,gpt2+rope,gpt2+rmsnorm,gpt2+swiglu,llama --seeds 3 [--key=value ...]
    python -m modgpt.sweep configs/sweep_classic.py [--key=value ...]

A variant name is PRESET[+CHANGE...], a CHANGE being a name from CHANGES or OPTION=VALUE.

--seeds N runs every variant with seeds seed, seed+1, ... (seed: --seed, default 1337); a seed sets the
initial weights, dropout and the batches, so for one seed every variant sees the same data and the
comparison pairs up. --parallel_runs K runs K at once: on a GPU machine each on its own GPU
(--devices, default all visible), on a CPU sharing its cores. Run again with the same --name, a sweep
skips the runs that completed and resumes the others. --launcher=slurm writes an sbatch array script
(one task per variant x seed; --slurm_partition, --slurm_account, --slurm_time, --slurm_gpus,
--slurm_cpus, --slurm_mem, --slurm_setup or the same keys in a sweep file) and submits it.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import os
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from modgpt import cli
from modgpt import compare as CMP
from modgpt import config as C
from modgpt.io import write_json, write_text
from modgpt.presets import CHANGES, PRESETS, SIZE_KEYS


SLURM_FLAGS = {"slurm_partition": "", "slurm_account": "", "slurm_time": "24:00:00", "slurm_gpus": "1",
               "slurm_cpus": "8", "slurm_mem": "", "slurm_setup": ""}
SWEEP_FLAGS = ("base", "vary", "variants", "grid", "backend", "runs_dir", "name", "dry_run", "seeds",
               "parallel_runs", "devices", "launcher", *SLURM_FLAGS)
BOOL_FLAGS = ("grid", "dry_run")
BACKENDS = ("jax", "torch")
LAUNCHERS = ("local", "slurm")
# Options the sweep sets itself, or that would make variants not comparable.
RESERVED = {"out_dir": "the sweep sets each run's out_dir", "init_from": "sweep runs start from scratch",
            "preset": "give the preset with --base or in a variant name"}


class SweepError(RuntimeError):
    """A bad sweep specification; printed as one line, exit 2, before anything runs."""


@dataclass
class Variant:
    name: str  # e.g. gpt2+rope or gpt2+position_encoding=rope
    preset: str
    changes: dict  # option -> value (strings, as on a command line)
    config: C.Config
    run_dir: str = ""


@dataclass
class Job:
    """One run of the sweep: a variant with one seed (None: the config's own seed, no suffix)."""
    variant: Variant
    seed: int | None
    run_dir: str

    @property
    def label(self) -> str:
        return self.variant.name + ("" if self.seed is None else f" (seed {self.seed})")

    @property
    def out_path(self) -> str:
        return self.run_dir + ".out"


def split_argv(argv: list[str]) -> tuple[dict, list[str], str | None]:
    """(sweep flags, pass-through config tokens as --key=value, sweep file) from the command line."""
    flags: dict = {"vary": []}
    rest: list[str] = []
    file = None
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a in ("-h", "--help"):
            print(__doc__.strip())
            print("named changes: " + ", ".join(f"{k} ({', '.join(f'{o}={v}' for o, v in ch.items())})"
                                                 for k, ch in CHANGES.items()))
            raise SystemExit(0)
        if not a.startswith("--"):
            if a.endswith(".py") and file is None:
                file = a
                continue
            raise SweepError(f"unexpected argument '{a}': give a sweep file (.py), sweep flags or --key=value")
        key, eq, value = a[2:].partition("=")
        if not eq and i < len(argv) and not argv[i].startswith("--") and not (key in BOOL_FLAGS):
            value, i, eq = argv[i], i + 1, "="
        if key in SWEEP_FLAGS:
            if key in BOOL_FLAGS:
                flags[key] = C.parse_str(key, value, bool) if eq else True
            elif not eq:
                raise SweepError(f"--{key} needs a value")
            elif key == "vary":
                flags["vary"].append(value)
            else:
                flags[key] = value
            continue
        key = key.replace("-", "_")
        if key in RESERVED:
            raise SweepError(f"--{key} cannot be set for a sweep: {RESERVED[key]}")
        C.check_key(key)
        rest.append(f"--{key}={value}" if eq else f"--{key}")
    return flags, rest, file


def read_sweep_file(path: str) -> tuple[dict, list[str]]:
    """A python sweep file: sweep keys (base/preset, vary, variants, grid, backend, name, runs_dir) and
    config keys, the latter passed to every run."""
    if not os.path.isfile(path):
        raise SweepError(f"sweep file '{path}' not found")
    try:
        ns = runpy.run_path(path)
    except Exception as e:  # noqa: BLE001 - the file itself failed: say where, in one line
        raise SweepError(f"sweep file '{path}' failed to execute: {type(e).__name__}: {e}") from None
    flags: dict = {}
    rest: list[str] = []
    for k, v in ns.items():
        if k.startswith("_") or callable(v) or type(v).__name__ == "module":
            continue
        if k in ("base", "preset"):
            flags["base"] = v
        elif k == "vary":
            items = v.items() if isinstance(v, dict) else [tuple(s.split("=", 1)) for s in v]
            flags["vary"] = [f"{o}={','.join(map(str, vals)) if isinstance(vals, (list, tuple)) else vals}"
                             for o, vals in items]
        elif k == "variants":
            flags["variants"] = ",".join(v) if isinstance(v, (list, tuple)) else v
        elif k in SWEEP_FLAGS:
            flags[k] = v
        else:
            if k in RESERVED:
                raise SweepError(f"sweep file '{path}' sets '{k}': {RESERVED[k]}")
            C.check_key(k)
            rest.append(f"--{k}={v}")
    return flags, rest


def parse_vary(spec: str) -> tuple[str, list[str]]:
    opt, eq, vals = spec.partition("=")
    values = [v.strip() for v in vals.split(",") if v.strip()]
    if not eq or not values:
        raise SweepError(f"--vary '{spec}' must look like OPTION=V1,V2")
    if opt in RESERVED:
        raise SweepError(f"--vary {opt}: {RESERVED[opt]}")
    C.check_key(opt)
    return opt, values


def parse_variant(spec: str, base: str | None) -> tuple[str, dict]:
    """'gpt2+rope+nobias' -> ('gpt2', {...}); a spec without a preset uses --base."""
    parts = [p.strip() for p in spec.split("+") if p.strip()]
    if not parts:
        raise SweepError(f"empty variant name in --variants ('{spec}')")
    if parts[0] in PRESETS:
        preset, parts = parts[0], parts[1:]
    elif base is not None:
        preset = base
    else:
        raise SweepError(f"variant '{spec}' must start with a preset ({', '.join(PRESETS)})"
                         f"{C.suggest(parts[0], PRESETS)} or come with --base")
    changes: dict = {}
    for p in parts:
        if "=" in p:
            opt, _, val = p.partition("=")
            C.check_key(opt)
            changes[opt] = val
        elif p in CHANGES:
            changes.update(CHANGES[p])
        else:
            raise SweepError(f"unknown change '{p}' in variant '{spec}'{C.suggest(p, CHANGES)}; "
                             f"known: {', '.join(CHANGES)} or OPTION=VALUE")
    return preset, changes


def resolve(name: str, preset: str, changes: dict, rest: list[str]) -> Variant:
    """Build and validate one variant's config exactly as the training command line will."""
    argv = ["--preset", preset, *rest, *[f"--{k}={v}" for k, v in changes.items()]]
    try:
        args = cli._parse(argv, "modgpt.sweep", {}, False, {})
    except C.ConfigError as e:
        raise SweepError(f"variant '{name}': {e}") from None
    return Variant(name=name, preset=preset, changes=changes, config=args.config)


def plan(flags: dict, rest: list[str]) -> list[Variant]:
    """Every variant of the sweep, validated, duplicates (same resolved config) dropped."""
    base = flags.get("base")
    if base is not None and base not in PRESETS:
        raise SweepError(f"unknown preset '{base}' for --base{C.suggest(str(base), PRESETS)}; "
                         f"valid presets: {', '.join(PRESETS)}")
    varies = [parse_vary(s) for s in flags.get("vary", [])]
    specs: list[tuple[str, str, dict]] = []
    if flags.get("variants"):
        if varies:
            raise SweepError("give --variants or --vary, not both")
        for s in str(flags["variants"]).split(","):
            s = s.strip()
            preset, changes = parse_variant(s, base)
            specs.append((s if s.split("+")[0] in PRESETS else f"{preset}+{s}", preset, changes))
    elif base is None:
        raise SweepError("give --base PRESET (with --vary OPTION=V1,V2) or --variants NAME,NAME,...")
    elif not varies:
        raise SweepError("--base needs at least one --vary OPTION=V1,V2 (or use --variants)")
    elif flags.get("grid"):
        # Each option also takes the base's own value (None), so the grid holds the base run too.
        for combo in itertools.product(*[[(o, None)] + [(o, v) for v in vals] for o, vals in varies]):
            changes = {o: v for o, v in combo if v is not None}
            specs.append((base + "".join(f"+{o}={v}" for o, v in changes.items()), base, changes))
    else:  # the base run, then each value of each option on its own
        specs.append((base, base, {}))
        specs += [(f"{base}+{o}={v}", base, {o: v}) for o, vals in varies for v in vals]
    variants, seen = [], {}
    for name, preset, changes in specs:
        v = resolve(name, preset, changes, rest)
        key = json.dumps(C.to_flat(v.config), sort_keys=True)
        if key in seen:
            print(f"note: skipping variant '{name}': same config as '{seen[key]}'")
            continue
        seen[key] = name
        variants.append(v)
    if len(variants) < 2:
        raise SweepError(f"the sweep has {len(variants)} distinct variant(s); vary something to compare")
    return variants


def fairness_notes(variants: list[Variant], rest: list[str]) -> list[str]:
    """Warn when variants cannot share the token budget (e.g. varying block_size)."""
    notes = []
    budget = {v.name: v.config.train.max_iters * v.config.train.batch_size * v.config.model.block_size
              * v.config.train.gradient_accumulation_steps for v in variants}
    if len(set(budget.values())) > 1:
        notes.append("variants differ in token budget (max_iters x batch x block): "
                     + ", ".join(f"{k}={b:,}" for k, b in budget.items()))
    sized = [v.name for v in variants if set(v.changes) & set(SIZE_KEYS)]
    if sized and all(v.config.system.size == "auto" for v in variants):
        notes.append(f"{', '.join(sized)} set model sizes while the others use size=auto: on a CPU the "
                     f"auto size also picks the training budget; pass --size=none (or a size) to keep it equal")
    return notes


def command(job: Job, backend: str, rest: list[str], python: str = sys.executable) -> list[str]:
    v = job.variant
    return [python, "-m", f"modgpt_{backend}.train", "--preset", v.preset, *rest,
            *[f"--{k}={val}" for k, val in v.changes.items()],
            *([] if job.seed is None else [f"--seed={job.seed}"]), f"--out_dir={job.run_dir}"]


def parse_seeds(spec, rest: list[str]) -> list[int | None]:
    """--seeds N (N seeds from --seed on) or S1,S2,...; [None] without --seeds (one run per variant)."""
    if spec is None:
        return [None]
    text = ",".join(map(str, spec)) if isinstance(spec, (list, tuple)) else str(spec).strip()
    hint = "give a number of seeds or a list of distinct seeds (--seeds=3 or --seeds=1337,1338,1339)"
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SweepError(f"--seeds={text}: {hint}") from None
    given = [a.split("=", 1)[1] for a in rest if a.startswith("--seed=")]
    if "," not in text and len(vals) == 1:
        if vals[0] < 1:
            raise SweepError(f"--seeds={text}: {hint}")
        first = int(given[-1]) if given else C.KEY_DEFAULT["seed"]
        return list(range(first, first + vals[0]))
    if not vals:
        raise SweepError(f"--seeds={text}: {hint}")
    if given:
        raise SweepError(f"--seed={given[-1]} and --seeds={text} both set seeds; give them in --seeds only")
    repeated = sorted({x for x in vals if vals.count(x) > 1})
    if repeated:
        raise SweepError(f"--seeds={text} repeats seed {repeated[0]}; {hint}")
    return vals


def visible_gpus() -> list[str]:
    """The GPUs this machine shows (CUDA_VISIBLE_DEVICES, else nvidia-smi); [] on a CPU machine."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [x.strip() for x in out.splitlines() if x.strip().isdigit()]


def parse_parallel(flags: dict, local: bool = True) -> tuple[int, list[str]]:
    """(runs at once, the GPUs they take turns on: [] on a CPU or for SLURM, which places its tasks)."""
    raw = flags.get("parallel_runs", 1)
    try:
        k = int(raw)
    except (TypeError, ValueError):
        k = 0
    if k < 1:
        raise SweepError(f"--parallel_runs must be a whole number >= 1; got '{raw}'")
    if not local:
        return k, []
    given = flags.get("devices")
    devices = [d.strip() for d in str(given).split(",") if d.strip()] if given is not None else visible_gpus()
    if given is not None and (not devices or not all(d.isdigit() for d in devices)):
        raise SweepError(f"--devices must list GPU indices like 0,1,2,3; got '{given}'")
    if devices and k > len(devices):
        raise SweepError(f"--parallel_runs={k} is more than the {len(devices)} GPU(s) available "
                         f"({','.join(devices)}); lower --parallel_runs or list more --devices")
    return k, devices


def dir_name(i: int, name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "+=-_.," else "_" for c in name)
    return f"{i:02d}-{safe}"


def backend_available(backend: str) -> bool:
    """Whether modgpt_<backend>/train.py exists (found without importing the framework)."""
    spec = importlib.util.find_spec(f"modgpt_{backend}")
    locs = spec.submodule_search_locations if spec else None
    return bool(locs) and any(os.path.isfile(os.path.join(d, "train.py")) for d in locs)


def result_line(run_dir: str, rc: int, out_path: str) -> tuple[bool, str]:
    """(ok, one line): the run's status and numbers, or why it failed."""
    try:
        r = CMP.load_run(run_dir)
    except CMP.CompareError:
        r = None
    ok = rc == 0 and r is not None and r.status == "completed"
    if r is None or not ok:
        tail = ""
        if os.path.isfile(out_path):
            with open(out_path, errors="replace") as f:
                lines = [ln.strip() for ln in f if ln.strip()]
            tail = lines[-1] if lines else ""
        status = r.status if r is not None else "no run log"
        return False, f"FAILED (exit {rc}, {status}): {tail or r and r.note or 'no output'} [output: {out_path}]"
    val = f"{r.best_val_loss:.4f} at iter {r.best_val_iter}" if r.best_val_loss is not None else "-"
    tps = f"{r.tokens_per_sec:,.0f} tok/s" if r.tokens_per_sec else "- tok/s"
    return True, f"completed: best val {val}, {r.iters} iters, {tps}, {CMP._wall(r.wall_time)}"


def plan_record(jobs: list[Job], backend: str, argv: list[str], rest: list[str]) -> dict:
    return {"backend": backend, "argv": argv, "runs": [
        {"name": j.variant.name, "seed": j.seed, "dir": j.run_dir, "command": command(j, backend, rest, python="python"),
         "arch_name": C.arch_name(j.variant.config.model)} for j in jobs]}


def check_rerun(sweep_dir: str, record: dict) -> bool:
    """True when sweep_dir holds this same sweep (a re-run: skip the completed runs, resume the rest);
    False when it is new or empty; SweepError when it holds something else."""
    if not os.path.isdir(sweep_dir) or not os.listdir(sweep_dir):
        return False
    path = os.path.join(sweep_dir, "sweep.json")
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        raise SweepError(f"sweep directory '{sweep_dir}' already exists and holds no sweep.json; "
                         f"choose another --name") from None
    was = [(r.get("name"), r.get("seed"), r.get("command")) for r in old.get("runs", [])]
    now = [(r["name"], r["seed"], r["command"]) for r in record["runs"]]
    if old.get("backend") != record["backend"] or was != now:
        def what(r):
            return r[0] + ("" if r[1] is None else f" (seed {r[1]})")
        diff = next((f"run {i + 1}: {what(a)} vs {what(b)}" if a[:2] != b[:2] else f"run {i + 1}: another command"
                     for i, (a, b) in enumerate(zip(was, now)) if a != b), f"{len(was)} runs vs {len(now)}")
        raise SweepError(f"sweep directory '{sweep_dir}' already exists with another plan ({diff}); choose "
                         f"another --name, or repeat that sweep's own command to continue it")
    return True


def run_state(run_dir: str) -> str:
    """completed, resume (a run to continue) or new."""
    try:
        if CMP.load_run(run_dir).status == "completed":
            return "completed"
    except CMP.CompareError:
        pass
    return "resume" if os.path.isfile(os.path.join(run_dir, "config.json")) else "new"


def child_env(k: int) -> dict:
    env = dict(os.environ)
    # Children import this same checkout of the code even when it is not installed.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if k > 1 and "OMP_NUM_THREADS" not in env:  # runs sharing a CPU split its cores instead of fighting over them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // k))
    return env


def run_local(jobs: list[Job], backend: str, rest: list[str], k: int, devices: list[str]) -> list[str]:
    """Run the jobs, k at a time (each on its own GPU when there are GPUs); the labels of those that failed.
    A failed run does not stop the others; Ctrl-C stops every running run at its next step boundary
    (a checkpoint; the same command resumes them)."""
    n, env = len(jobs), child_env(k)
    pending = list(enumerate(jobs, 1))

    def stop(signum, frame):  # SIGTERM (a cluster's preemption) stops the sweep as Ctrl-C does
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, stop)
    running: dict = {}  # Popen -> (index, job, device, output file)
    free = list(devices)
    failed: list[str] = []
    try:
        while pending or running:
            while pending and len(running) < k:
                i, job = pending.pop(0)
                state = run_state(job.run_dir)
                if state == "completed":
                    print(f"[{i}/{n}] {job.label}: already completed; skipped", flush=True)
                    continue
                cmd = command(job, backend, rest) + (["--init_from=resume"] if state == "resume" else [])
                e = dict(env)
                dev = free.pop(0) if devices else None
                if dev is not None:
                    e["CUDA_VISIBLE_DEVICES"] = dev
                where = f", GPU {dev}" if dev is not None else ""
                print(f"[{i}/{n}] {job.label} ({C.arch_name(job.variant.config.model)}{where}): "
                      f"{'resuming' if state == 'resume' else 'starting'}", flush=True)
                f = open(job.out_path, "a")  # a resumed run's output follows its earlier output
                # a session of its own: a Ctrl-C reaches the sweep only, which passes on one SIGTERM (a
                # second signal would make a run stop at once instead of at a checkpoint)
                running[subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=e, start_new_session=True)] = (i, job, dev, f)
            for proc in [p for p in running if p.poll() is not None]:
                i, job, dev, f = running.pop(proc)
                f.close()
                if dev is not None:
                    free.append(dev)
                ok, line = result_line(job.run_dir, proc.returncode, job.out_path)
                print(f"[{i}/{n}] {job.label}: {line}", flush=True)
                if not ok:
                    failed.append(job.label)
            if running:
                time.sleep(0.2)
    except KeyboardInterrupt:
        print(f"interrupted: stopping {len(running)} running run(s) at their next step boundary; run the same "
              f"command again to resume the sweep", flush=True)
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        for proc, (i, job, dev, f) in running.items():
            proc.wait()
            f.close()
            failed.append(job.label)
        failed += [job.label for _, job in pending]
    finally:
        signal.signal(signal.SIGTERM, previous)
    return failed


def slurm_script(jobs: list[Job], backend: str, rest: list[str], flags: dict, sweep_dir: str, k: int) -> str:
    """An sbatch array script: task i runs job i, skipping it when completed and resuming it when started."""
    opt = {key: str(flags.get(key, default)) for key, default in SLURM_FLAGS.items()}
    head = ["#!/bin/bash", f"#SBATCH --job-name=modgpt-{os.path.basename(sweep_dir)}",
            f"#SBATCH --array=0-{len(jobs) - 1}" + (f"%{k}" if k > 1 else ""),
            f"#SBATCH --output={os.path.abspath(sweep_dir)}/slurm-%A_%a.out", "#SBATCH --ntasks=1",
            f"#SBATCH --cpus-per-task={opt['slurm_cpus']}", f"#SBATCH --time={opt['slurm_time']}"]
    if opt["slurm_gpus"] not in ("", "0"):
        head.append(f"#SBATCH --gpus-per-task={opt['slurm_gpus']}")
    for key, name in (("slurm_partition", "partition"), ("slurm_account", "account"), ("slurm_mem", "mem")):
        if opt[key]:
            head.append(f"#SBATCH --{name}={opt[key]}")
    body = ["", "# written by python -m modgpt.sweep: one array task per variant x seed", "set -euo pipefail",
            f"cd {shlex.quote(os.getcwd())}"]
    if opt["slurm_setup"]:
        body.append(opt["slurm_setup"])
    body += ['case "$SLURM_ARRAY_TASK_ID" in']
    for i, job in enumerate(jobs):
        body.append(f"  {i}) dir={shlex.quote(os.path.abspath(job.run_dir))}; "
                    f"cmd=({shlex.join(command(job, backend, rest, python='python'))}) ;;")
    body += ['  *) echo "no task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac",
             "state=$(python -c 'import sys; from modgpt.sweep import run_state; print(run_state(sys.argv[1]))' \"$dir\")",
             'if [ "$state" = completed ]; then echo "$dir: already completed"; exit 0; fi',
             'if [ "$state" = resume ]; then cmd+=(--init_from=resume); fi',
             '"${cmd[@]}" >> "$dir.out" 2>&1']
    return "\n".join(head + body) + "\n"


def report(jobs: list[Job], sweep_dir: str, backend: str) -> None:
    runs = []
    for j in jobs:
        if os.path.isfile(os.path.join(j.run_dir, "log.jsonl")):
            try:
                runs.append(CMP.load_run(j.run_dir))
            except CMP.CompareError as e:
                print(f"note: {e}")
    if runs:
        missing = CMP.missing_runs([sweep_dir])
        print(CMP.summary(runs, missing=missing))
        paths = CMP.write_report(runs, sweep_dir, title=f"Sweep {os.path.basename(sweep_dir)} ({backend})",
                                 missing=missing)
        print(f"report: {paths[0]} (+ results.csv and {len([p for p in paths if p.endswith('.png')])} plots)")


def main(argv: list[str] | None = None) -> int:
    """python -m modgpt.sweep ... (see the module docstring)"""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        flags, rest, file = split_argv(argv)
        if file:
            fflags, frest = read_sweep_file(file)
            cli_vary = flags.pop("vary")
            flags = {**fflags, **flags, "vary": cli_vary or fflags.get("vary", [])}
            rest = frest + rest  # the command line wins: later --key=value overrides earlier ones
        backend = flags.get("backend", "torch")
        if backend not in BACKENDS:
            raise SweepError(f"--backend must be one of {', '.join(BACKENDS)}; got '{backend}'")
        launcher = flags.get("launcher", "local")
        if launcher not in LAUNCHERS:
            raise SweepError(f"--launcher must be one of {', '.join(LAUNCHERS)}; got '{launcher}'"
                             f"{C.suggest(str(launcher), LAUNCHERS)}")
        seeds = parse_seeds(flags.get("seeds"), rest)
        if seeds != [None]:  # each run's --seed comes from --seeds
            rest = [a for a in rest if not a.startswith("--seed=")]
        k, devices = parse_parallel(flags, local=launcher == "local")
        variants = plan(flags, rest)
        runs_dir = flags.get("runs_dir", "runs")
        label = flags.get("base") or "variants"
        sweep_dir = os.path.join(runs_dir, flags.get("name") or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{label}")
        jobs = []
        for i, v in enumerate(variants, 1):
            v.run_dir = os.path.join(sweep_dir, dir_name(i, v.name))
            jobs += [Job(v, s, v.run_dir + ("" if s is None else f"-s{s}")) for s in seeds]
        record = plan_record(jobs, backend, argv, rest)
        dry = flags.get("dry_run")
        if launcher == "slurm" and not dry and not shutil.which("sbatch"):
            raise SweepError("--launcher=slurm needs sbatch on the PATH (not found here); pass --dry_run to write "
                             "the array script without submitting it")
        rerun = check_rerun(sweep_dir, record)
        if not dry and launcher == "local" and not backend_available(backend):
            raise SweepError(f"backend '{backend}' has no training entry point (modgpt_{backend}/train.py "
                             f"not found); pick --backend={'jax' if backend == 'torch' else 'torch'}")
    except (SweepError, C.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = len(jobs)
    for note in fairness_notes(variants, rest):
        print(f"WARNING {note}")
    if dry and launcher == "local":
        print(f"sweep of {n} runs into {sweep_dir} (dry run: nothing is started)")
        for i, j in enumerate(jobs, 1):
            print(f"[{i}/{n}] {j.label}: {shlex.join(command(j, backend, rest, python='python'))}")
        return 0
    os.makedirs(sweep_dir, exist_ok=True)
    write_json(os.path.join(sweep_dir, "sweep.json"), record)
    if launcher == "slurm":
        script = os.path.join(sweep_dir, "sweep.sbatch")
        write_text(script, slurm_script(jobs, backend, rest, flags, sweep_dir, k))
        if dry:
            print(f"wrote {script} ({n} array tasks; dry run: not submitted). Submit it with: sbatch {script}")
            return 0
        p = subprocess.run(["sbatch", script], capture_output=True, text=True)
        if p.returncode != 0:
            print(f"error: sbatch {script} failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}", file=sys.stderr)
            return 1
        print(f"{p.stdout.strip()} ({n} array tasks from {script}); when they are done: "
              f"python -m modgpt.compare {sweep_dir}")
        return 0
    par = f", {k} at a time" + (f" on GPUs {','.join(devices)}" if devices else " sharing the CPU") if k > 1 else ""
    print(f"sweep of {n} runs on {backend} into {sweep_dir}{par}" + (" (continuing it)" if rerun else ""))
    failed = run_local(jobs, backend, rest, k, devices)
    report(jobs, sweep_dir, backend)
    if failed:
        print(f"{len(failed)} of {n} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
