"""Compare runs of either backend: a table sorted by best val loss, Markdown/CSV, four loss plots and
an "impact" section that attributes val-loss differences to the one model option that changed.

    python -m modgpt.compare [--latest N | RUN_DIR ...] [--runs_dir DIR] [--out DIR]
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

from modgpt import config as C
from modgpt import runlog
from modgpt.presets import CHANGES
from modgpt.io import write_bytes, write_text

WARMUP_NOTE = ("tokens/s and MFU: median of the iter records of each run, leaving out the first 10% "
               "(at least one) of every run segment as compile/warm-up")
# Training options that change what is learned or measured; the rest (paths, logging) do not.
TRAIN_NEUTRAL = {"out_dir", "data_dir", "progress", "log_interval", "keep_checkpoints", "compile", "sample_at_end",
                 "wandb", "wandb_project", "wandb_entity", "wandb_run_name", "wandb_tags", "tensorboard",
                 "tensorboard_dir"}
PLOTS = (("step", "step", "iteration"), ("tokens", "tokens", "tokens seen"),
         ("flops", "flops", "training FLOPs (tokens x FLOPs/token)"), ("time", "time", "wall-clock seconds"))
# CSV columns: Run attribute names (raw numbers, machine-readable), "run" being the name.
CSV_COLS = ("run", "status", "backend", "arch_name", "params", "flops_per_token", "iters", "tokens", "train_loss",
            "best_val_loss", "best_val_bpb", "delta", "delta_pct", "tokens_per_sec", "mfu", "peak_mem_bytes", "wall_time",
            "train_flops", "dir")


class CompareError(RuntimeError):
    """Bad input (missing or empty log, nothing to compare); printed as one line, exit 2."""


@dataclass
class Run:
    """One run's summary plus the curves the plots need."""
    dir: str
    name: str
    status: str  # completed | interrupted | failed | crashed | running
    backend: str = "?"
    arch_name: str = "?"
    params: int | None = None
    flops_per_token: float | None = None
    iters: int | None = None
    tokens: int | None = None
    train_loss: float | None = None
    best_val_loss: float | None = None
    best_val_iter: int | None = None
    best_val_bpb: float | None = None  # bits per byte: comparable across tokenizers
    tokens_per_sec: float | None = None
    mfu: float | None = None
    peak_mem_bytes: int | None = None
    wall_time: float | None = None
    config: dict | None = None  # flat config
    note: str = ""
    delta: float | None = None
    delta_pct: float | None = None
    train_curve: list = field(default_factory=list)  # (step, tokens, elapsed_s, loss)
    val_curve: list = field(default_factory=list)
    bpb_curve: list = field(default_factory=list)  # (step, tokens, elapsed_s, val_bpb)
    task_curves: dict = field(default_factory=dict)  # task -> [(step, tokens, elapsed_s, acc_norm)]

    def task_score(self, task: str) -> float | None:
        """The task's acc_norm at the run's last evaluation."""
        pts = self.task_curves.get(task)
        return pts[-1][3] if pts else None

    @property
    def train_flops(self) -> float | None:
        return self.tokens * self.flops_per_token if self.tokens is not None and self.flops_per_token else None


