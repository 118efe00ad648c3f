"""Canonical (framework-free) weights <-> ConfigurableGPT, and nanoGPT ckpt.pt import.

Canonical names are the module paths (modgpt.weights); matrices are stored (in, out), so every
nn.Linear weight is transposed on the way out and back in. A tied model has no lm_head tensor.
"""
from __future__ import annotations

import numpy as np
import torch

from modgpt import weights as W
from modgpt.config import ModelConfig


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


# ---------------------------------------------------------------------------------------------
# nanoGPT (github.com/karpathy/nanoGPT) checkpoints: {"model_args": {...}, "model": state_dict}.
NANOGPT_MAP = {  # nanoGPT suffix -> ours, inside each block
    "ln_1": "norm1", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj", "ln_2": "norm2",
    "mlp.c_fc": "ffn.fc", "mlp.c_proj": "ffn.proj",
}


def nanogpt_model_config(model_args: dict, base: dict | None = None) -> dict:
    """Flat model keys for the gpt2 preset with nanoGPT's sizes (vocab, bias, dropout included)."""
    from modgpt.presets import PRESETS
    flat = dict(PRESETS["gpt2"])
    flat.update(base or {})
    for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout"):
        if k in model_args:
            flat[k] = model_args[k]
    flat["bias"] = bool(model_args.get("bias", True))
    # nanoGPT's LayerNorm(bias=False) is our layernorm_nobias
    flat["normalization"] = "layernorm" if flat["bias"] else "layernorm_nobias"
    flat["weight_tying"] = True
    return flat


def nanogpt_to_canonical(state_dict: dict, m: ModelConfig) -> dict[str, np.ndarray]:
    """Map a nanoGPT state dict (nn.Linear (out, in), `_orig_mod.` prefixes allowed) to canonical."""
    sd = {}
    for k, v in state_dict.items():
        k = k.replace("_orig_mod.", "")
        if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"):
            continue  # the causal-mask buffer of nanoGPT's non-flash path
        sd[k] = v.detach().to("cpu", torch.float32)
    out: dict[str, np.ndarray] = {"wte.weight": sd["transformer.wte.weight"].numpy()}
    out["wpe.weight"] = sd["transformer.wpe.weight"].numpy()
    for i in range(m.n_layer):
        for src, dst in NANOGPT_MAP.items():
            for leaf in ("weight", "bias"):
                key = f"transformer.h.{i}.{src}.{leaf}"
                if key not in sd:
                    continue
                name = f"blocks.{i}.{dst}.{leaf}"
                t = sd[key]
                out[name] = (t.T if W.is_matrix(name) else t).contiguous().numpy()
    out["norm_f.weight"] = sd["transformer.ln_f.weight"].numpy()
    if "transformer.ln_f.bias" in sd:
        out["norm_f.bias"] = sd["transformer.ln_f.bias"].numpy()
    return out


def read_nanogpt(path: str) -> tuple[dict, dict]:
    """(model_args, state_dict) of a nanoGPT ckpt.pt."""
    import os
    if not os.path.isfile(path):
        raise FileNotFoundError(f"nanoGPT checkpoint '{path}' not found")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ck, dict) or "model" not in ck or "model_args" not in ck:
        raise ValueError(f"'{path}' is not a nanoGPT checkpoint (needs 'model_args' and 'model')")
    return dict(ck["model_args"]), ck["model"]
