"""The AdamW update of the jitted step (modgpt_jax.step.gated_update): optax's adamw where the step
is finite, nothing changed where it is not, and no copy of the moments."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from modgpt.config import TrainConfig
from modgpt_jax import step as ST

SHAPES = {"w": (256, 384), "v": (384, 256), "b": (384,)}  # 2-D decayed, 1-D not (decay_mask)


def tree(seed: int, scale: float = 1.0):
    keys = jax.random.split(jax.random.key(seed), len(SHAPES))
    return {k: scale * jax.random.normal(kk, s, jnp.float32) for kk, (k, s) in zip(keys, SHAPES.items())}


@pytest.fixture(scope="module")
def tx():
    return ST.make_optimizer(TrainConfig(weight_decay=0.1, learning_rate=3e-3))


def plain(tx, grads, state, params, lr, ok):
    """The straightforward form: optax's step, then where(ok, new, old) over everything."""
    hp = dict(state.hyperparams, learning_rate=jnp.asarray(lr, jnp.float32))
    state = state._replace(hyperparams=hp)
    updates, new = tx.update(grads, state, params)
    keep = lambda n, o: jax.tree.map(lambda a, b: jnp.where(ok, a, b), n, o)  # noqa: E731
    return keep(optax.apply_updates(params, updates), params), keep(new, state)


def assert_trees_equal(a, b):
    la, lb = jax.tree.leaves_with_path(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for (path, x), y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def test_finite_steps_are_optax_adamw(tx):
    """Five steps, each with new gradients, against optax's own adamw step with everything selected
    after it: the counts equal, parameters and moments equal to float32 rounding. Not bit for bit:
    with the gradients passing through a select, XLA:CPU contracts the moments' multiply-adds into
    FMAs differently (measured: at most 2.3 float32 epsilons of the tensor's largest entry after 20
    steps, 0.5 for the parameters); the bound is 4. A wrong decay, bias correction or learning rate
    is off by orders of magnitude more (one step's update is about 1e-3)."""
    f_gated = jax.jit(ST.gated_update, static_argnums=0)
    f_plain = jax.jit(plain, static_argnums=0)
    p1 = p2 = tree(0)
    s1 = s2 = tx.init(p1)
    for i in range(5):
        g = tree(10 + i, scale=1e-2)
        p1, s1 = f_gated(tx, g, s1, p1, 3e-3 * (i + 1) / 5, jnp.bool_(True))
        p2, s2 = f_plain(tx, g, s2, p2, 3e-3 * (i + 1) / 5, jnp.bool_(True))
    eps = np.finfo(np.float32).eps
    for (path, x), y in zip(jax.tree.leaves_with_path((p1, s1)), jax.tree.leaves((p2, s2))):
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim == 0:
            assert x == y, jax.tree_util.keystr(path)
        else:
            np.testing.assert_allclose(x, y, rtol=0, atol=4 * eps * np.abs(y).max(), err_msg=jax.tree_util.keystr(path))
    assert int(s1.inner_state[0].count) == 5
    assert not np.allclose(np.asarray(p1["w"]), np.asarray(tree(0)["w"]))  # it did train


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_step_leaves_everything_as_it_was(tx, bad):
    """After two real steps, a step whose gradients hold a NaN or inf (ok False) changes nothing:
    parameters, moments, step counts and hyperparameters."""
    f = jax.jit(ST.gated_update, static_argnums=0)
    p, s = tree(1), tx.init(tree(1))
    for i in range(2):
        p, s = f(tx, tree(20 + i, 1e-2), s, p, 1e-3, jnp.bool_(True))
    g = tree(30, 1e-2)
    g["w"] = g["w"].at[3, 5].set(bad)
    p2, s2 = f(tx, g, s, p, 1e-3, jnp.bool_(False))
    assert_trees_equal(p2, p)
    assert_trees_equal(s2, s)
    assert int(s2.inner_state[0].count) == 2


def _moment_bytes(params) -> int:
    return 2 * sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


def test_the_donated_update_copies_no_moment(tx):
    """With parameters and state donated (as the train step donates them), the gated update needs
    no temporary buffer the size of a moment: the plain form's select made XLA copy both moments
    first (shown here as the control, so the measurement is known to see such copies)."""
    p = tree(2)
    s = tx.init(p)
    g = tree(3, 1e-2)
    mb = _moment_bytes(p)

    def temps(fn):
        f = jax.jit(lambda p, s, g, ok: fn(tx, g, s, p, 1e-3, ok), donate_argnums=(0, 1))
        return f.lower(p, s, g, jnp.bool_(True)).compile().memory_analysis().temp_size_in_bytes

    assert temps(plain) >= 0.5 * mb  # the control: XLA:CPU copies the moments it selects
    assert temps(ST.gated_update) < 0.05 * mb
