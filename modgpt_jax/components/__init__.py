"""One registry per component kind (modgpt.config.COMPONENT_KINDS), keyed by the schema's names."""
from modgpt_jax.components.activations import ACTIVATIONS
from modgpt_jax.components.attention import ATTENTION
from modgpt_jax.components.ffn import FFNS
from modgpt_jax.components.norms import NORMS
from modgpt_jax.components.positions import POSITIONS

REGISTRIES = {r.kind: r for r in (NORMS, ACTIVATIONS, POSITIONS, ATTENTION, FFNS)}

__all__ = ["ACTIVATIONS", "ATTENTION", "FFNS", "NORMS", "POSITIONS", "REGISTRIES"]
