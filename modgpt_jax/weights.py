"""Canonical weight conversion: nnx parameter paths <-> modgpt.weights names (a table, not code).

Flax kernels are already (in, out) like the canonical format, so nothing is transposed. With
scan_layers the block parameters are stacked (n_layer, ...) and are split into blocks.{i} here.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from modgpt import weights as W

# nnx leaf name -> canonical leaf name (norms already use weight/bias)
LEAF = {"kernel": "weight", "embedding": "weight", "weight": "weight", "bias": "bias"}


def _flat(tree, prefix=()):
    for k, v in tree.items():
        path = prefix + (str(k),)
        if isinstance(v, dict):
            yield from _flat(v, path)
        else:
            yield path, v


def param_dict(model) -> dict:
    """The model's parameters as a nested pure dict (the pytree the training step works on)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def canonical_name(path: tuple[str, ...]) -> str:
    return ".".join(path[:-1] + (LEAF[path[-1]],))


def tree_to_canonical(m, tree: dict, scanned: bool = False, what: str = "model") -> dict[str, np.ndarray]:
    """A params-shaped pure dict (params, grads, Adam moments) -> canonical name -> float32 numpy,
    in canonical order (gathered from any sharding; stacked block leaves split into blocks.{i})."""
    out: dict[str, np.ndarray] = {}
    for path, arr in _flat(tree):
        a = np.asarray(jax.device_get(arr), dtype=np.float32)
        if scanned and path[0] == "blocks":
            for i in range(a.shape[0]):
                out[canonical_name(("blocks", str(i)) + path[1:])] = a[i]
        else:
            out[canonical_name(path)] = a
    W.check_tensors(m, out, what)
    return {k: out[k] for k in W.canonical_shapes(m)}


def to_canonical(model) -> dict[str, np.ndarray]:
    """Every parameter under its canonical name, float32 numpy (gathered from any sharding)."""
    return tree_to_canonical(model.cfg, param_dict(model), getattr(model, "scan_layers", False))


def load_canonical(model, tensors: dict) -> None:
    """Copy canonical tensors into the model in place (keeping each parameter's sharding)."""
    W.check_tensors(model.cfg, tensors, "weights")
    scanned = getattr(model, "scan_layers", False)
    state = nnx.state(model, nnx.Param)
    flat = dict(_flat(nnx.to_pure_dict(state)))
    new = {}
    for path, old in flat.items():
        if scanned and path[0] == "blocks":
            a = np.stack([np.asarray(tensors[canonical_name(("blocks", str(i)) + path[1:])])
                          for i in range(model.cfg.n_layer)])
        else:
            a = np.asarray(tensors[canonical_name(path)])
        a = jnp.asarray(a, dtype=old.dtype)
        sharding = getattr(old, "sharding", None)
        new[path] = jax.device_put(a, sharding) if sharding is not None else a
    nnx.replace_by_pure_dict(state, _nest(new, nnx.to_pure_dict(state)))
    nnx.update(model, state)


def _nest(flat: dict, like: dict) -> dict:
    """Rebuild the nested pure dict `like` with leaves from flat (keys as str paths)."""
    def rec(tree, prefix):
        return {k: rec(v, prefix + (str(k),)) if isinstance(v, dict) else flat[prefix + (str(k),)]
                for k, v in tree.items()}
    return rec(like, ())


def decay_mask(params: dict, scanned: bool = False) -> dict:
    """True where AdamW decays: canonical ndim >= 2 (stacked block params have one extra dim)."""
    def rec(tree, top):
        return {k: rec(v, top if top is not None else str(k)) if isinstance(v, dict)
                else (v.ndim - (1 if scanned and top == "blocks" else 0)) >= 2 for k, v in tree.items()}
    return rec(params, None)
