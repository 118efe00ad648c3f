"""Kernel ffn_recompute (CPU): FFNs whose backward keeps the activation's inputs only and recomputes
the activation from them, so a layer keeps the hidden-size tensors the memory floor counts (2
standard, 3 gated) and no more."""
from __future__ import annotations

import functools

from modgpt_jax.components.ffn import GLU, StandardFFN, SwiGLU
from modgpt_jax.kernels.backward import recomputed


@functools.lru_cache(maxsize=None)
def gated(act):
    """(gate, up) -> act(gate) * up, keeping gate and up for the backward (act(gate) recomputed)."""
    return recomputed(lambda g, u: act(g) * u)


class RecomputedFFN(StandardFFN):
    def hidden(self, x_BxTxD):
        return recomputed(self.act)(self.fc(x_BxTxD))


class RecomputedSwiGLU(SwiGLU):
    def hidden(self, x_BxTxD):
        return gated(self.act)(self.gate(x_BxTxD), self.fc(x_BxTxD))


class RecomputedGLU(GLU):
    hidden = RecomputedSwiGLU.hidden


SWAPS = {StandardFFN: RecomputedFFN, SwiGLU: RecomputedSwiGLU, GLU: RecomputedGLU}
