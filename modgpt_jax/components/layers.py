"""Linear and embedding layers with the contract's init (N(0, std) weights, zero biases) and
logical axis names for sharding (modgpt_jax/sharding.py maps them to the mesh)."""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx


def dense(n_in: int, n_out: int, bias: bool, std: float, axes: tuple[str, str], rngs: nnx.Rngs) -> nnx.Linear:
    """nnx.Linear with kernel (in, out) ~ N(0, std) and bias 0."""
    return nnx.Linear(n_in, n_out, use_bias=bias,
                      kernel_init=nnx.with_partitioning(nnx.initializers.normal(std), axes),
                      bias_init=nnx.with_partitioning(nnx.initializers.zeros, (axes[1],)),
                      param_dtype="float32", rngs=rngs)


class Embed(nnx.Embed):
    """nnx.Embed that computes in the dtype of the table it is given: the bfloat16 compute copy under
    mixed precision (nnx.Embed fixes float32 at build and would promote the residual stream back).
    The lookup gathers in float32, so its gradient (a scatter-add over tokens) accumulates in float32
    and is rounded once, as a matmul's is."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.dtype = None  # follow the table

    def __call__(self, idx_BxT, out_sharding=None):
        table = self.embedding[...]
        return jnp.take(table.astype(jnp.float32), idx_BxT, axis=0).astype(table.dtype)


def embed(rows: int, dim: int, std: float, axes: tuple[str | None, str], rngs: nnx.Rngs) -> Embed:
    """Embed (rows, dim) ~ N(0, std)."""
    return Embed(rows, dim, embedding_init=nnx.with_partitioning(nnx.initializers.normal(std), axes),
                 param_dtype="float32", rngs=rngs)
