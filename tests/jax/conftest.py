"""Shared fixtures for the JAX backend tests (8 fake CPU devices come from the repo-root conftest)."""
from __future__ import annotations

import pytest

from modgpt.config import Config


def _tiny(**kw) -> Config:
    """A 2-layer, 32-wide model with block 32 on the char vocab: fast to compile on a CPU."""
    base = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65, batch_size=8, dropout=0.0)
    base.update(kw)
    return Config().replace(**base)


@pytest.fixture(scope="session")
def tiny():
    """Factory: tiny(**overrides) -> Config."""
    return _tiny


@pytest.fixture(scope="session")
def tokens():
    """(4, 32) int32 tokens, distinct along each row (causality tests rely on that)."""
    import numpy as np
    rng = np.random.default_rng(0)
    return np.stack([rng.permutation(65)[:32] for _ in range(4)]).astype(np.int32)
