"""A name -> implementation registry; the valid names come from the schema (modgpt.config.CHOICES)."""
from __future__ import annotations

from modgpt.config import CHOICES, ConfigError, suggest


class Registry:
    """One per component kind per backend: `NORMS = Registry("normalization")`, then
    `@NORMS.register("rmsnorm")` on the class. Registering a name the schema does not list fails at
    import time, so the schema stays the single list of names."""

    def __init__(self, kind: str):
        if kind not in CHOICES:
            raise KeyError(f"no component kind '{kind}' in the schema")
        self.kind = kind
        self._impl: dict[str, object] = {}

    def register(self, name: str):
        if name not in CHOICES[self.kind]:
            raise KeyError(f"'{name}' is not a {self.kind} listed in modgpt.config.CHOICES; add it there first")
        if name in self._impl:
            raise KeyError(f"{self.kind} '{name}' registered twice")

        def deco(obj):
            self._impl[name] = obj
            return obj
        return deco

    def get(self, name: str):
        if name not in self._impl:
            raise ConfigError(f"option '{self.kind}' must be one of {', '.join(self.names())}; got "
                              f"'{name}'{suggest(name, self._impl)}")
        return self._impl[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._impl)

    def __contains__(self, name: str) -> bool:
        return name in self._impl
