"""python -m modgpt_torch.export --out_dir=RUN --to FILE.safetensors|DIR [--format canonical|hf]
[--overwrite]: the latest checkpoint as modgpt's canonical safetensors or a transformers model directory."""
from __future__ import annotations

import sys

from modgpt import cli, commands

PROG = "python -m modgpt_torch.export"


def main(argv=None) -> int:
    target = commands.export_target(PROG, argv)
    from modgpt_torch import checkpoint as CK
    from modgpt_torch.weights import to_canonical
    try:
        model, cfg, ck = CK.load_model(target.out_dir, device="cpu")
    except CK.CheckpointError as e:
        cli.fail(str(e))
    commands.write_export(target, to_canonical(model), cfg, ck["iter"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
