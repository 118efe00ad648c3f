"""Seeded comparisons: runs that differ only in their seed form a variant; each variant is compared
with the base variant at equal tokens and at equal training FLOPs, with confidence intervals, a
p-value and an effect size.

The tests and intervals come from scipy.stats (a paired t-test where the seeds pair up: the same seed
gives the same batches in every variant; Welch's t-test otherwise). scipy is a core dependency: the
t quantiles and tests need its special functions, and every scientific Python stack has it.

A value "at equal tokens" or "at equal FLOPs" is a run's validation curve interpolated linearly at
the largest budget every compared run reached (for runs with one token budget, their final
evaluation); FLOPs are tokens x the architecture's training FLOPs per token (modgpt.flops).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

ALPHA = 0.05  # 95% intervals; a difference is "distinguishable from noise" when p < ALPHA
# Options that differ between runs without changing what is compared.
NEUTRAL = {"seed", "out_dir", "data_dir", "progress", "log_interval", "keep_checkpoints", "compile",
           "sample_at_end", "init_from", "wandb", "wandb_project", "wandb_entity", "wandb_run_name", "wandb_tags",
           "tensorboard", "tensorboard_dir", "device"}
SEED_SUFFIX = re.compile(r"-s\d+$")  # the sweep's run directories: NN-variant-sSEED
SWEEP_INDEX = re.compile(r"^\d+-")


@dataclass
class Summary:
    """n values of one variant: mean, sample standard deviation and the mean's 95% interval."""
    n: int
    mean: float
    sd: float | None
    lo: float | None
    hi: float | None


@dataclass
class Diff:
    """variant - base: the mean difference, its 95% interval, the test's p-value and effect size."""
    mean: float
    lo: float | None
    hi: float | None
    p: float | None
    effect: float | None  # Cohen's d (paired: d_z, the mean difference over its sd)
    test: str  # "paired t (n pairs)", "Welch t", or why there is none
    n: int = 0

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < ALPHA


@dataclass
class Group:
    """Runs with one config but for the seed (and options that change nothing compared)."""
    name: str
    runs: list = field(default_factory=list)
    config: dict | None = None

    @property
    def seeds(self) -> list:
        return [(r.config or {}).get("seed") for r in self.runs]


def summarize(values: list[float]) -> Summary | None:
    from scipy import stats
    n = len(values)
    if n == 0:
        return None
    mean = sum(values) / n
    if n < 2:
        return Summary(n, mean, None, None, None)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(1 - ALPHA / 2, n - 1) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


def difference(base: dict, other: dict) -> Diff | None:
    """other - base from {seed: value} of each; paired when every seed of both is in the other."""
    from scipy import stats
    if not base or not other:
        return None
    a, b = list(base.values()), list(other.values())
    mean = sum(b) / len(b) - sum(a) / len(a)
    if set(base) == set(other) and len(base) >= 2:
        d = [other[s] - base[s] for s in sorted(base)]
        n = len(d)
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
        if sd == 0:  # identical differences: the interval has no width and t is undefined
            return Diff(mean, mean, mean, None, None, f"paired: all {n} differences equal", n)
        half = stats.t.ppf(1 - ALPHA / 2, n - 1) * sd / math.sqrt(n)
        seeds = sorted(base)
        p = float(stats.ttest_rel([other[s] for s in seeds], [base[s] for s in seeds]).pvalue)
        return Diff(mean, mean - half, mean + half, p, mean / sd, f"paired t ({n} seeds)", n)
    if len(a) < 2 or len(b) < 2:
        return Diff(mean, None, None, None, None, "n=1: no interval", min(len(a), len(b)))
    va, vb = _var(a), _var(b)
    se = math.sqrt(va / len(a) + vb / len(b))
    if se == 0:
        return Diff(mean, mean, mean, None, None, "Welch: no spread in either variant", min(len(a), len(b)))
    df = se ** 4 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    half = stats.t.ppf(1 - ALPHA / 2, df) * se
    p = float(stats.ttest_ind(b, a, equal_var=False).pvalue)
    pooled = math.sqrt(((len(a) - 1) * va + (len(b) - 1) * vb) / (len(a) + len(b) - 2))
    return Diff(mean, mean - half, mean + half, p, mean / pooled if pooled else None, "Welch t",
                min(len(a), len(b)))


def _var(x: list[float]) -> float:
    m = sum(x) / len(x)
    return sum((v - m) ** 2 for v in x) / (len(x) - 1)


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """The curve (sorted (x, y) points) at x, linear between neighbours; None outside it."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if points and points[-1][0] == x:
        return points[-1][1]
    return None


def curve(run, metric: str, axis: str) -> list[tuple[float, float]]:
    """A run's validation curve against tokens or training FLOPs."""
    pts = run.bpb_curve if metric == "val_bpb" else run.val_curve
    scale = run.flops_per_token if axis == "flops" else 1
    if not scale:
        return []
    return sorted((p[1] * scale, p[3]) for p in pts if p[1] is not None and math.isfinite(p[3]))


def budget(runs: list, metric: str, axis: str) -> float | None:
    """The largest tokens (or FLOPs) every run's curve reached."""
    ends = [c[-1][0] for c in (curve(r, metric, axis) for r in runs) if c]
    return min(ends) if ends and len(ends) == len(runs) else None


def seed_of(run):
    return (run.config or {}).get("seed", run.name)


def group(runs: list) -> list[Group]:
    """Runs grouped by config without the seed, in the order of their first run."""
    groups: dict = {}
    for r in runs:
        key = tuple(sorted((k, repr(v)) for k, v in (r.config or {"run": r.name}).items() if k not in NEUTRAL))
        if key not in groups:
            groups[key] = Group(name=SWEEP_INDEX.sub("", SEED_SUFFIX.sub("", r.name)), config=r.config)
        groups[key].runs.append(r)
    return list(groups.values())


@dataclass
class Row:
    """One variant against the base at one budget."""
    group: Group
    axis: str  # tokens | flops
    at: float | None
    value: Summary | None  # the metric at the budget
    best: Summary | None  # the run's best value (any budget)
    diff: Diff | None  # against the base variant (None for the base itself)
    change: str = ""  # the one option (or named change) that differs from the base, if one does


def table(groups: list[Group], metric: str, axis: str, change_of=lambda g: "") -> list[Row]:
    """Each group's metric at the common budget and its difference from the first group (the base)."""
    runs = [r for g in groups for r in g.runs]
    at = budget(runs, metric, axis)
    best_attr = "best_val_bpb" if metric == "val_bpb" else "best_val_loss"
    per = []
    for g in groups:
        vals = {}
        if at is not None:
            for r in g.runs:
                v = interpolate(curve(r, metric, axis), at)
                if v is not None:
                    vals[seed_of(r)] = v
        per.append(vals)
    rows = []
    for i, g in enumerate(groups):
        best = [getattr(r, best_attr) for r in g.runs if getattr(r, best_attr) is not None]
        rows.append(Row(g, axis, at, summarize(list(per[i].values())), summarize(best),
                        None if i == 0 else difference(per[0], per[i]), change_of(g)))
    return rows


def verdict(d: Diff | None) -> str:
    if d is None or d.p is None:
        return "no test" if d is None else d.test
    if not d.significant:
        return f"not distinguishable from noise (p={d.p:.2g})"
    return "helps" if d.mean < 0 else "hurts"
