"""One registry per component kind; importing this package registers every implementation."""
from modgpt_torch.components.activations import ACTIVATIONS
from modgpt_torch.components.attention import ATTENTION
from modgpt_torch.components.ffn import FFNS
from modgpt_torch.components.norms import NORMS
from modgpt_torch.components.positions import POSITIONS

# kind (as in modgpt.config.COMPONENT_KINDS) -> registry
REGISTRIES = {
    "normalization": NORMS,
    "activation": ACTIVATIONS,
    "position_encoding": POSITIONS,
    "attention_backend": ATTENTION,
    "ffn_type": FFNS,
}

__all__ = ["ACTIVATIONS", "ATTENTION", "FFNS", "NORMS", "POSITIONS", "REGISTRIES"]
