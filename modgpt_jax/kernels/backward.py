"""Helpers for the kernels' hand-written backward passes, which keep only what the memory floor
counts (modgpt.memory). A backward that recomputes something the forward also computed is merged
with it by XLA's common-subexpression elimination, which keeps the forward's buffer after all
(docs/performance.md, Memory); `fresh` ties such work to the cotangent instead.
"""
from __future__ import annotations

import functools

import jax


def fresh(x, ct):
    """x as a new value tied to the cotangent ct of x's shape (x + 0 * ct, elementwise, so no
    communication under any sharding): the same numbers, but XLA can neither merge what the backward
    computes from it with the forward's (common-subexpression elimination would keep the forward's
    buffer alive) nor compute it before the backward reaches it. 0 * ct is not folded for floats;
    optimization barriers, the usual tool, are expanded on XLA:CPU before those passes. A non-finite
    ct makes x non-finite here, and the gradient was non-finite anyway."""
    return x + 0 * ct.astype(x.dtype)


@functools.lru_cache(maxsize=None)
def recomputed(f):
    """Elementwise f(*xs) (inputs and output of one shape) with a backward that keeps only xs and
    recomputes f's intermediates from them: autodiff's gradients of f, evaluated in the backward
    (autodiff of f keeps what its derivative reads, such as GELU's erf: one or two more FFN-hidden
    tensors per layer)."""
    @jax.custom_vjp
    def g(*xs):
        return f(*xs)

    def fwd(*xs):
        return f(*xs), xs

    def bwd(xs, ct):
        return jax.vjp(f, *(fresh(x, ct) for x in xs))[1](ct)
    g.defvjp(fwd, bwd)
    return g
