"""Numerical comparison rows: one per (configuration, check), with the tolerance it was held to.

Tolerances (float32 unless said otherwise), each a bound on `rel` = max|a - b| / max|b| (the error
relative to the tensor's scale, so near-zero entries cannot blow it up):
- logits 2e-5, loss 1e-5: two fp32 evaluations of the same graph differ only by summation order
  (BLAS blocking, fused vs separate softmax); measured ~1e-6 at 64 wide, ~1e-5 leaves headroom
  for longer reductions.
- gradients 1e-4: the backward pass sums over B*T positions in different orders in the two
  frameworks; small tensors (biases, norm weights) see the largest relative spread.
- AdamW parameters 1e-5, first moments 1e-4 (they are 0.1 x the gradient), second moments 2e-4
  (squared gradients double the relative error).
- trajectory losses 1e-4 per step over 50 steps: tiny differences compound through training.
- bfloat16 logits: mean per-token KL(torch || jax) <= 1e-3 nats and rel <= 5e-2. bf16 keeps 8
  mantissa bits (relative step 2^-8 = 3.9e-3); rounding happens at different points in the two
  backends (torch autocast rounds matmul inputs, XLA may fuse), so elementwise agreement is only
  a few ulps; KL measures what matters: the predicted distributions.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

TOL = {"logits": 2e-5, "loss": 1e-5, "grad": 1e-4, "adamw_param": 1e-5, "adamw_m": 1e-4,
       "adamw_v": 2e-4, "trajectory": 1e-4, "bf16_logits_rel": 5e-2, "bf16_kl": 1e-3}


@dataclass
class Row:
    case: str
    check: str
    max_abs: float
    rel: float
    tol: float
    passed: bool
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def rel_err(a, b) -> tuple[float, float]:
    """(max abs diff, max abs diff / max |b|)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf"), float("inf")
    d = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return d, (d / scale if scale > 0 else d)


def row(case: str, check: str, a, b, tol: float, note: str = "") -> Row:
    d, r = rel_err(a, b)
    return Row(case, check, d, r, tol, bool(r <= tol), note)


def worst(case: str, check: str, a: dict, b: dict, tol: float) -> Row:
    """One row for a dict of tensors: the worst relative error over them, naming that tensor."""
    if set(a) != set(b):
        missing = sorted(set(a) ^ set(b))
        return Row(case, check, float("inf"), float("inf"), tol, False, f"names differ: {missing[:3]}")
    rows = [(k, *rel_err(a[k], b[k])) for k in sorted(a)]
    name, d, r = max(rows, key=lambda t: t[2])
    return Row(case, check, max(t[1] for t in rows), r, tol, bool(r <= tol), f"worst: {name}")


def kl_per_token(logits_p, logits_q) -> float:
    """Mean over tokens of KL(softmax(p) || softmax(q)), in float64."""
    p = np.asarray(logits_p, np.float64)
    q = np.asarray(logits_q, np.float64)
    lp = p - p.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    lq = q - q.max(-1, keepdims=True)
    lq = lq - np.log(np.exp(lq).sum(-1, keepdims=True))
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))


def format_table(rows: list[Row]) -> str:
    head = ["case", "check", "max abs diff", "rel error", "tolerance", "result"]
    body = [[r.case, r.check, f"{r.max_abs:.3e}", f"{r.rel:.3e}", f"{r.tol:.1e}",
             ("pass" if r.passed else "FAIL") + (f"  {r.note}" if r.note and not r.passed else "")]
            for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*b) for b in body]
    n_fail = sum(not r.passed for r in rows)
    lines.append(f"{len(rows) - n_fail} passed, {n_fail} failed")
    return "\n".join(lines)
