"""Linear and embedding layers with the contract's init and logical axis names."""
from __future__ import annotations

from flax import nnx


def dense(n_in: int, n_out: int, bias: bool, std: float, axes: tuple[str, str], rngs: nnx.Rngs) -> nnx.Linear:
    """nnx.Linear with kernel (in, out) ~ N(0, std), bias 0; kernel axes are logical names."""
    return nnx.Linear(n_in, n_out, use_bias=bias,
                      kernel_init=nnx.with_partitioning(nnx.initializers.normal(std), axes),
                      bias_init=nnx.with_partitioning(nnx.initializers.zeros, (axes[1],)),
                      param_dtype="float32", rngs=rngs)


def embed(rows: int, dim: int, std: float, axes: tuple[str | None, str], rngs: nnx.Rngs) -> nnx.Embed:
    """nnx.Embed (rows, dim) ~ N(0, std)."""
    return nnx.Embed(rows, dim, embedding_init=nnx.with_partitioning(nnx.initializers.normal(std), axes),
                     param_dtype="float32", rngs=rngs)
