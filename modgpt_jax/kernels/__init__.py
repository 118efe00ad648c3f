"""Machine-specific replacements for reference pieces of the model, chosen once, after the model is
built (`--kernels=auto|reference`). Each takes the same inputs and gives the same outputs as the
piece it replaces (the parity suite compares them): a module class with the same parameters, or
the attention function. `auto` uses, on each platform, only the kernels measured to help there
(docs/performance.md); nothing is decided per trace inside the model's components.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from modgpt import config as C

# What each kernel does, for the start-up report and the docs.
KERNELS = {
    "cpu_linear": "linear layers whose weight gradient is laid out for XLA:CPU's matmul",
    "cpu_attention": "causal attention in query blocks with a hand-written backward; q, k apart from v under RoPE",
    "norm_backward": "norms with the textbook backward written out",
    "ffn_recompute": "FFN activations recomputed in the backward from their inputs",
    "fused_dropout": "dropout masks (bit for bit jax.random's) drawn by fused elementwise code",
    "cpu_remat": "--remat recomputing each block tied to its incoming gradient",
    "cudnn_attention": "sdpa as cuDNN flash attention where cuDNN takes the call",
}
# --kernels=auto per JAX platform: only what was measured to help there.
AUTO = {
    "cpu": ("cpu_linear", "cpu_attention", "norm_backward", "ffn_recompute", "fused_dropout", "cpu_remat"),
    "gpu": ("cudnn_attention",),
}


def selected(cfg: C.Config, platform: str | None = None) -> tuple[str, ...]:
    """The kernels a run of cfg uses on this platform (default: JAX's default backend)."""
    if cfg.system.kernels == "reference":
        return ()
    return AUTO.get(platform or jax.default_backend(), ())


def _swaps(name: str) -> dict:
    """Reference class -> the kernel's class, for the kernels that are module classes."""
    from modgpt_jax.kernels import cpu_attention, cpu_linear, dropout, ffn, norms, remat
    return {"cpu_linear": {nnx.Linear: cpu_linear.CPULinear},
            "cpu_attention": cpu_attention.SWAPS,
            "norm_backward": norms.SWAPS,
            "ffn_recompute": ffn.SWAPS,
            "fused_dropout": {nnx.Dropout: dropout.FusedDropout},
            "cpu_remat": remat.SWAPS}.get(name, {})


def _attention_kernels(name: str) -> dict:
    """attention_backend -> the kernel's function, for the kernels that replace the attention's."""
    if name == "cpu_attention":
        from modgpt_jax.kernels.cpu_attention import KERNELS as K
        return K
    if name == "cudnn_attention":
        from modgpt_jax.kernels.cudnn import sdpa
        return {"sdpa": sdpa}
    return {}


def apply_kernels(model, cfg: C.Config, platform: str | None = None) -> tuple[str, ...]:
    """Swap the selected kernels into a built model, in place; their names. A kernel's class adds
    no state, so each module object becomes one in place: its parameters, their logical axes and
    paths stay as they were (the reference model's, which checkpoints and weight files use)."""
    from modgpt_jax.model import CausalSelfAttention
    names = selected(cfg, platform)
    swaps, attend = {}, {}
    for name in names:
        swaps.update(_swaps(name))
        attend.update(_attention_kernels(name))
    for _, node in list(nnx.iter_graph(model)):
        if isinstance(node, CausalSelfAttention) and cfg.model.attention_backend in attend:
            node.kernel = attend[cfg.model.attention_backend]
        if type(node) in swaps:
            node.__class__ = swaps[type(node)]
    return names


def describe_attention(m: C.ModelConfig, dtype: str, names: tuple[str, ...]) -> str:
    """The attention a training step of model m runs with these kernels, in words (report, run log)."""
    if "cpu_attention" in names:
        from modgpt_jax.kernels.cpu_attention import describe
        return describe(m.attention_backend, dtype, m.block_size, m.n_head, m.dropout)
    if m.attention_backend == "manual":
        return "manual (explicit softmax: T x S probabilities)"
    if m.dropout:
        return "manual (sdpa takes no attention dropout: T x S probabilities)"
    if "cudnn_attention" in names:
        from modgpt_jax.components.positions import POSITIONS
        from modgpt_jax.kernels.cudnn import describe
        bias = POSITIONS.get(m.position_encoding)(m).bias(jnp.arange(m.block_size)) is not None
        return describe(dtype, m.block_size, m.n_head, m.kv_heads, m.head_dim, bias, m.dropout)
    return "XLA attention (T x S scores)"


def describe(names: tuple[str, ...], platform: str | None = None) -> str:
    """The report's kernels line."""
    platform = platform or jax.default_backend()
    if not names:
        return f"reference (none on {platform})"
    return f"{', '.join(names)} ({platform})"
