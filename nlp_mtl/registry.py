"""Registries that map a name used in YAML to the class that implements it.

A new task type, head or data format is one module with one decorator; nothing else changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import ConfigError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, builtins: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        # The module that registers the built-in entries, imported on first lookup: importing
        # it up front would make `import nlp_mtl` (and `nlp-mtl --help`) pay for torch and sklearn.
        self._builtins: str | None = builtins

    def _load_builtins(self) -> None:
        if self._builtins is not None:
            importlib.import_module(self._builtins)  # a failed import raises here again next time
            self._builtins = None

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str, where: str = "") -> T:
        self._load_builtins()
        if name not in self._entries:
            prefix = f"{where}: " if where else ""
            raise ConfigError(
                f"{prefix}unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; "
                f"expected one of: {', '.join(sorted(self._entries))}."
            )
        return self._entries[name]

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries


TASK_TYPES: Registry = Registry("task type", builtins="nlp_mtl.task_types")
HEADS: Registry = Registry("head type", builtins="nlp_mtl.model.heads")
READERS: Registry = Registry("data format", builtins="nlp_mtl.data.readers")
ADAPTERS: Registry = Registry("adapter type", builtins="nlp_mtl.model.adapters")
