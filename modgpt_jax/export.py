"""python -m modgpt_jax.export --out_dir=RUN --to FILE.safetensors|DIR [--format canonical|hf]
[--overwrite]: the latest checkpoint as modgpt's canonical safetensors or a transformers model directory."""
from __future__ import annotations

import sys

from modgpt import cli, commands

PROG = "python -m modgpt_jax.export"


def main(argv=None) -> int:
    target = commands.export_target(PROG, argv)
    from modgpt_jax.checkpoint import CheckpointError, exit_if_unreadable
    from modgpt_jax.inference import load_model
    from modgpt_jax.weights import to_canonical
    try:
        model, cfg, meta = load_model(target.out_dir)
    except CheckpointError as e:
        exit_if_unreadable(e)
        cli.fail(str(e))
    commands.write_export(target, to_canonical(model), cfg, meta["iter"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
