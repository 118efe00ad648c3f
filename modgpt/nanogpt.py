"""nanoGPT (github.com/karpathy/nanoGPT) checkpoints -> modgpt's gpt2 config and canonical tensors.

A nanoGPT ckpt.pt is {"model_args": {...}, "model": state_dict, ...} written by torch.save; it is read
with modgpt.torchfile, so neither backend needs torch for it. nn.Linear weights are (out, in) there
and (in, out) in the canonical format.
"""
from __future__ import annotations

import numpy as np

from modgpt import torchfile
from modgpt import weights as W
from modgpt.config import ModelConfig

# nanoGPT's names inside each block -> canonical ones
BLOCK_MAP = {"ln_1": "norm1", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj", "ln_2": "norm2",
             "mlp.c_fc": "ffn.fc", "mlp.c_proj": "ffn.proj"}
SIZE_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")


def read_checkpoint(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(model_args, state dict as numpy) of a nanoGPT ckpt.pt; ValueError / FileNotFoundError in one line."""
    try:
        ck = torchfile.load(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"nanoGPT checkpoint '{path}' not found") from None
    except torchfile.TorchFileError as e:
        raise ValueError(f"nanoGPT checkpoint {e}") from None
    if not isinstance(ck, dict) or not isinstance(ck.get("model"), dict) or not isinstance(ck.get("model_args"), dict):
        raise ValueError(f"'{path}' is not a nanoGPT checkpoint (needs 'model_args' and 'model')")
    missing = [k for k in SIZE_ARGS if k not in ck["model_args"]]
    if missing:
        raise ValueError(f"'{path}': model_args has no '{missing[0]}' (not a nanoGPT checkpoint?)")
    return dict(ck["model_args"]), ck["model"]


def model_config(model_args: dict, explicit: dict | None = None) -> dict:
    """Flat model keys: the gpt2 preset with nanoGPT's sizes, bias and dropout. A dropout in explicit
    (the user's) wins: it is not part of the weights."""
    from modgpt.presets import PRESETS
    flat = dict(PRESETS["gpt2"])
    flat.update({k: model_args[k] for k in SIZE_ARGS})
    flat["dropout"] = (explicit or {}).get("dropout", model_args.get("dropout", 0.0))
    flat["bias"] = bool(model_args.get("bias", True))
    # nanoGPT's LayerNorm(bias=False) is modgpt's layernorm_nobias
    flat["normalization"] = "layernorm" if flat["bias"] else "layernorm_nobias"
    flat["weight_tying"] = True
    return flat


def to_canonical(state: dict, m: ModelConfig, source: str = "nanoGPT checkpoint") -> dict[str, np.ndarray]:
    """A nanoGPT state dict (`_orig_mod.` prefixes of a compiled model allowed) -> canonical float32
    tensors, checked against m's names and shapes (ValueError naming the first problem)."""
    sd = {}
    for k, v in state.items():
        k = k.replace("_orig_mod.", "")
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal-mask buffer of nanoGPT's non-flash attention
        sd[k] = np.asarray(v, dtype=np.float32)
    names = {"transformer.wte.weight": "wte.weight", "transformer.wpe.weight": "wpe.weight",
             "transformer.ln_f.weight": "norm_f.weight", "transformer.ln_f.bias": "norm_f.bias"}
    for i in range(m.n_layer):
        for src, dst in BLOCK_MAP.items():
            for leaf in ("weight", "bias"):
                names[f"transformer.h.{i}.{src}.{leaf}"] = f"blocks.{i}.{dst}.{leaf}"
    out = {}
    for k, t in sd.items():
        if k == "lm_head.weight":  # nanoGPT ties its head to wte
            if "transformer.wte.weight" in sd and not np.array_equal(t, sd["transformer.wte.weight"]):
                raise ValueError(f"{source}: lm_head.weight differs from transformer.wte.weight (an untied "
                                 f"head is not nanoGPT's architecture)")
            continue
        if k not in names:
            raise ValueError(f"{source}: unexpected tensor '{k}' for a {m.n_layer}-layer nanoGPT model")
        name = names[k]
        out[name] = np.ascontiguousarray(t.T) if W.is_matrix(name) else t
    W.check_tensors(m, out, source)
    return {k: out[k] for k in W.canonical_shapes(m)}
