"""Numerical comparison rows: one per (configuration, check), with the tolerance it was held to.

`rel` = max|a - b| / max|b| (error relative to the tensor's scale, so near-zero entries cannot blow
it up); b is torch, a is jax. float32 tolerances, with what was measured on CPU (36 cases, random
O(1) weights, T = 256) and why:
- logits 2e-5, loss 1e-5 (measured <= 1e-6 and <= 2e-7): the same graph in fp32 differs only in
  summation order (BLAS blocking, fused vs separate softmax): a few ulps (1.2e-7) grown over
  n_embd-long dot products and two layers; the bound leaves 10x headroom for longer reductions.
  A real mismatch (tanh-GELU, eps 1e-6 vs 1e-5, a RoPE layout) is >= 1e-4 (test_a_wrong_backend...).
- grads 1e-4 (measured <= 1.6e-5, qk_norm; others <= 2e-6), per tensor, floored at 1e-3 x the largest gradient (see worst):
  the backward sums over B*T positions in different orders.
- AdamW: parameters 1e-5 beyond the part the gradients explain (see adamw_params; measured <=
  2e-7); first moments 1e-4 (measured <= 1.3e-5; 0.1 x the clipped gradient: the gradient tolerance); second moments
  2e-4 (squared gradients double the relative error); pre-clip grad norm 1e-5 (one global sum).
- trajectory 1e-4 per step over 50 steps (measured <= 7.5e-5, glu+relu, whose kinks amplify roundoff; most cases ~3e-7): differences compound through training
  but stay at roundoff for 50 small steps; a wrong schedule or clip rule moves losses by >= 1e-3.
- greedy tokens and round trips: exact (tolerance 0): argmax gaps of these O(1) logits are ~1e-2,
  far above fp32 noise; the file format is float32 in and out.
- bfloat16 logits: mean per-token KL(torch || jax) <= 1e-3 nats (measured <= 3.9e-4 over the 39
  configurations) and rel <= 5e-2 (measured <= 2.2e-2). bf16 keeps 8 mantissa bits (relative step
  2^-8 = 3.9e-3) and the two backends round at different points (torch autocast keeps the residual
  stream and norms in fp32 and rounds matmul inputs; JAX computes in a bf16 copy of the weights, its
  residual stream bf16 too), so elementwise agreement
  is a few bf16 ulps of the largest logit; KL measures what matters, the predicted distributions,
  and is what a user would notice when sampling. bf16 loss 1e-2 and bf16 trajectory 2e-2 per step
  (--dtype bfloat16): a few bf16 ulps of a mean over B*T tokens.
- dropout_z 4: a z-score (difference of means / its standard error) for statistics of random
  dropout draws: 4 sigma fails a correct pair with probability 6e-5.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

TOL = {"logits": 2e-5, "loss": 1e-5, "grad": 1e-4, "adamw_param": 1e-5, "adamw_m": 1e-4,
       "adamw_v": 2e-4, "trajectory": 1e-4, "bf16_logits_rel": 5e-2, "bf16_kl": 1e-3,
       "grad_norm": 1e-5, "bf16_loss": 1e-2, "bf16_trajectory": 2e-2, "dropout_z": 4.0}


@dataclass
class Row:
    case: str
    check: str
    max_abs: float
    rel: float
    tol: float
    passed: bool
    note: str = ""

    def __post_init__(self):  # plain Python types (numpy scalars are not JSON-serializable)
        self.max_abs, self.rel, self.tol = float(self.max_abs), float(self.rel), float(self.tol)
        self.passed = bool(self.passed)

    def to_dict(self) -> dict:
        return asdict(self)


def rel_err(a, b, floor: float = 0.0) -> tuple[float, float]:
    """(max abs diff, max abs diff / max(max |b|, floor))."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf"), float("inf")
    d = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, floor)
    return d, (d / scale if scale > 0 else d)


def row(case: str, check: str, a, b, tol: float, note: str = "") -> Row:
    d, r = rel_err(a, b)
    return Row(case, check, d, r, tol, bool(r <= tol), note)


