"""The registry of node types: discovers node modules under a package (by default `nodes`).

Discovery imports each top-level module of the package; node modules keep heavy imports (torch,
diffusers) inside their functions, so listing node types stays fast and loads no torch.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Iterable
from types import ModuleType

from engine.node import NodeSpec, spec_of
from engine.types import TYPES, TypeRegistry


class Registry:
    def __init__(self, types: TypeRegistry = TYPES):
        self.types = types
        self._specs: dict[str, NodeSpec] = {}

    def register(self, cls: type) -> NodeSpec:
        spec = spec_of(cls)
        old = self._specs.get(spec.type_id)
        if old is not None and old.cls is not cls and old.cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"node type {spec.type_id!r} is declared twice")
        self._specs[spec.type_id] = spec
        return spec

    def register_module(self, module: ModuleType) -> list[NodeSpec]:
        found = []
        for value in vars(module).values():
            if isinstance(value, type) and getattr(value, "__loom_spec__", None) is not None:
                if value.__module__ == module.__name__:
                    found.append(self.register(value))
        return found

    def discover(self, package: str = "nodes") -> Registry:
        """Import every public module of `package` and register the node classes they define."""
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_") or info.ispkg:
                continue
            self.register_module(importlib.import_module(f"{package}.{info.name}"))
        return self

    def get(self, type_id: str) -> NodeSpec | None:
        return self._specs.get(type_id)

    def __contains__(self, type_id: str) -> bool:
        return type_id in self._specs

    def __iter__(self) -> Iterable[NodeSpec]:
        return iter(sorted(self._specs.values(), key=lambda s: (s.category, s.title)))

    def __len__(self) -> int:
        return len(self._specs)

    def catalogue(self) -> list[dict]:
        """The node catalogue as plain data (for `main.py nodes --json` and the editor)."""
        return [s.to_json() for s in self]


_default: Registry | None = None
_lock = threading.Lock()


def default_registry() -> Registry:
    """The registry of Loom's own node types (discovered once per process)."""
    global _default
    with _lock:
        if _default is None:
            _default = Registry().discover("nodes")
        return _default
