"""python -m modgpt_torch.export --out_dir=RUN --to FILE.safetensors [--overwrite]: latest checkpoint -> canonical."""
from __future__ import annotations

import sys

from modgpt import cli, commands
from modgpt import weights as W

PROG = "python -m modgpt_torch.export"


def main(argv=None) -> int:
    out_dir, to = commands.export_target(PROG, argv)
    from modgpt_torch import checkpoint as CK
    from modgpt_torch.weights import to_canonical
    try:
        model, cfg, ck = CK.load_model(out_dir, device="cpu")
    except CK.CheckpointError as e:
        cli.fail(str(e))
    W.save(to, to_canonical(model), cfg)
    print(f"wrote {to} ({len(W.canonical_shapes(cfg.model))} tensors, iteration {ck['iter']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
