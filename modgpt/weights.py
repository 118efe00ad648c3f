"""The canonical, framework-free weight layout shared by both backends and the safetensors format.

Names follow the module attribute paths that both backends use (principle 8), so the map between a
backend's parameters and this table is mechanical:

    wte.weight                    (vocab, n_embd)           token embedding (the LM head when tied)
    wpe.weight                    (block_size, n_embd)      learned_absolute only
    blocks.{i}.norm1.weight       (n_embd,)                 + .bias for layernorm
    blocks.{i}.attn.qkv.weight    (n_embd, qkv_size)        stored (in, out); out = [q | k | v] column
    blocks.{i}.attn.qkv.bias      (qkv_size,)               blocks, heads contiguous inside each block
                                                            (see "qkv layout" below)
    blocks.{i}.attn.q_norm.weight (head_dim,)               qk_norm only; + .bias for layernorm
    blocks.{i}.attn.k_norm.weight (head_dim,)               qk_norm only; + .bias for layernorm
    blocks.{i}.attn.proj.weight   (n_embd, n_embd)          + .bias when bias=True
    blocks.{i}.norm2.weight       (n_embd,)                 + .bias for layernorm
    blocks.{i}.ffn.fc.weight      (n_embd, ffn_hidden)      the value/up projection; + .bias
    blocks.{i}.ffn.gate.weight    (n_embd, ffn_hidden)      gated FFNs only; + .bias
    blocks.{i}.ffn.proj.weight    (ffn_hidden, n_embd)      + .bias
    norm_f.weight                 (n_embd,)                 pre-norm only; + .bias for layernorm
    lm_head.weight                (n_embd, vocab)           untied only; never a bias

qkv layout: qkv_size = (n_head + 2 * kv_heads) * head_dim, kv_heads = n_kv_head or n_head. Columns
[0, n_head*hd) are q, query head h at h*hd..(h+1)*hd; then kv_heads*hd columns of k, then of v, kv
head g at g*hd..(g+1)*hd inside its block. Query head h attends with kv head h // (n_head/kv_heads)
(consecutive query heads share one kv head). With n_kv_head unset this is (n_embd, 3*n_embd).

Every matrix is stored (in, out) like a Flax kernel; torch.nn.Linear keeps (out, in), so the torch
side transposes. Embeddings are (rows, n_embd) in both. All tensors are float32 in the file.
The file's metadata holds {"format": FORMAT, "config": <Config JSON>}.
"""
from __future__ import annotations

import json
from typing import Any

from modgpt.config import Config, ModelConfig, from_dict

FORMAT = "modgpt-canonical-v1"
# Canonical names whose tensors are linear-layer matrices (stored (in, out); torch transposes).
MATRIX_SUFFIXES = ("attn.qkv.weight", "attn.proj.weight", "ffn.fc.weight", "ffn.gate.weight",
                   "ffn.proj.weight", "lm_head.weight")


def is_matrix(name: str) -> bool:
    return name.endswith(MATRIX_SUFFIXES)


def canonical_shapes(m: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape a model with this config has, in a fixed order."""
    D, V, F = m.n_embd, m.vocab_size, m.ffn_hidden_size
    out: dict[str, tuple[int, ...]] = {"wte.weight": (V, D)}
    if m.position_encoding == "learned_absolute":
        out["wpe.weight"] = (m.block_size, D)

    def norm(prefix: str, dim: int = D) -> None:
        out[f"{prefix}.weight"] = (dim,)
        if m.norm_has_bias:
            out[f"{prefix}.bias"] = (dim,)

    def linear(prefix: str, n_in: int, n_out: int) -> None:
        out[f"{prefix}.weight"] = (n_in, n_out)
        if m.bias:
            out[f"{prefix}.bias"] = (n_out,)

    for i in range(m.n_layer):
        p = f"blocks.{i}"
        norm(f"{p}.norm1")
        linear(f"{p}.attn.qkv", D, m.qkv_size)
        if m.qk_norm:
            norm(f"{p}.attn.q_norm", m.head_dim)
            norm(f"{p}.attn.k_norm", m.head_dim)
        linear(f"{p}.attn.proj", D, D)
        norm(f"{p}.norm2")
        linear(f"{p}.ffn.fc", D, F)
        if m.gated:
            linear(f"{p}.ffn.gate", D, F)
        linear(f"{p}.ffn.proj", F, D)
    if m.final_norm:
        norm("norm_f")
    if not m.weight_tying:
        out["lm_head.weight"] = (D, V)
    return out


def check_tensors(m: ModelConfig, tensors: dict[str, Any], source: str = "weights") -> None:
    """Raise ValueError naming the first missing, unexpected or misshaped tensor."""
    want = canonical_shapes(m)
    missing = [k for k in want if k not in tensors]
    if missing:
        raise ValueError(f"{source}: missing tensor '{missing[0]}' ({len(missing)} missing in all)")
    extra = [k for k in tensors if k not in want]
    if extra:
        raise ValueError(f"{source}: unexpected tensor '{extra[0]}' ({len(extra)} unexpected in all)")
    for k, shape in want.items():
        got = tuple(tensors[k].shape)
        if got != shape:
            raise ValueError(f"{source}: tensor '{k}' has shape {got}, expected {shape}")


def save(path: str, tensors: dict[str, Any], cfg: Config) -> None:
    """Write numpy float32 tensors + config metadata atomically (tmp file, then rename)."""
    import numpy as np
    from safetensors.numpy import save_file

    from modgpt.io import atomic_path
    check_tensors(cfg.model, tensors, path)
    arrays = {k: np.ascontiguousarray(np.asarray(tensors[k], dtype=np.float32))
              for k in canonical_shapes(cfg.model)}
    with atomic_path(path) as tmp:
        save_file(arrays, tmp, metadata={"format": FORMAT, "config": cfg.to_json()})


def load(path: str) -> tuple[dict[str, Any], Config]:
    """Read a canonical file: (numpy tensors, config). Checks names and shapes against the config."""
    import os

    from safetensors import safe_open
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file '{path}' not found")
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise ValueError(f"{path}: not a modgpt canonical weights file (metadata format "
                         f"{meta.get('format')!r}, expected {FORMAT!r})")
    cfg = from_dict(json.loads(meta["config"]))
    check_tensors(cfg.model, tensors, path)
    return tensors, cfg
