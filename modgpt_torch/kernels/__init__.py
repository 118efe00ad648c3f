"""Leaner replacements for reference pieces of the torch model, chosen once, after the model is
built (`--kernels=auto|reference`). Each is a module class with the same parameters, inputs and
outputs as the piece it replaces (the parity suite compares them), swapped in place. `auto` uses,
on each device type, only the kernels measured to help there (docs/performance.md): their memory
saving was measured on the CPU; on a GPU nothing has been measured yet, so it runs the reference.
"""
from __future__ import annotations

import torch

from modgpt import config as C
from modgpt_torch.components.attention import causal_mask
from modgpt_torch.components.positions import POSITIONS

# What each kernel does, for the start-up report and the docs.
KERNELS = {
    "norm_backward": "RMSNorm keeping only its input and the float32 rstd for the backward",
    "ffn_recompute": "gated FFNs recomputing act(gate) in the backward",
    "blocked_cross_entropy": "the loss keeping the logits once, its backward in blocks of rows",
    "v_apart": "v copied apart from the qkv projection under RoPE, which is then freed",
    "rope_tables": "one RoPE cos/sin table for every layer",
}
# --kernels=auto per device type: only what was measured to help there.
AUTO = {"cpu": tuple(KERNELS), "cuda": ()}


def selected(cfg: C.Config, device_type: str) -> tuple[str, ...]:
    """The kernels a run of cfg uses on this device type."""
    return () if cfg.system.kernels == "reference" else AUTO.get(device_type, ())


def _swaps(name: str) -> dict:
    from modgpt_torch.kernels import attention, ffn, loss, norms, positions
    return {"norm_backward": norms.SWAPS, "ffn_recompute": ffn.SWAPS, "blocked_cross_entropy": loss.SWAPS,
            "v_apart": attention.SWAPS, "rope_tables": positions.SWAPS}[name]


def apply_kernels(model, cfg: C.Config, device_type: str) -> tuple[str, ...]:
    """Swap the selected kernels into a built model, in place; their names. A kernel's class adds no
    parameters, so each module keeps its parameters and their names (checkpoints, weight files)."""
    names = selected(cfg, device_type)
    swaps = {}
    for name in names:
        swaps.update(_swaps(name))
    for module in model.modules():
        if type(module) in swaps:
            module.__class__ = swaps[type(module)]
    return names


def describe(names: tuple[str, ...], device_type: str) -> str:
    """The report's kernels line."""
    return f"{', '.join(names)} ({device_type})" if names else f"reference (none on {device_type})"


SDPA_KERNELS = {"FLASH_ATTENTION": "flash attention", "EFFICIENT_ATTENTION": "memory-efficient attention",
                "CUDNN_ATTENTION": "cuDNN attention", "MATH": "math: T x S probabilities"}


def describe_attention(m, dtype: torch.dtype, device) -> str:
    """The attention kernel a training step of model config m runs on `device` in `dtype`, for the
    start-up report and the run log. For sdpa, torch's own choice for a call of the training shape
    (torch._fused_sdp_choice, the dispatcher's pick; private, so a failure only loses the detail)."""
    if m.attention_backend != "sdpa":
        return f"{m.attention_backend} (explicit softmax: T x S probabilities)"
    try:
        from torch.nn.attention import SDPBackend
        q = torch.zeros(1, m.n_head, m.block_size, m.head_dim, dtype=dtype, device=device, requires_grad=True)
        k = torch.zeros(1, m.kv_heads, m.block_size, m.head_dim, dtype=dtype, device=device, requires_grad=True)
        bias = POSITIONS.get(m.position_encoding)(m).bias(torch.arange(m.block_size, device=device))
        mask = None if bias is None else causal_mask(m.block_size, device, bias).to(dtype)
        name = SDPBackend(torch._fused_sdp_choice(q, k, k, mask, m.dropout, mask is None,
                                                  enable_gqa=m.kv_heads != m.n_head)).name
    except Exception as e:  # noqa: BLE001
        return f"sdpa (torch picks the kernel per call; its choice unknown here: {type(e).__name__})"
    return f"sdpa ({SDPA_KERNELS.get(name, name.lower())})"
