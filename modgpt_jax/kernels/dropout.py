"""Kernel fused_dropout (CPU): dropout masks bit for bit jax.random.bernoulli's, drawn as
elementwise integer ops XLA fuses with their use.

JAX lowers its threefry hash on the CPU as a rolled loop, which XLA cannot fuse into: every mask
was drawn as 32-bit words in memory and kept for the backward (docs/performance.md). `keep_mask`
evaluates the same Threefry-2x32 hash (Salmon et al. 2011, 20 rounds; JAX's key schedule and
counters) elementwise, so a run draws the masks the reference draws, on any mesh.
"""
from __future__ import annotations

import math
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)  # the Threefish key-schedule constant


def _rotl(x, r: int):
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k1, k2, x1, x2):
    """The Threefry-2x32 block function (20 rounds) on uint32 arrays: counters (x1, x2), key (k1, k2)."""
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):  # five groups of four rounds, a key injection after each
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = _rotl(x2, r) ^ x1
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def fusable(key, shape, keep: float = 0.5) -> bool:
    """Whether keep_mask draws this key's masks itself (a threefry key, JAX's default partitionable
    counters, 32-bit floats (no jax_enable_x64), a Python float `keep`, fewer than 2**32 elements);
    otherwise it calls jax.random.bernoulli."""
    impl = jax.random.key_impl(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else None
    # the flag's default has been True since jax 0.5; a jax without the flag is partitionable
    return (str(impl) == "threefry2x32" and getattr(jax.config, "jax_threefry_partitionable", True)
            and not jax.config.jax_enable_x64 and isinstance(keep, (float, int))
            and key.shape == () and 0 < math.prod(shape) < 2**32)


def keep_mask(key, keep: float, shape, start=None, full=None):
    """bool mask, True with probability `keep` (a Python float): jax.random.bernoulli(key, keep,
    shape), bit for bit.

    With `full` and `start`: the window of shape `shape` at offset `start` of the mask of shape
    `full`, computed without the rest (for kernels that work on blocks of a tensor).
    The counter of element i (row-major) is the 64-bit i, here below 2**32, so its high word is 0;
    the 32 random bits are the xor of the hash's two output words, the uniform draw is their top 23
    bits as a float in [0, 1), kept when below keep (JAX's partitionable threefry and uniform)."""
    full = tuple(shape) if full is None else tuple(full)
    if not fusable(key, full, keep):
        if full != tuple(shape):
            raise ValueError(f"keep_mask: a window of a mask needs a threefry key and fewer than 2**32 "
                             f"elements (got {jax.random.key_impl(key)}, {full})")
        return jax.random.bernoulli(key, keep, shape)
    start = (0,) * len(shape) if start is None else start
    k1, k2 = jax.random.key_data(key)
    strides = np.cumprod((1,) + full[:0:-1])[::-1]
    index = sum((jax.lax.broadcasted_iota(jnp.uint32, shape, d) + np.uint32(o)) * np.uint32(s)
                for d, (o, s) in enumerate(zip(start, strides)))
    hi, lo = threefry2x32(k1, k2, jnp.zeros_like(index), index)
    bits = ((hi ^ lo) >> np.uint32(9)) | np.uint32(0x3F800000)  # 1.0 + 23 random mantissa bits
    uniform = jax.lax.bitcast_convert_type(bits, jnp.float32) - np.float32(1.0)
    return uniform < np.float32(keep)


def drop(x, key, rate: float, start=None, full=None):
    """Inverted dropout of x (or of the window of a `full`-shaped tensor at `start`): x / (1 - rate)
    where kept, 0 elsewhere; the arithmetic of nnx.Dropout (rate 1: zeros, no 0/0 in the gradient)."""
    if rate >= 1.0:
        return jnp.zeros_like(x)
    keep = 1.0 - rate
    return jax.lax.select(keep_mask(key, keep, x.shape, start, full), x / keep, jnp.zeros_like(x))


class FusedDropout(nnx.Dropout):
    """nnx.Dropout (same arguments, same masks, same scaling) drawing its mask with keep_mask."""

    def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None):
        off = self.deterministic if deterministic is None else deterministic
        if (off is None or off or self.rate in (0.0, 1.0) or not isinstance(rngs, jax.Array) or self.broadcast_dims
                or not jnp.issubdtype(rngs.dtype, jax.dtypes.prng_key)):
            return super().__call__(inputs, deterministic=deterministic, rngs=rngs)
        return drop(inputs, rngs, self.rate)