def _num(v) -> float | None:
    """A logged number (non-finite values are logged as strings) or None."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _finite(v) -> float | None:
    f = _num(v)
    return f if f is not None and math.isfinite(f) else None


def lock_held(run_dir: str) -> bool:
    """True while a live process holds the run's flock (modgpt.io.RunLock); a dead one releases it."""
    import fcntl
    try:
        fd = os.open(os.path.join(run_dir, ".lock"), os.O_RDONLY)
    except OSError:  # no lock file: never locked
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released again when fd closes
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def load_run(run_dir: str) -> Run:
    """Summarize one run directory from its log.jsonl (and config.json when the header lacks it)."""
    path = os.path.join(run_dir, runlog.LOG_NAME)
    if not os.path.isfile(path):
        raise CompareError(f"no run log at '{path}' (is '{run_dir}' a run directory?)")
    recs = runlog.read(path)
    if not recs:
        raise CompareError(f"run log '{path}' is empty: the run wrote nothing yet")
    run = Run(dir=run_dir, name=os.path.basename(os.path.normpath(run_dir)), status="crashed")
    headers = [r for r in recs if r["type"] == "header"]
    head = headers[-1] if headers else {}
    run.backend = head.get("backend", "?")
    run.arch_name = head.get("arch_name", "?")
    run.params = head.get("params")
    run.flops_per_token = _num(head.get("flops_per_token"))
    tpi = head.get("tokens_per_iter")
    cfg = head.get("config") or {}  # the resolved config (sections), as the run used it
    run.config = {k: v for kw in cfg.values() if isinstance(kw, dict) for k, v in kw.items()} or None
    # Walk the segments (a resumed run appends a new header): elapsed time sums the segments.
    elapsed_base, seg_t0, seg_last, segments, seg_iters = 0.0, None, None, [], []
    last_end = None
    for r in recs:
        t = _num(r.get("time"))
        if r["type"] == "header":
            if seg_t0 is not None:
                elapsed_base += seg_last - seg_t0
            seg_t0 = seg_last = t
            last_end = None
            seg_iters = []
            segments.append(seg_iters)
            continue
        if seg_t0 is None:
            seg_t0 = seg_last = t  # a log without a header: time from its first record
            segments.append(seg_iters)
        if t is not None:
            seg_last = max(seg_last or t, t)
        elapsed = elapsed_base + (t - seg_t0) if t is not None and seg_t0 is not None else None
        it = r.get("iter")
        if isinstance(it, int):  # steps taken: an iter record's step is done; eval/end sit at a boundary
            run.iters = max(run.iters or 0, it + 1 if r["type"] == "iter" else it)
        tok = r.get("tokens_seen")
        if tok is None and isinstance(it, int) and tpi:
            tok = it * tpi
        if r["type"] in ("iter", "eval") and tok is not None:
            run.tokens = max(run.tokens or 0, int(tok))
        if r["type"] == "iter":
            seg_iters.append(r)
            loss = _num(r.get("loss"))
            if loss is not None:
                run.train_curve.append((it, tok, elapsed, loss))
                run.train_loss = loss
            mem = r.get("peak_mem_bytes")
            if isinstance(mem, (int, float)):
                run.peak_mem_bytes = max(run.peak_mem_bytes or 0, int(mem))
        elif r["type"] == "eval":
            val = _num(r.get("val_loss"))
            if val is not None:
                run.val_curve.append((it, tok, elapsed, val))
            if _finite(val) is not None and (run.best_val_loss is None or val < run.best_val_loss):
                run.best_val_loss, run.best_val_iter = val, it
            for key, v in r.items():
                if key.endswith("_acc_norm") and _finite(_num(v)) is not None:
                    run.task_curves.setdefault(key[:-len("_acc_norm")], []).append((it, tok, elapsed, float(v)))
            bpb = _finite(_num(r.get("val_bpb")))
            if bpb is not None:
                run.bpb_curve.append((it, tok, elapsed, bpb))
                run.best_val_bpb = bpb if run.best_val_bpb is None else min(run.best_val_bpb, bpb)
        elif r["type"] == "end":
            last_end = r
    if seg_t0 is not None and seg_last is not None:
        run.wall_time = elapsed_base + seg_last - seg_t0
    # A resumed run repeats the steps after its last checkpoint: the later segment's points win.
    run.train_curve = sorted({p[0]: p for p in run.train_curve}.values(), key=lambda p: p[0])
    run.val_curve = sorted({p[0]: p for p in run.val_curve}.values(), key=lambda p: p[0])
    run.bpb_curve = sorted({p[0]: p for p in run.bpb_curve}.values(), key=lambda p: p[0])
    run.task_curves = {k: sorted({p[0]: p for p in v}.values(), key=lambda p: p[0]) for k, v in run.task_curves.items()}
    evals = [r for r in recs if r["type"] == "eval" and _num(r.get("train_loss")) is not None]
    if evals:  # the eval estimate is steadier than one batch's loss
        run.train_loss = _num(evals[-1]["train_loss"])
    if run.best_val_loss is None and last_end is not None:
        run.best_val_loss = _finite(last_end.get("best_val_loss"))
    tps, mfus = [], []
    for seg in segments:
        for r in seg[max(1, len(seg) // 10) if len(seg) > 1 else 0:]:
            if _finite(r.get("tokens_per_sec")):
                tps.append(float(r["tokens_per_sec"]))
            if _finite(r.get("mfu")) is not None:
                mfus.append(float(r["mfu"]))
    run.tokens_per_sec = statistics.median(tps) if tps else None
    run.mfu = statistics.median(mfus) if mfus else None
    if last_end is not None:
        run.status = last_end.get("status", "failed")
        if run.status != "completed" and last_end.get("message"):
            run.note = f"{run.status} at iter {last_end.get('iter', run.iters)}: {last_end['message']}"
    else:
        run.status = "running" if lock_held(run_dir) else "crashed"
        last = recs[-1]
        what = last.get("event") or last.get("message") or ""
        run.note = (f"{run.status}: no end record; logged {run.iters or 0} steps"
                    f" (last record: {last['type']}{' ' + what if what else ''})")
    if run.status not in ("completed", "running", "interrupted", "failed", "crashed"):
        run.status = "failed"
    return run


def find_runs(runs_dir: str, latest: int | None = None) -> list[str]:
    """Run directories (those holding a log) under runs_dir, oldest first; the newest `latest` if given."""
    if not os.path.isdir(runs_dir):
        raise CompareError(f"runs directory '{runs_dir}' not found")
    dirs = [os.path.join(runs_dir, d) for d in os.listdir(runs_dir)
            if os.path.isfile(os.path.join(runs_dir, d, runlog.LOG_NAME))]
    dirs.sort(key=lambda d: (os.path.getmtime(os.path.join(d, runlog.LOG_NAME)), d))
    if latest is not None:
        dirs = dirs[-latest:] if latest > 0 else []
    if not dirs:
        raise CompareError(f"no runs (directories with a {runlog.LOG_NAME}) in '{runs_dir}'")
    return dirs


def expand(paths: list[str]) -> list[str]:
    """Run dirs as given; a directory without a log but with run subdirectories (a sweep) expands."""
    out = []
    for p in paths:
        if not os.path.isdir(p):
            raise CompareError(f"run directory '{p}' not found")
        if os.path.isfile(os.path.join(p, runlog.LOG_NAME)):
            out.append(p)
            continue
        subs = sorted(os.path.join(p, d) for d in os.listdir(p)
                      if os.path.isfile(os.path.join(p, d, runlog.LOG_NAME)))
        out.extend(subs or [p])  # no subruns: load_run reports the missing log
    return out


# What runs are ranked by: validation loss (one tokenizer and validation set), or bits per byte
# (any tokenizer); the Run attribute holding each run's best and the curve plotted.
METRICS = {"val_loss": ("best_val_loss", "val_curve", "val loss"), "val_bpb": ("best_val_bpb", "bpb_curve", "val bpb")}


def rank(runs: list[Run], metric: str = "val_loss") -> list[Run]:
    """Sort by the best value of the metric (runs without one last) and fill in the difference to the best."""
    attr = METRICS[metric][0]
    ranked = sorted(runs, key=lambda r: (getattr(r, attr) is None, getattr(r, attr) or 0.0, r.name))
    best = getattr(ranked[0], attr) if ranked else None
    for r in ranked:
        r.delta = r.delta_pct = None
        if getattr(r, attr) is not None and best is not None:
            r.delta = getattr(r, attr) - best
            r.delta_pct = 100.0 * r.delta / best if best else None
    return ranked


# ---------------------------------------------------------------------------------------------
# Formatting.
def _si(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.{digits}f}{unit}"
    return f"{v:.0f}"


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _mem(n) -> str:
    if not n:
        return "-"
    return f"{n / 2**30:.2f}GiB" if n >= 2**30 else f"{n / 2**20:.0f}MiB"


def _wall(s) -> str:
    if s is None:
        return "-"
    return f"{s / 3600:.1f}h" if s >= 3600 else f"{s / 60:.1f}m" if s >= 120 else f"{s:.0f}s"


HEADERS = ("#", "run", "status", "backend", "arch", "params", "FLOPs/tok", "iters", "tokens", "train loss",
           "best val", "best bpb", "vs best", "vs best %", "tok/s", "MFU", "peak mem", "wall")


def task_names(runs: list[Run]) -> list[str]:
    """The evaluation tasks any of the runs scored (--eval_tasks), in a fixed order."""
    return sorted({t for r in runs for t in r.task_curves})


def headers(runs: list[Run]) -> tuple[str, ...]:
    return HEADERS + tuple(f"{t} acc_norm" for t in task_names(runs))


def table_rows(runs: list[Run]) -> list[list[str]]:
    rows = []
    tasks = task_names(runs)
    for i, r in enumerate(runs, 1):
        rows.append([str(i), r.name, r.status, r.backend, r.arch_name, _si(r.params), _si(r.flops_per_token),
                     _f(r.iters, "d"), _si(r.tokens), _f(r.train_loss, ".4f"), _f(r.best_val_loss, ".4f"),
                     _f(r.best_val_bpb, ".4f"), _f(r.delta, "+.4f"), _f(r.delta_pct, "+.2f"), _f(r.tokens_per_sec, ",.0f"),
                     "-" if r.mfu is None else f"{100 * r.mfu:.1f}%", _mem(r.peak_mem_bytes), _wall(r.wall_time)]
                    + [_f(r.task_score(t), ".4f") for t in tasks])
    return rows


def text_table(runs: list[Run]) -> str:
    rows = [list(headers(runs))] + table_rows(runs)
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def markdown_table(runs: list[Run]) -> str:
    head = headers(runs)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table_rows(runs)]
    return "\n".join(lines)


def csv_text(runs: list[Run]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    tasks = task_names(runs)
    w.writerow(("rank",) + CSV_COLS + tuple(f"{t}_acc_norm" for t in tasks))
    for i, r in enumerate(runs, 1):
        vals = [getattr(r, "name" if c == "run" else c) for c in CSV_COLS] + [r.task_score(t) for t in tasks]
        w.writerow([i] + ["" if v is None else v for v in vals])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Impact: attribute val-loss differences to the model option(s) that changed.
def _model_diff(a: dict, b: dict) -> list[str]:
    return [k for k, sec in C.KEY_SECTION.items() if sec == "model" and a.get(k) != b.get(k)]


def _train_diff(a: dict, b: dict, ignore: tuple = ()) -> list[str]:
    def norm(k, v):
        return "scratch" if k == "init_from" and v == "resume" else v  # a resumed run is still from scratch
    return [k for k, sec in C.KEY_SECTION.items() if sec == "train" and k not in TRAIN_NEUTRAL
            and k not in ignore and norm(k, a.get(k)) != norm(k, b.get(k))]


def _named_change(keys: list[str]) -> bool:
    """Several options that one named change sets together (swiglu = ffn_type + activation)."""
    return any(set(ch) == set(keys) for ch in CHANGES.values())


def unfair(a: Run, b: Run) -> list[str]:
    """Why comparing a and b is not like for like: training options, tokens seen, unfinished runs."""
    why = [f"{k} {a.config.get(k)!r} vs {b.config.get(k)!r}" for k in _train_diff(a.config, b.config)]
    if a.tokens and b.tokens and abs(a.tokens - b.tokens) > 0.01 * max(a.tokens, b.tokens):
        why.append(f"tokens seen {a.tokens:,} vs {b.tokens:,}")
    why += [f"{r.name} is {r.status}" for r in (a, b) if r.status != "completed"]
    return why


def impact(runs: list[Run]) -> tuple[list[str], list[str]]:
    """(attribution lines, warnings) for every pair whose model configs differ in exactly one option."""
    lines, warns = [], []
    usable = [r for r in runs if r.config is not None and r.best_val_loss is not None]
    for i, a in enumerate(usable):
        for b in usable[i + 1:]:
            keys = _model_diff(a.config, b.config)
            if not keys or (len(keys) > 1 and not _named_change(keys)):
                continue
            d = b.best_val_loss - a.best_val_loss
            pct = 100.0 * d / a.best_val_loss if a.best_val_loss else float("nan")
            change = ", ".join(f"{k}: {a.config.get(k)} -> {b.config.get(k)}" for k in keys)
            line = f"{change}: val loss {d:+.4f} ({pct:+.1f}%)  [{a.name} -> {b.name}]"
            why = unfair(a, b)
            if why:
                line += "  WARNING not a fair comparison: " + "; ".join(why)
            lines.append(line)
    if len(usable) > 1:
        ref = usable[0]
        ignore = ("seed",) if seeded(runs) else ()  # seeds are the replicates of a seeded comparison
        for r in usable[1:]:
            keys = _train_diff(ref.config, r.config, ignore)
            if keys:
                warns.append(f"{r.name} differs from {ref.name} in training options ({', '.join(keys)}): "
                             f"loss differences are not due to the architecture alone")
    return lines, warns


# ---------------------------------------------------------------------------------------------
# Seeds: runs that differ only in their seed, compared as variants (modgpt.stats).
SEED_CSV = ("axis", "at", "variant", "change", "n", "seeds", "mean", "sd", "ci_lo", "ci_hi", "best_mean", "best_sd",
            "diff", "diff_ci_lo", "diff_ci_hi", "p", "test", "effect_size", "verdict")
AXES = (("tokens", "equal tokens", "tokens"), ("flops", "equal training FLOPs", "FLOPs"))


def one_change(base: dict | None, other: dict | None) -> str:
    """The model option (or named change) by which other differs from base, or "" when not one."""
    if not base or not other:
        return ""
    keys = _model_diff(base, other)
    for name, ch in CHANGES.items():
        if keys and set(ch) == set(keys) and all(str(other.get(k)) == str(v) for k, v in ch.items()):
            return f"+{name}"
    if len(keys) == 1:
        return f"{keys[0]}: {base.get(keys[0])} -> {other.get(keys[0])}"
    return ""


def seeded(runs: list[Run]) -> bool:
    from modgpt import stats as ST
    return any(len(g.runs) > 1 for g in ST.group(runs))


def seed_tables(runs: list[Run], metric: str) -> dict:
    """axis -> stats rows of every variant against the first (the base)."""
    from modgpt import stats as ST
    groups = ST.group(runs)
    base = groups[0].config
    return {axis: ST.table(groups, metric, axis, lambda g: one_change(base, g.config)) for axis, _, _ in AXES}


def _ci(lo, hi, fmt: str = ".4f") -> str:
    return "-" if lo is None else f"[{lo:{fmt}}, {hi:{fmt}}]"


def seed_row_cells(row) -> list[str]:
    from modgpt import stats as ST
    v, b, d = row.value, row.best, row.diff
    return [row.group.name, str(len(row.group.runs)), _f(v and v.mean, ".4f"), _f(v and v.sd, ".4f"),
            _ci(v and v.lo, v and v.hi), "-" if b is None else f"{b.mean:.4f} ± {_f(b.sd, '.4f')}",
            "base" if d is None else f"{d.mean:+.4f}", "-" if d is None else _ci(d.lo, d.hi, "+.4f"),
            "-" if d is None or d.p is None else f"{d.p:.3g}", "-" if d is None else d.test,
            "-" if d is None or d.effect is None else f"{d.effect:+.2f}", "" if d is None else ST.verdict(d)]


def seed_markdown(runs: list[Run], metric: str) -> list[str]:
    tables = seed_tables(runs, metric)
    name = METRICS[metric][2]
    base = tables["tokens"][0].group
    lines = ["## Seeds and significance", "",
             f"Runs that differ only in their seed are one variant. Each variant's {name} is taken at the largest "
             f"budget every run reached (interpolated between evaluations), at equal tokens and at equal training "
             f"FLOPs, and compared with the base variant **{base.name}**: a paired t-test where the seeds pair up "
             f"(a seed gives the same batches in every variant), Welch's t-test otherwise; 95% intervals; effect "
             f"size Cohen's d (paired: the mean difference over the differences' sd). Negative differences are "
             f"better. p >= 0.05 is marked not distinguishable from noise.", ""]
    head = ["variant", "n", "mean", "sd", "95% CI", "best (mean ± sd)", "vs base", "95% CI", "p", "test",
            "effect d", "verdict"]
    for axis, title, unit in AXES:
        rows = tables[axis]
        at = rows[0].at
        lines += [f"### At {title} ({_si(at)} {unit})" if at else f"### At {title} (no common budget)", "",
                  "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in seed_row_cells(r)) + " |" for r in rows]
        lines.append("")
    ranked = sorted((r for r in tables["tokens"] if r.change and r.diff is not None), key=lambda r: r.diff.mean)
    if ranked:
        from modgpt import stats as ST
        flops = {r.group.name: r for r in tables["flops"]}
        lines += ["### Which component helps most", "",
                  f"Variants one change away from {base.name}, ranked by the difference at equal tokens.", "",
                  "| change | variant | vs base, equal tokens [95% CI] | p | verdict | vs base, equal FLOPs [95% CI] | p | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in ranked:
            f = flops[r.group.name].diff
            cells = [r.change, r.group.name, f"{r.diff.mean:+.4f} {_ci(r.diff.lo, r.diff.hi, '+.4f')}",
                     _f(r.diff.p, ".3g"), ST.verdict(r.diff),
                     "-" if f is None else f"{f.mean:+.4f} {_ci(f.lo, f.hi, '+.4f')}",
                     "-" if f is None else _f(f.p, ".3g"), ST.verdict(f)]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return lines


def seed_csv(runs: list[Run], metric: str) -> str:
    """The seed tables' numbers, unrounded: the Markdown report's figures, machine-readable."""
    from modgpt import stats as ST
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SEED_CSV)
    for axis, rows in seed_tables(runs, metric).items():
        for r in rows:
            v, b, d = r.value, r.best, r.diff
            vals = [axis, r.at, r.group.name, r.change, len(r.group.runs), " ".join(map(str, r.group.seeds)),
                    v and v.mean, v and v.sd, v and v.lo, v and v.hi, b and b.mean, b and b.sd,
                    d and d.mean, d and d.lo, d and d.hi, d and d.p, "" if d is None else d.test,
                    d and d.effect, "" if d is None else ST.verdict(d)]
            w.writerow(["" if x is None else x for x in vals])
    return buf.getvalue()


def plot_seeds(runs: list[Run], metric: str) -> bytes:
    """PNG bytes: each variant's mean validation curve over its seeds, with a min-max band, against
    tokens (left) and training FLOPs (right)."""
    from modgpt import stats as ST
    fig, axes = _figure()
    for ax, (axis, title, unit) in zip(axes, AXES):
        for g in ST.group(runs):
            curves = [ST.curve(r, metric, axis) for r in g.runs]
            xs = sorted(set.intersection(*[{x for x, _ in c} for c in curves])) if all(curves) else []
            if not xs:
                continue
            ys = [[dict(c)[x] for c in curves] for x in xs]
            mean = [sum(y) / len(y) for y in ys]
            line, = ax.plot(xs, mean, "-", marker="o", markersize=3, label=f"{g.name} (n={len(g.runs)})")
            ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], color=line.get_color(), alpha=0.2)
        _label(ax, f"{METRICS[metric][2]}: mean over seeds, min-max band, vs {unit}", unit)
    return _png(fig)


def missing_runs(paths: list[str]) -> list[str]:
    """Runs a sweep directory's sweep.json plans that have not completed: their names and state."""
    import json
    out = []
    for p in paths:
        plan = os.path.join(p, "sweep.json")
        if not os.path.isfile(plan):
            continue
        try:
            with open(plan) as f:
                planned = json.load(f).get("runs", [])
        except (OSError, ValueError):
            continue
        for r in planned:
            d = r.get("dir", "")
            d = d if os.path.isabs(d) or os.path.isdir(d) else os.path.join(p, os.path.basename(d))
            try:
                status = load_run(d).status
            except CompareError:
                status = "not started"
            if status != "completed":
                out.append(f"{os.path.basename(d)} ({status})")
    return out


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib's object API on the Agg canvas: no pyplot, no display, no global state).
def _figure():
    """A two-panel figure on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, 2)


def _label(ax, title: str, xlabel: str, ylabel: str | None = None) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _xs(points, kind: str, fpt):
    idx = {"step": 0, "tokens": 1, "time": 2, "flops": 1}[kind]
    out = []
    for p in points:
        x = p[idx]
        if x is None or (kind == "flops" and not fpt):
            continue
        out.append((x * fpt if kind == "flops" else x, p[3]))
    return out


def plot(runs: list[Run], kind: str, xlabel: str, metric: str = "val_loss") -> bytes:
    """PNG bytes: train loss (left) and the validation metric (right) of every run against one x axis."""
    fig, axes = _figure()
    _, val_curve, val_title = METRICS[metric]
    for ax, curve, title in ((axes[0], "train_curve", "train loss"), (axes[1], val_curve, val_title)):
        for r in runs:
            pts = [(x, y) for x, y in _xs(getattr(r, curve), kind, r.flops_per_token) if math.isfinite(y)]
            if pts:
                label = r.name + ("" if r.status == "completed" else f" ({r.status})")
                style = "-" if r.status in ("completed", "running") else "--"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o" if curve != "train_curve" else None,
                        markersize=3, linewidth=1.2, label=label)
        _label(ax, f"{title} vs {xlabel}", xlabel, "bits per byte" if curve == "bpb_curve" else "loss")
    return _png(fig)


def plot_task(runs: list[Run], task: str) -> bytes:
    """PNG bytes: the task's acc_norm at each evaluation against tokens (left) and training FLOPs (right)."""
    fig, axes = _figure()
    for ax, (_, kind, xlabel) in zip(axes, (PLOTS[1], PLOTS[2])):
        for r in runs:
            pts = _xs(r.task_curves.get(task, []), kind, r.flops_per_token)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", marker="o", markersize=3, label=r.name)
        _label(ax, f"{task} acc_norm vs {xlabel}", xlabel, "acc_norm")
    return _png(fig)


# ---------------------------------------------------------------------------------------------
def report_markdown(runs: list[Run], plots: list[str], title: str = "Run comparison", metric: str = "val_loss",
                    missing: list[str] | None = None) -> str:
    """runs in input order: impact pairs read first -> second in that order (a sweep's base first)."""
    order, runs = runs, rank(runs, metric)
    by = "bits per byte" if metric == "val_bpb" else "validation loss"
    lines = [f"# {title}", "", f"{len(runs)} runs, sorted by best {by}. {WARMUP_NOTE}.", "",
             markdown_table(runs), ""]
    notes = [f"- **{r.name}**: {r.note}" for r in runs if r.note]
    notes += [f"- **{m}**: planned by the sweep, missing from this report" for m in missing or []]
    if notes:
        lines += ["## Unfinished or failed runs", ""] + notes + [""]
    att, warns = impact(order)
    if seeded(order):
        lines += seed_markdown(order, metric)
    else:
        lines += ["## Impact", "", "Pairs of runs whose model configs differ in one option (or one named change); "
                  "the difference is the second run's best val loss minus the first's.", ""]
        lines += [f"- {x}" for x in att] or ["- no pair of runs differs in exactly one model option"]
    if warns:
        lines += ["", "Warnings:", ""] + [f"- WARNING {w}" for w in warns]
    lines += ["", "## Loss curves", "", "The FLOPs view is the compute-fair one: architectures differ in FLOPs "
              "per token.", ""]
    lines += [f"![{p[:-4].replace('_', ' ')}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(runs: list[Run], out_dir: str, title: str = "Run comparison", metric: str = "val_loss",
                 missing: list[str] | None = None) -> list[str]:
    """Write report.md, results.csv and the four plots (with seeds: also seeds.csv and the mean-curve
    plot) into out_dir (atomically); return the paths."""
    paths, plots = [], []
    if seeded(runs):
        write_text(os.path.join(out_dir, "seeds.csv"), seed_csv(runs, metric))
        write_bytes(os.path.join(out_dir, "seeds_mean_curves.png"), plot_seeds(runs, metric))
        plots.append("seeds_mean_curves.png")
        paths.append(os.path.join(out_dir, "seeds.csv"))
    for name, kind, xlabel in PLOTS:
        fname = f"loss_vs_{name}.png"
        write_bytes(os.path.join(out_dir, fname), plot(rank(runs, metric), kind, xlabel, metric))
        plots.append(fname)
    for task in task_names(runs):
        fname = f"{task}_vs_tokens_flops.png"
        write_bytes(os.path.join(out_dir, fname), plot_task(rank(runs, metric), task))
        plots.append(fname)
    paths += [os.path.join(out_dir, p) for p in plots]
    write_text(os.path.join(out_dir, "results.csv"), csv_text(rank(runs, metric)))
    write_text(os.path.join(out_dir, "report.md"), report_markdown(runs, plots, title, metric, missing))
    return [os.path.join(out_dir, "report.md"), os.path.join(out_dir, "results.csv")] + paths


def summary(runs: list[Run], metric: str = "val_loss", missing: list[str] | None = None) -> str:
    """The table plus notes and impact lines (with seeds: the variants' statistics), as printed on the
    terminal."""
    out = [text_table(rank(runs, metric)), f"({WARMUP_NOTE})"]
    out += [f"note: {r.name}: {r.note}" for r in rank(runs, metric) if r.note]
    if missing:
        out.append(f"missing: {len(missing)} planned run(s) not completed: {', '.join(missing)}")
    att, warns = impact(runs)
    if seeded(runs):
        from modgpt import stats as ST
        for axis, rows in seed_tables(runs, metric).items():
            out.append(f"at equal {axis} ({_si(rows[0].at)}): {METRICS[metric][2]} mean [95% CI], vs {rows[0].group.name}:")
            for r in rows:
                v, d = r.value, r.diff
                line = f"  {r.group.name} (n={len(r.group.runs)}): " + ("-" if v is None else f"{v.mean:.4f} {_ci(v.lo, v.hi)}")
                if d is not None:
                    line += f", {d.mean:+.4f} {_ci(d.lo, d.hi, '+.4f')}, p={_f(d.p, '.3g')}: {ST.verdict(d)}"
                out.append(line)
    else:
        out += ["impact:"] + [f"  {x}" for x in att] if att else []
    out += [f"WARNING {w}" for w in warns]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """python -m modgpt.compare [--latest N | RUN_DIR ...] [--runs_dir DIR] [--out DIR]"""
    p = argparse.ArgumentParser(prog="python -m modgpt.compare", description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="*", help="run directories (or a sweep directory)")
    p.add_argument("--latest", type=int, help="the N most recent runs in --runs_dir")
    p.add_argument("--runs_dir", default="runs")
    p.add_argument("--out", help="report directory (default <runs_dir>/compare-<time>)")
    p.add_argument("--metric", default="val_loss", help="rank and plot by val_loss (one tokenizer) or val_bpb "
                                                        "(bits per byte: comparable across tokenizers)")
    a = p.parse_args(argv)
    try:
        if a.run_dirs and a.latest is not None:
            raise CompareError("give either --latest N or RUN_DIRs, not both")
        if a.metric not in METRICS:
            raise CompareError(f"option '--metric' must be one of {', '.join(METRICS)}; got '{a.metric}'")
        dirs = expand(a.run_dirs) if a.run_dirs else find_runs(a.runs_dir, a.latest)
        missing = missing_runs(a.run_dirs)
        runs = [load_run(d) for d in dirs]
        out = a.out or os.path.join(a.runs_dir, "compare-" + time.strftime("%Y%m%d-%H%M%S"))
        print(summary(runs, a.metric, missing))
        paths = write_report(runs, out, metric=a.metric, missing=missing)
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    extra = "".join(f", {os.path.basename(p)}" for p in paths[2:] if not p.endswith(".png"))
    print(f"wrote {paths[0]}, {os.path.basename(paths[1])}{extra} and "
          f"{sum(p.endswith('.png') for p in paths)} plots in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
