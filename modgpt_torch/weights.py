"""Canonical (framework-free) weights <-> the torch GPT (nanoGPT checkpoints: modgpt.nanogpt).

Canonical names are the module paths (modgpt.weights); matrices are stored (in, out), so every
nn.Linear weight is transposed on the way out and back in. A tied model has no lm_head tensor.
"""
from __future__ import annotations

import numpy as np
import torch

from modgpt import weights as W


def to_canonical(model) -> dict[str, np.ndarray]:
    """Canonical name -> float32 numpy array (in, out) for matrices, in canonical order."""
    sd = {k: v for k, v in model.state_dict().items()}
    out = {}
    for name in W.canonical_shapes(model.cfg):
        t = sd[name].detach().to("cpu", torch.float32)
        out[name] = np.ascontiguousarray((t.T if W.is_matrix(name) else t).numpy())
    return out


@torch.no_grad()
def load_canonical(model, tensors: dict) -> None:
    """Copy canonical tensors (numpy or torch) into the model's parameters, checking names/shapes."""
    W.check_tensors(model.cfg, tensors, "canonical weights")
    params = dict(model.named_parameters())
    for name in W.canonical_shapes(model.cfg):
        t = torch.as_tensor(np.asarray(tensors[name], dtype=np.float32))
        if W.is_matrix(name):
            t = t.T
        p = params[name]
        p.copy_(t.to(device=p.device, dtype=p.dtype))