def worst(case: str, check: str, a: dict, b: dict, tol: float, floor: float = 0.0) -> Row:
    """One row for a dict of tensors: the worst relative error over them, naming that tensor.

    Each tensor's error is relative to max(its own max |b|, floor x the largest |b| of all tensors).
    The floor is for gradients: a tensor whose exact gradient is 0 (attn.k_norm.bias: shifting
    every key by the same vector adds a per-query constant that softmax cancels) holds only
    roundoff (~1e-8 of the largest gradient), which no two implementations share.
    """
    if set(a) != set(b):
        missing = sorted(set(a) ^ set(b))
        return Row(case, check, float("inf"), float("inf"), tol, False, f"names differ: {missing[:3]}")
    top = max((float(np.max(np.abs(np.asarray(v, np.float64)))) for v in b.values() if np.size(v)), default=0.0)
    rows = [(k, *rel_err(a[k], b[k], floor * top)) for k in sorted(a)]
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


HEAD = ["case", "check", "max abs diff", "rel error", "tolerance", "result"]


def _cells(r: Row) -> list[str]:
    return [r.case, r.check, f"{r.max_abs:.3e}", f"{r.rel:.3e}", f"{r.tol:.1e}",
            ("pass" if r.passed else "FAIL") + (f"  {r.note}" if r.note and not r.passed else "")]


def _line(cells: list[str], widths: list[int]) -> str:
    return "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths)).rstrip()


def summary(rows: list[Row]) -> str:
    n_fail = sum(not r.passed for r in rows)
    return f"{len(rows) - n_fail} passed, {n_fail} failed"


class Table:
    """The result table printed as it grows: the header once, then each case's rows as they come, in
    columns sized up front (case names are known; a longer cell just shifts its row)."""

    def __init__(self, case_names, check_width: int = 26):
        self.widths = [max([len(HEAD[0]), *map(len, case_names)]), check_width, 12, 9, 9, 6]

    def header(self) -> str:
        return "\n".join([_line(HEAD, self.widths), _line(["-" * w for w in self.widths], self.widths)])

    def rows(self, rows: list[Row]) -> str:
        return "\n".join(_line(_cells(r), self.widths) for r in rows)


def format_table(rows: list[Row]) -> str:
    """The whole table at once, columns fitted to its rows, with the pass/fail count."""
    body = [_cells(r) for r in rows]
    widths = [max(len(x) for x in col) for col in zip(HEAD, *body)]
    lines = [_line(HEAD, widths), _line(["-" * w for w in widths], widths)]
    lines += [_line(b, widths) for b in body]
    lines.append(summary(rows))
    return "\n".join(lines)


def adamw_params(case: str, pj: dict, pt: dict, mj: dict, mt: dict, lr: float, beta1: float, eps: float,
                 tol: float) -> Row:
    """Parameters after ONE step of a fresh AdamW, allowing the part of the difference that the two
    backends' own gradients explain.

    After one step m_hat = g and sqrt(v_hat) = |g|, so the update is lr * g / (|g| + eps): a sign
    for |g| >> eps but a steep function (slope 1/eps at 0) for |g| near eps. Gradient entries that
    are roundoff noise (e.g. the key bias of attention, whose exact gradient is 0 because softmax
    ignores a per-query constant) therefore move by up to lr in a direction set by noise, in any
    fp32 implementation. Each element may differ by lr * |g_j - g_t| * eps / (g_min + eps)^2 (the
    largest slope between the two gradients; g_min = 0 if their signs differ), capped at 2 lr, plus
    `tol` relative to the tensor's scale. The gradients each optimizer saw are read back from its
    first moment (m = (1 - beta1) g). rel reported = worst unexplained difference / max|p|.
    """
    if set(pj) != set(pt):
        return Row(case, "adamw.params", float("inf"), float("inf"), tol, False, "names differ")
    worst_r, worst_name, max_abs, n_explained = 0.0, "", 0.0, 0
    for k in sorted(pt):
        a, b = np.asarray(pj[k], np.float64), np.asarray(pt[k], np.float64)
        gj, gt = np.asarray(mj[k], np.float64) / (1 - beta1), np.asarray(mt[k], np.float64) / (1 - beta1)
        gmin = np.where(np.sign(gj) == np.sign(gt), np.minimum(np.abs(gj), np.abs(gt)), 0.0)
        budget = np.minimum(2.0, np.abs(gj - gt) * eps / (gmin + eps) ** 2) * lr
        d = np.abs(a - b)
        scale = float(np.max(np.abs(b))) or 1.0
        r = float(np.max(np.maximum(d - budget, 0.0))) / scale
        n_explained += int(np.sum(d > tol * scale))
        max_abs = max(max_abs, float(d.max()))
        if r >= worst_r:
            worst_r, worst_name = r, k
    return Row(case, "adamw.params", max_abs, worst_r, tol, bool(worst_r <= tol),
               f"worst: {worst_name}; {n_explained} elements beyond tol explained by |g| ~ eps")
