"""Linear and embedding layers with the contract's init and logical axis names."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def transposes_input(n_in: int, n_out: int) -> bool:
    """Whether matmul's CPU weight gradient materializes x^T ((in, N) @ (N, out)) rather than dy^T
    (((out, N) @ (N, in))^T): the narrower operand's, the smaller copy."""
    return n_in <= n_out


@jax.custom_vjp
def matmul(x, w):
    """x (..., in) @ w (in, out). The backward is autodiff's, with the weight gradient laid out for
    XLA:CPU (docs/performance.md): its library matmul takes a row-major left operand only, and the
    autodiff form (contracting over the leading token dims of both operands) fell back to a matmul
    about twice as slow. Materializing the narrower operand's transpose first costs one small copy."""
    return x @ w


def _matmul_fwd(x, w):
    return x @ w, (x, w)


def _matmul_bwd(res, dy):
    x, w = res
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])  # (N, in), (N, out)
    barrier = jax.lax.optimization_barrier  # keeps XLA from folding the transposes back into the dot
    if transposes_input(x2.shape[1], dy2.shape[1]):
        dw = barrier(x2.T) @ dy2  # (in, N) @ (N, out)
    else:
        dw = barrier(barrier(dy2.T) @ x2).T  # ((out, N) @ (N, in)).T
    return dy @ w.T, dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul_split(x, w, at: int):
    """(x @ w[:, :at], x @ w[:, at:]): two matmuls, two output buffers, with matmul's CPU backward
    reading one transposed copy of x for both weight gradients (two `matmul`s would keep x in two
    layouts when the blocks' widths pick different forms, as v's narrower block does under
    grouped-query attention)."""
    return x @ w[:, :at], x @ w[:, at:]


def _matmul_split_fwd(x, w, at):
    return matmul_split(x, w, at), (x, w)


def _matmul_split_bwd(at, res, dys):
    x, w = res
    dy1, dy2 = dys
    x2 = x.reshape(-1, x.shape[-1])
    xt = jax.lax.optimization_barrier(x2.T)  # (in, N), shared by both blocks' weight gradients
    dw = jnp.concatenate([xt @ d.reshape(-1, d.shape[-1]) for d in (dy1, dy2)], axis=-1)
    dx = dy1 @ w[:, :at].T + dy2 @ w[:, at:].T
    return dx, dw.astype(w.dtype)


matmul_split.defvjp(_matmul_split_fwd, _matmul_split_bwd)


class Linear(nnx.Linear):
    """nnx.Linear (same parameters) whose matmul has the CPU-friendly backward above on CPU."""

    def __call__(self, inputs, out_sharding=None):
        if out_sharding is not None:
            return super().__call__(inputs, out_sharding=out_sharding)
        if jax.default_backend() != "cpu":  # GPU/TPU: transposes are free
            return super().__call__(inputs)
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = self.promote_dtype((inputs, self.kernel[...], bias), dtype=self.dtype)
        y = matmul(x, kernel)
        return y if bias is None else y + bias

    def split(self, inputs, at: int):
        """(inputs @ W[:, :at] + b[:at], inputs @ W[:, at:] + b[at:]): the layer's output in two
        column blocks, each its own matmul and so its own buffer (on the CPU one custom VJP for both,
        matmul_split, so the backward reads one layout of the input). The attention splits its
        projection so under RoPE, where q and k are rotated into new tensors, v does not keep the
        whole projection output alive for the backward (XLA keeps a slice's source; llama at the
        CPU size: 3 MiB per layer, docs/performance.md Session 9)."""
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = self.promote_dtype((inputs, self.kernel[...], bias), dtype=self.dtype)
        if jax.default_backend() == "cpu":
            out = matmul_split(x, kernel, at)
        else:  # GPU/TPU: autodiff's dot_generals (transposes are free there)
            out = tuple(jax.lax.dot_general(x, kernel[:, cols], (((x.ndim - 1,), (0,)), ((), ())),
                                            precision=self.precision) for cols in (slice(None, at), slice(at, None)))
        if bias is None:
            return out
        return out[0] + bias[:at], out[1] + bias[at:]


def dense(n_in: int, n_out: int, bias: bool, std: float, axes: tuple[str, str], rngs: nnx.Rngs) -> nnx.Linear:
    """Linear (an nnx.Linear) with kernel (in, out) ~ N(0, std), bias 0; kernel axes are logical names."""
    return Linear(n_in, n_out, use_bias=bias,
                      kernel_init=nnx.with_partitioning(nnx.initializers.normal(std), axes),
                      bias_init=nnx.with_partitioning(nnx.initializers.zeros, (axes[1],)),
                      param_dtype="float32", rngs=rngs)


class Embed(nnx.Embed):
    """nnx.Embed (same parameters) that computes in the dtype of the table it holds: the bfloat16
    compute copy under mixed precision (modgpt_jax/step.cast). nnx.Embed fixes its dtype when built
    (float32, the parameters' dtype) and promoted the bf16 table back to float32, and with it the
    residual stream and every matmul of a bf16 step. The lookup's gradient, a scatter-add of every
    token's row gradient, accumulates in float32 and is rounded once, as a matmul's is."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.dtype = None  # follow the table (and, in attend, the query)

    def __call__(self, inputs, out_sharding=None):
        if out_sharding is not None or self.num_embeddings == 1:
            return super().__call__(inputs, out_sharding)
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError("Input type must be an integer or unsigned integer.")
        table = self.embedding[...]
        return jnp.take(table.astype(jnp.float32), inputs, axis=0).astype(table.dtype)


def embed(rows: int, dim: int, std: float, axes: tuple[str | None, str], rngs: nnx.Rngs) -> Embed:
    """Embed (rows, dim) ~ N(0, std)."""
    return Embed(rows, dim, embedding_init=nnx.with_partitioning(nnx.initializers.normal(std), axes),
                     param_dtype="float32", rngs=rngs)
