"""A trained run's weights on one device, and decoding: what sample, export and the end of training use.

Decoding keeps a fixed (B, block_size) token buffer and a length index, so one jitted step serves
every length (no recompiles); once the buffer is full it slides left (nanoGPT's crop). No KV cache:
each step re-runs the block_size window, which is cheap at the sizes this runs on.
"""
from __future__ import annotations

import os

import numpy as np

from modgpt import data as D
from modgpt import loop

BACKEND = "jax"


def load_model(out_dir: str):
    """(nnx model with the latest checkpoint's parameters, Config, checkpoint meta) on this process's
    first device; reads the parameters only (no optimizer state). Raises CheckpointError."""
    import jax
    from flax import nnx

    from modgpt_jax import checkpoint as CK
    from modgpt_jax.kernels import apply_kernels
    from modgpt_jax.model import build
    from modgpt_jax.weights import param_dict
    cfg_path = os.path.join(out_dir, loop.CONFIG_NAME)
    if not os.path.isfile(cfg_path):
        raise CK.CheckpointError(f"no run in '{out_dir}' ({loop.CONFIG_NAME} not found)")
    try:
        loop.check_backend(out_dir, BACKEND, reading=True)
    except loop.SetupError as e:
        raise CK.CheckpointError(str(e)) from None
    if CK.latest_step(out_dir) is None:
        raise CK.CheckpointError(f"no checkpoint in '{os.path.join(out_dir, CK.CKPT_DIR)}'; train first "
                                 f"(python -m modgpt_jax.train --out_dir={out_dir} ...)")
    cfg = loop.read_saved_config(cfg_path).replace(mesh_data=1, mesh_fsdp=1)
    with jax.default_device(jax.local_devices()[0]):
        model = build(cfg)
    apply_kernels(model, cfg)
    graphdef, params = nnx.split(model)
    params, _, meta = CK.restore(out_dir, param_dict(model), None)
    return nnx.merge(graphdef, params), cfg, meta


def make_decode_step(model, block_size: int, temperature: float, top_k: int):
    """step(buf_BxT, n, key) -> (buf, n, next_B): n = tokens in the buffer (1..block_size)."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def step(buf, n, key):
        logits, _ = model(buf)  # (B, T, V) float32; causal, so positions < n ignore the padding
        last = jax.lax.dynamic_index_in_dim(logits, n - 1, axis=1, keepdims=False)  # (B, V)
        if temperature <= 0:
            nxt = jnp.argmax(last, -1)
        else:
            last = last / temperature
            if top_k:
                kth = jax.lax.top_k(last, min(top_k, last.shape[-1]))[0][:, -1:]
                last = jnp.where(last < kth, -jnp.inf, last)
            nxt = jax.random.categorical(key, last, axis=-1)
        nxt = nxt.astype(buf.dtype)
        full = n >= block_size
        shifted = jnp.where(full, jnp.roll(buf, -1, axis=1), buf)
        pos = jnp.where(full, block_size - 1, n)
        buf = jax.lax.dynamic_update_index_in_dim(shifted, nxt, pos, axis=1)
        return buf, jnp.minimum(n + 1, block_size), nxt
    return step


def generate(model, prompt_ids, max_new_tokens: int, num_samples: int, temperature: float = 0.8,
             top_k: int = 200, seed: int = 1337) -> np.ndarray:
    """(num_samples, len(prompt) + max_new_tokens) token ids."""
    import jax
    import jax.numpy as jnp
    T = model.cfg.block_size
    ctx = list(prompt_ids)[-T:]
    buf = np.zeros((num_samples, T), np.int32)
    buf[:, :len(ctx)] = ctx
    step = make_decode_step(model, T, temperature, top_k)
    buf, n, key = jnp.asarray(buf), jnp.int32(len(ctx)), jax.random.key(seed)
    out = []
    for i in range(max_new_tokens):
        buf, n, nxt = step(buf, n, jax.random.fold_in(key, i))
        out.append(nxt)
    new = np.stack([np.asarray(t) for t in out], axis=1) if out else np.zeros((num_samples, 0), np.int32)
    return np.concatenate([np.tile(np.asarray(prompt_ids, np.int32), (num_samples, 1)), new], axis=1)


def host_model(graphdef, params):
    """An nnx model on this process's first device from (possibly sharded) params.

    Collective when the params span several processes: every process must call it.
    """
    import jax
    from flax import nnx
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        params = multihost_utils.process_allgather(params, tiled=True)
    dev = jax.local_devices()[0]
    # jax arrays (not numpy) so a jitted decode step receives them as arguments, not HLO constants
    return nnx.merge(graphdef, jax.tree.map(lambda a: jax.device_put(jax.device_get(a), dev), params))


def end_of_run_sample(model, cfg, max_chars: int = 200, temperature: float = 0.8, top_k: int = 200) -> str | None:
    """A short seeded sample (~max_chars characters from a newline prompt) printed when training ends.

    None when the run's data has no text tokenizer (only char and gpt2 BPE datasets decode to text).
    """
    plan = D.end_sample_plan(cfg.train.data_dir, cfg.train.dataset, max_chars)
    if plan is None:
        return None
    tok, ids, n_new, vocab = plan
    row = generate(model, ids, n_new, 1, temperature, top_k, cfg.train.seed)[0][len(ids):]
    return D.decode_sample(tok, row, vocab, max_chars)


