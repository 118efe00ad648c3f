"""python -m modgpt_jax.export --out_dir=RUN --to FILE.safetensors: latest checkpoint -> canonical."""
from __future__ import annotations

import sys

from modgpt import cli
from modgpt import weights as W


def main(argv=None) -> int:
    args = cli.parse(argv, prog="python -m modgpt_jax.export",
                     extra_flags={"to": "output .safetensors path (canonical format)"})
    to = args.flags.get("to")
    out_dir = args.config.train.out_dir
    if not out_dir or not isinstance(to, str):
        cli.fail("usage: python -m modgpt_jax.export --out_dir=RUN --to FILE.safetensors")
    from modgpt_jax.checkpoint import CheckpointError, exit_if_unreadable
    from modgpt_jax.inference import load_model
    from modgpt_jax.weights import to_canonical
    try:
        model, cfg, meta = load_model(out_dir)
    except CheckpointError as e:
        exit_if_unreadable(e)
        cli.fail(str(e))
    W.save(to, to_canonical(model), cfg)
    print(f"wrote {to} ({len(W.canonical_shapes(cfg.model))} tensors, iteration {meta['iter']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
