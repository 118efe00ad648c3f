"""Kernel cpu_linear (CPU): linear layers whose weight gradient is laid out for XLA:CPU's matmul."""
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


class CPULinear(nnx.Linear):
    """nnx.Linear (the same parameters) whose matmul has the backward above."""

    def __call__(self, inputs, out_sharding=None):
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = self.promote_dtype((inputs, self.kernel[...], bias), dtype=self.dtype)
        y = matmul(x, kernel)
        return y if bias is None else y + bias

    def split(self, inputs, at: int):
        """(inputs @ W[:, :at] + b[:at], inputs @ W[:, at:] + b[at:]): the layer's output in two
        column blocks, each its own buffer, with one backward that reads one layout of the input
        (matmul_split). The CPU attention splits v from q and k this way, so that under RoPE v does
        not keep the whole projection output alive for the backward (XLA keeps a slice's source)."""
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = self.promote_dtype((inputs, self.kernel[...], bias), dtype=self.dtype)
        out = matmul_split(x, kernel, at)
        return out if bias is None else (out[0] + bias[:at], out[1] + bias[at:])
