"""Load a trained run's latest checkpoint onto one device (for sample and export)."""
from __future__ import annotations

import os

from modgpt import loop


def load_model(out_dir: str):
    """(nnx model with the checkpoint's params, Config, checkpoint meta); raises CheckpointError."""
    import jax

    from modgpt_jax import checkpoint as CK
    from modgpt_jax.train import BACKEND, Trainer
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
    tr = Trainer(cfg, devices=jax.devices()[:1])
    tr.params, tr.opt_state, meta = CK.restore(out_dir, tr.params, tr.opt_state)
    return tr.sync_model(), cfg, meta
