"""Feed-forward blocks: standard = proj(act(fc(x))); gated = proj(act(gate(x)) * fc(x))."""
from __future__ import annotations

import math

from flax import nnx

from modgpt.config import ModelConfig
from modgpt.registry import Registry
from modgpt_jax.components.activations import ACTIVATIONS
from modgpt_jax.components.layers import dense

FFNS = Registry("ffn_type")


@FFNS.register("standard")
class StandardFFN(nnx.Module):
    """fc -> activation -> proj -> dropout (GPT-2 MLP)."""
    gated = False

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D, F = cfg.n_embd, cfg.ffn_hidden_size
        self.act = ACTIVATIONS.get(cfg.ffn_activation)
        self.fc = dense(D, F, cfg.bias, cfg.init_std, ("embed", "mlp"), rngs)  # value / up projection
        if self.gated:
            self.gate = dense(D, F, cfg.bias, cfg.init_std, ("embed", "mlp"), rngs)
        # residual projection: GPT-2's scaled init
        self.proj = dense(F, D, cfg.bias, cfg.init_std / math.sqrt(2 * cfg.n_layer), ("mlp", "embed"), rngs)
        self.drop = nnx.Dropout(cfg.dropout)

    def hidden(self, x_BxTxD):
        return self.act(self.fc(x_BxTxD))  # (B, T, F)

    def __call__(self, x_BxTxD, key=None):
        return self.drop(self.proj(self.hidden(x_BxTxD)), deterministic=key is None, rngs=key)


@FFNS.register("swiglu")
class SwiGLU(StandardFFN):
    """proj(silu(gate(x)) * fc(x)) (config.ffn_activation is silu for swiglu)."""
    gated = True

    def hidden(self, x_BxTxD):
        return self.act(self.gate(x_BxTxD)) * self.fc(x_BxTxD)  # (B, T, F)


@FFNS.register("glu")
class GLU(SwiGLU):
    """proj(act(gate(x)) * fc(x)) with the configured activation (GeGLU, ReGLU, ...)."""
