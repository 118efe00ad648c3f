"""Loss, AdamW and the jitted training step, as pure functions of (params, opt_state, batch).

Semantics follow docs/backend_contract.md: loss of each micro step / accum, grads summed over micro
steps in order, global-norm clipping with torch's rule, lr = loop.lr_at(it) set before the update
(passed in as a scalar through optax.inject_hyperparams, so the schedule is exactly loop.lr_at),
decoupled weight decay on canonical ndim >= 2. A non-finite loss or grad norm leaves params and
optimizer state unchanged (the host then stops or counts the skip).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from modgpt.config import Config, TrainConfig
from modgpt_jax.weights import decay_mask

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def make_optimizer(t: TrainConfig, scanned: bool = False) -> optax.GradientTransformation:
    """optax AdamW with every hyperparameter explicit (optax and torch defaults differ)."""
    return optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
        learning_rate=t.learning_rate, b1=t.beta1, b2=t.beta2, eps=t.adam_eps, eps_root=0.0,
        weight_decay=t.weight_decay, mask=lambda p: decay_mask(p, scanned), nesterov=False)


def cast(params, dtype):
    """Compute copy of the float32 master params (gradients flow back to float32)."""
    if dtype == jnp.float32:
        return params
    return jax.tree.map(lambda p: p.astype(dtype), params)


def make_loss_fn(graphdef, dtype=jnp.float32):
    """loss(params, x_BxT, y_BxT, key) -> mean cross-entropy (float32)."""
    def loss_fn(params, x, y, key=None):
        model = nnx.merge(graphdef, cast(params, dtype))
        return model(x, y, key=key)[1]
    return loss_fn


def global_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(tree)))


def clip(grads, norm, max_norm: float):
    """torch.nn.utils.clip_grad_norm_: scale = min(1, max_norm / (norm + 1e-6))."""
    if max_norm <= 0:
        return grads
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: g * scale, grads)


def make_train_step(graphdef, cfg: Config, tx: optax.GradientTransformation):
    """step(params, opt_state, xs_AxBxT, ys_AxBxT, lr, key) -> (params, opt_state, metrics).

    A = gradient_accumulation_steps micro batches, scanned in order; key is the base dropout key
    for this iteration (ignored when dropout == 0).
    """
    t = cfg.train
    accum = t.gradient_accumulation_steps
    loss_fn = make_loss_fn(graphdef, DTYPES[t.dtype])
    use_key = cfg.model.dropout > 0

    def micro(params, carry, xyk):
        g_acc, l_acc = carry
        x, y, i = xyk
        key = jax.random.fold_in(carry_key[0], i) if use_key else None
        loss, g = jax.value_and_grad(lambda p: loss_fn(p, x, y, key) / accum)(params)
        return (jax.tree.map(jnp.add, g_acc, g), l_acc + loss), None

    carry_key = [None]

    def step(params, opt_state, xs, ys, lr, key):
        carry_key[0] = key
        zeros = jax.tree.map(jnp.zeros_like, params)
        (grads, loss), _ = jax.lax.scan(lambda c, b: micro(params, c, b), (zeros, jnp.float32(0.0)),
                                        (xs, ys, jnp.arange(accum)))
        norm = global_norm(grads)
        grads = clip(grads, norm, t.grad_clip)
        ok = jnp.isfinite(loss) & jnp.isfinite(norm)
        new_params, new_opt = gated_update(tx, grads, opt_state, params, lr, ok)
        return new_params, new_opt, dict(loss=loss, grad_norm=norm, ok=ok)
    return step


def gated_update(tx: optax.GradientTransformation, grads, opt_state, params, lr, ok):
    """(params, opt_state) after one AdamW step (make_optimizer) at learning rate lr where ok, else
    as they were (bit for bit; a zero moment may lose its sign).

    Selecting the whole new state with where(ok, new, old) makes XLA copy both AdamW moments at the
    start of the step (they stay live across the forward and backward: 1 GB at GPT-2 124M), as it
    fuses the moments' update into the parameters' update, which then reads the old moments after
    the donated buffers hold the new ones. Gated at its inputs instead (where not ok the moments'
    decays are 1 and the gradients 0), AdamW itself leaves them as they were, and the parameters'
    update reads the moments it writes (docs/performance.md). The scalar state is selected. The
    hyperparameters are set in the state optax.inject_hyperparams keeps for that purpose."""
    hp = opt_state.hyperparams
    one = jnp.float32(1.0)
    gate = dict(hp, learning_rate=jnp.asarray(lr, jnp.float32), b1=jnp.where(ok, hp["b1"], one),
                b2=jnp.where(ok, hp["b2"], one))
    grads = jax.tree.map(lambda g: jnp.where(ok, g, jnp.zeros((), g.dtype)), grads)
    updates, new_opt = tx.update(grads, opt_state._replace(hyperparams=gate), params)
    new_params = jax.tree.map(lambda n, p: jnp.where(ok, n, p), optax.apply_updates(params, updates), params)
    old = opt_state._replace(hyperparams=dict(gate, b1=hp["b1"], b2=hp["b2"]))
    new_opt = jax.tree.map(lambda n, o: jnp.where(ok, n, o) if jnp.ndim(n) == 0 else n,
                           new_opt._replace(hyperparams=old.hyperparams), old)
    return new_params, new_opt


def jit_train_step(step, param_sh, opt_sh, batch_sh, repl):
    """Jitted with explicit in/out shardings; params and optimizer state are donated."""
    return jax.jit(step, in_shardings=(param_sh, opt_sh, batch_sh, batch_sh, repl, repl),
                   out_shardings=(param_sh, opt_sh, repl), donate_argnums=(0, 1))


def opt_shardings(tx, abstract_opt_state, param_sh, repl):
    """Optimizer state placed like its params (mu, nu); scalars (count, hyperparams) replicated."""
    return optax.tree_map_params(tx, lambda _, s: s, abstract_opt_state, param_sh,
                                 transform_non_params=lambda _: repl)
