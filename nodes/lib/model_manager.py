"""Loaded model components, kept in memory and shared between nodes and runs.

An entry is keyed by (file identity, component, dtype, device): two loader nodes pointing at
the same file get the very same modules, and a changed file (new size or mtime) gets a new key.
When the bytes held exceed the budget, the least recently used entries are released (never the
one just asked for). The budget comes from `LOOM_MODEL_MEMORY_GB` (default 12 GiB), a run's
`model_memory_gb` option (the loader node passes it) or `set_budget`; `clear()` drops all.
"""

from __future__ import annotations

import gc
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

DEFAULT_BUDGET_GB = 12.0


def module_nbytes(obj: Any) -> int:
    """Bytes held by the parameters and buffers of a module, or of modules in a list/tuple/dict,
    or of an object with an `nbytes` attribute."""
    if obj is None:
        return 0
    if isinstance(obj, (list, tuple)):
        return sum(module_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(module_nbytes(o) for o in obj.values())
    params = getattr(obj, "parameters", None)
    if callable(params):
        total = sum(p.numel() * p.element_size() for p in obj.parameters())
        buffers = getattr(obj, "buffers", None)
        if callable(buffers):
            total += sum(b.numel() * b.element_size() for b in obj.buffers())
        return total
    n = getattr(obj, "nbytes", None)
    return int(n) if isinstance(n, int) else 0


@dataclass
class _Entry:
    value: Any
    nbytes: int


class ModelManager:
    """An LRU store of loaded components with a byte budget."""

    def __init__(self, budget_bytes: int | None = None):
        if budget_bytes is None:
            gb = float(os.environ.get("LOOM_MODEL_MEMORY_GB", DEFAULT_BUDGET_GB))
            budget_bytes = int(gb * 2**30)
        self.budget_bytes = int(budget_bytes)
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0  # how many times a loader actually ran (tests and status display)
        self.evictions = 0

    def set_budget(self, budget_bytes: int) -> None:
        with self._lock:
            self.budget_bytes = int(budget_bytes)
            self._evict(keep=None)

    def get(self, key: Hashable, load: Callable[[], Any],
            size: Callable[[Any], int] = module_nbytes) -> Any:
        """The value stored under `key`, loading (and storing) it first if needed."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry.value
            value = load()
            self.loads += 1
            self._entries[key] = _Entry(value, int(size(value)))
            self._evict(keep=key)
            return value

    def peek(self, key: Hashable) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else entry.value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._entries)

    @property
    def total_bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def release(self, key: Hashable) -> bool:
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is None:
            return False
        del entry
        _free_memory()
        return True

    def clear(self) -> None:
        """Release every loaded component (and the GPU memory they held)."""
        with self._lock:
            self._entries.clear()
        _free_memory()

    def _evict(self, keep: Hashable | None) -> None:
        freed = False
        while self.total_bytes > self.budget_bytes:
            victim = next((k for k in self._entries if k != keep), None)
            if victim is None:
                break
            del self._entries[victim]
            self.evictions += 1
            freed = True
        if freed:
            _free_memory()


def _free_memory() -> None:
    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and getattr(torch.backends, "mps", None) is not None \
            and torch.backends.mps.is_available():
        mps.empty_cache()


_MANAGER: ModelManager | None = None
_MANAGER_LOCK = threading.Lock()


def manager() -> ModelManager:
    """The process-wide model manager."""
    global _MANAGER
    with _MANAGER_LOCK:
        if _MANAGER is None:
            _MANAGER = ModelManager()
        return _MANAGER


def clear_models() -> None:
    """Release every model Loom holds in memory."""
    manager().clear()
