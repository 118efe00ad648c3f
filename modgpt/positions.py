"""Framework-free position-encoding math that both backends share (so they use identical values)."""
from __future__ import annotations


def alibi_slopes(n_head: int) -> list[float]:
    """ALiBi head slopes (Press et al. 2022), in Python floats so both backends get the same values.

    n_head a power of 2: 2^(-8i/n_head) for i = 1..n_head. Otherwise, with p the largest power of 2
    below n_head: the p slopes 2^(-8i/p), then the odd-i slopes of the 2p sequence 2^(-8i/(2p)),
    i = 1, 3, 5, ..., n_head - p of them (the interpolation of the paper's reference code).
    """
    def geometric(n):
        return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]
    p = 1 << (n_head.bit_length() - 1)
    return geometric(p) if p == n_head else geometric(p) + geometric(2 * p)[0::2][:n_head - p]
