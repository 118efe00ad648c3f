"""Kernel cpu_remat (CPU, with --remat): each block's backward recomputes it from its input, tied to
the incoming gradient (backward.fresh) so that XLA can neither merge the recomputation with the
forward (and keep the forward's activations) nor schedule it before the later blocks are done.
jax.checkpoint on each block of the unrolled loop (the reference) leaves XLA:CPU's memory plan as
without remat (docs/performance.md)."""
from __future__ import annotations

import jax
from flax import nnx

from modgpt_jax.kernels.backward import fresh
from modgpt_jax.model import GPT


def recomputed_block(graphdef, state, x, pos_T, mask, key):
    """One block, keeping only its input and weights for a backward that runs it again."""
    def run(state, x):
        return nnx.merge(graphdef, state)(x, pos_T, mask, key)

    @jax.custom_vjp
    def block(state, x):
        return run(state, x)

    def fwd(state, x):
        return run(state, x), (state, x)

    def bwd(res, dy):
        state, x = res
        return jax.vjp(run, state, fresh(x, dy))[1](dy)

    block.defvjp(fwd, bwd)
    return block(state, x)


class RecomputingGPT(GPT):
    def run_block(self, block, x, pos_T, mask, key):
        if not self.remat:
            return block(x, pos_T, mask, key)
        g, st = nnx.split(block)
        return recomputed_block(g, st, x, pos_T, mask, key)


SWAPS = {GPT: RecomputingGPT}
