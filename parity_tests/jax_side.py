"""The parity suite's JAX side, all in the canonical (numpy float32, matrices (in, out)) layout.
Imports no torch.

The training-step checks go through `modgpt_jax.trainer.Trainer`, the object `python -m
modgpt_jax.train` itself uses, so parity covers the real step (clipping, lr injection, weight-decay
mask), not a re-implementation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from modgpt import config as C
from modgpt_jax.model import cross_entropy
from modgpt_jax.step import DTYPES, cast
from modgpt_jax.weights import tree_to_canonical


def canonical_tree(m: C.ModelConfig, tree: dict, scanned: bool = False) -> dict[str, np.ndarray]:
    """A params-shaped pure dict (params, grads, Adam moments) -> canonical name -> float32 numpy."""
    return tree_to_canonical(m, tree, scanned, "jax tree")


def trainer(cfg: C.Config, tensors: dict | None, device=None):
    """A Trainer on one device (mesh 1 x 1) loaded from canonical tensors."""
    from modgpt_jax.trainer import Trainer
    dev = device if device is not None else jax.devices()[0]
    tr = Trainer(cfg.replace(mesh_data=1, mesh_fsdp=1), devices=[dev], seed=0)
    if tensors is not None:
        tr.load_canonical(tensors)
    reset_optimizer(tr)
    return tr


def reset_optimizer(tr) -> None:
    """Fresh AdamW state (count 0, zero moments) placed like the trainer's."""
    tr.opt_state = jax.jit(tr.tx.init, out_shardings=tr.opt_sh)(tr.params)


def moments(tr) -> tuple[dict, dict]:
    """(first, second) Adam moments of the trainer's optimizer state, canonical."""
    scanned = tr.cfg.system.scan_layers
    mu = optax.tree_utils.tree_get(tr.opt_state, "mu")
    nu = optax.tree_utils.tree_get(tr.opt_state, "nu")
    return canonical_tree(tr.cfg.model, mu, scanned), canonical_tree(tr.cfg.model, nu, scanned)


def params(tr) -> dict[str, np.ndarray]:
    return canonical_tree(tr.cfg.model, tr.params, tr.cfg.system.scan_layers)


def forward_grad(graphdef, p, x, y):
    """(logits float32, loss, grads) of the float32 model in eval mode (jit it or run it eagerly)."""
    def f(q):
        logits, loss = nnx.merge(graphdef, q)(x, y)
        return loss, logits
    (loss, logits), g = jax.value_and_grad(f, has_aux=True)(p)
    return logits, loss, g


def forward(graphdef, p, x, key=None, dtype: str = "float32"):
    """float32 logits with params cast to `dtype` for compute; a key means train mode (dropout)."""
    return nnx.merge(graphdef, cast(p, DTYPES[dtype]))(x, key=key)[0]


def loss(graphdef, p, x, y, key=None, dtype: str = "float32"):
    """Mean cross-entropy (train mode when a key is given)."""
    return cross_entropy(forward(graphdef, p, x, key, dtype), y)


def greedy(tr, prompt: np.ndarray, n_new: int) -> np.ndarray:
    """n_new greedy tokens after prompt (1-D ids) with modgpt_jax.inference.generate (temperature 0)."""
    from modgpt_jax.inference import generate
    out = generate(tr.sync_model(), [int(i) for i in prompt], n_new, 1, temperature=0.0, top_k=0)
    return np.asarray(out[0, len(prompt):])


def dropout_ones(module, n: int, seed: int = 0) -> np.ndarray:
    """A model's nnx.Dropout applied in train mode to ones(n): inverted dropout gives 0 or 1/(1-p)."""
    return np.asarray(module(jnp.ones((n,), jnp.float32), deterministic=False, rngs=jax.random.key(seed)))
