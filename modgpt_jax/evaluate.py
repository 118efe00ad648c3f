"""python -m modgpt_jax.evaluate --out_dir=RUN [--tasks hellaswag] [--input FILE] [--limit N]
[--json FILE] [--skip_unencodable] [--device D]: multiple-choice tasks on the latest checkpoint."""
from __future__ import annotations

import sys

from modgpt import cli
from modgpt import evaluate as E


def loglik_fn(model):
    """loglik(x, y, mask) -> per-row sums of log p(y | x) over the mask (one compile per padded length)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    @jax.jit
    def f(x, y, mask):
        logp = jax.nn.log_softmax(model(x)[0].astype(jnp.float32), axis=-1)
        return (jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0] * mask).sum(-1)

    return lambda x, y, mask: np.asarray(f(jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask)), dtype=np.float64)


def main(argv=None) -> int:
    opt = E.settings("python -m modgpt_jax.evaluate", argv)
    from modgpt_jax.distributed import inference_platform
    inference_platform(opt.device)
    from modgpt_jax.checkpoint import CheckpointError, exit_if_unreadable
    from modgpt_jax.inference import load_model
    try:
        model, cfg, _ = load_model(opt.out_dir)
    except CheckpointError as e:
        exit_if_unreadable(e)
        cli.fail(str(e))
    return E.run(opt, cfg, loglik_fn(model))


if __name__ == "__main__":
    sys.exit(main())
