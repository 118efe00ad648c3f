"""python -m modgpt_jax.export --out_dir=RUN --to FILE.safetensors [--overwrite]: latest checkpoint -> canonical."""
from __future__ import annotations

import sys

from modgpt import cli, commands
from modgpt import weights as W

PROG = "python -m modgpt_jax.export"


def main(argv=None) -> int:
    out_dir, to = commands.export_target(PROG, argv)
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
