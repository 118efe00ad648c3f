"""Ablation sweeps: a base preset plus one-change-at-a-time variants (or a full grid), each trained as its
own run with the same data, seed and token budget, then compared with modgpt.compare.

    python -m modgpt.sweep --base PRESET --vary OPTION=V1,V2 [--vary ...] [--grid] [--backend jax|torch]
                           [--runs_dir DIR] [--name NAME] [--dry_run] [--key=value ...]
    python -m modgpt.sweep --variants gpt2,gpt2+rope,gpt2+rmsnorm,gpt2+swiglu,llama [--key=value ...]
    python -m modgpt.sweep configs/sweep_classic.py [--key=value ...]

A variant name is PRESET[+CHANGE...], a CHANGE being a name from CHANGES or OPTION=VALUE.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import os
import runpy
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

from modgpt import cli
from modgpt import compare as CMP
from modgpt import config as C
from modgpt.io import write_json
from modgpt.presets import CHANGES, PRESETS, SIZE_KEYS


SWEEP_FLAGS = ("base", "vary", "variants", "grid", "backend", "runs_dir", "name", "dry_run")
BOOL_FLAGS = ("grid", "dry_run")
BACKENDS = ("jax", "torch")
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


def command(v: Variant, backend: str, rest: list[str], python: str = sys.executable) -> list[str]:
    return [python, "-m", f"modgpt_{backend}.train", "--preset", v.preset, *rest,
            *[f"--{k}={val}" for k, val in v.changes.items()], f"--out_dir={v.run_dir}"]


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
        variants = plan(flags, rest)
        runs_dir = flags.get("runs_dir", "runs")
        label = flags.get("base") or "variants"
        sweep_dir = os.path.join(runs_dir, flags.get("name") or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{label}")
        for i, v in enumerate(variants, 1):
            v.run_dir = os.path.join(sweep_dir, dir_name(i, v.name))
        if not flags.get("dry_run"):
            if not backend_available(backend):
                raise SweepError(f"backend '{backend}' has no training entry point (modgpt_{backend}/train.py "
                                 f"not found); pick --backend={'jax' if backend == 'torch' else 'torch'}")
            if os.path.isdir(sweep_dir) and os.listdir(sweep_dir):
                raise SweepError(f"sweep directory '{sweep_dir}' already exists and is not empty; "
                                 f"choose another --name")
    except (SweepError, C.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = len(variants)
    for note in fairness_notes(variants, rest):
        print(f"WARNING {note}")
    if flags.get("dry_run"):
        print(f"sweep of {n} runs into {sweep_dir} (dry run: nothing is started)")
        for i, v in enumerate(variants, 1):
            print(f"[{i}/{n}] {v.name}: {shlex.join(command(v, backend, rest, python='python'))}")
        return 0
    os.makedirs(sweep_dir, exist_ok=True)
    write_json(os.path.join(sweep_dir, "sweep.json"), {
        "backend": backend, "argv": argv, "runs": [
            {"name": v.name, "dir": v.run_dir, "command": command(v, backend, rest, python="python"),
             "arch_name": C.arch_name(v.config.model)} for v in variants]})
    env = dict(os.environ)
    # Children import this same checkout of the code even when it is not installed.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    failed: list[str] = []
    print(f"sweep of {n} runs on {backend} into {sweep_dir}")
    for i, v in enumerate(variants, 1):
        cmd = command(v, backend, rest)
        print(f"[{i}/{n}] {v.name} ({C.arch_name(v.config.model)}): starting", flush=True)
        out_path = v.run_dir + ".out"
        try:
            with open(out_path, "w") as f:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env).returncode
        except KeyboardInterrupt:
            print(f"[{i}/{n}] {v.name}: interrupted; stopping the sweep", flush=True)
            failed.append(v.name)
            break
        ok, line = result_line(v.run_dir, rc, out_path)
        print(f"[{i}/{n}] {v.name}: {line}", flush=True)
        if not ok:
            failed.append(v.name)
    done = [v.run_dir for v in variants if os.path.isfile(os.path.join(v.run_dir, "log.jsonl"))]
    runs = []
    for d in done:
        try:
            runs.append(CMP.load_run(d))
        except CMP.CompareError as e:
            print(f"note: {e}")
    if runs:
        print(CMP.summary(runs))
        paths = CMP.write_report(runs, sweep_dir, title=f"Sweep {os.path.basename(sweep_dir)} ({backend})")
        print(f"report: {paths[0]} (+ results.csv and {len(paths) - 2} plots)")
    if failed:
        print(f"{len(failed)} of {n} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
