"""One registry per component kind (modgpt.config.COMPONENT_KINDS), keyed by the schema's names."""
from modgpt_torch.components.activations import ACTIVATIONS
from modgpt_torch.components.attention import ATTENTION
from modgpt_torch.components.ffn import FFNS
from modgpt_torch.components.norms import NORMS
from modgpt_torch.components.positions import POSITIONS

REGISTRIES = {r.kind: r for r in (NORMS, ACTIVATIONS, POSITIONS, ATTENTION, FFNS)}

__all__ = ["ACTIVATIONS", "ATTENTION", "FFNS", "NORMS", "POSITIONS", "REGISTRIES"]
