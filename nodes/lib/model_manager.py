"""Loaded model components, kept in memory and shared between nodes and runs.

An entry is keyed by (file identity, component, dtype, device): two loader nodes pointing at
the same file get the very same modules, and a changed file gets a new key. The bytes held count
against the process's one memory budget (engine.memory), shared with the result caches, which
evicts models first (least recently used, never one the running graph uses). The budget comes
from `LOOM_MEMORY_GB` (default: 12 GiB or 70 % of RAM, the smaller), a run's `model_memory_gb`
option (the loader node passes it) or `set_budget`; `clear()` drops all. Edges and cached
results hold `ModelHandle`s, not weights, so what the manager evicts is really freed.
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from engine.memory import MemoryBudget, default_budget


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
    run: int | None = None  # the last graph run that used it (protected while it runs)


class ModelManager:
    """An LRU store of loaded components. Its bytes count against a `MemoryBudget` shared with
    the result caches (engine.memory): models are the first to go when room must be made, the
    least recently used first, never one the running graph has used."""

    name = "models"
    priority = 0

    def __init__(self, budget_bytes: int | None = None, memory: MemoryBudget | None = None):
        if memory is None:
            # a budget of its own only when asked for one (tests); else the process's one
            memory = default_budget() if budget_bytes is None else MemoryBudget(budget_bytes)
        self.memory = memory
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self._keep: Hashable | None = None
        self.loads = 0  # how many times a loader actually ran (tests and status display)
        self.evictions = 0
        memory.register(self)

    @property
    def budget_bytes(self) -> int:
        return self.memory.budget_bytes

    def set_budget(self, budget_bytes: int) -> None:
        self.memory.set_budget(budget_bytes)

    def get(self, key: Hashable, load: Callable[[], Any],
            size: Callable[[Any], int] = module_nbytes) -> Any:
        """The value stored under `key`, loading (and storing) it first if needed."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                entry.run = self.memory.current_run
                return entry.value
            value = load()
            self.loads += 1
            self._entries[key] = _Entry(value, int(size(value)), self.memory.current_run)
            self._keep = key
            try:
                self.memory.make_room()
            finally:
                self._keep = None
            return value

    def peek(self, key: Hashable) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else entry.value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def count(self) -> int:
        return len(self._entries)

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._entries)

    def nbytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    @property
    def total_bytes(self) -> int:
        return self.nbytes()

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

    def evict_one(self, protect_run: int | None) -> int:
        """Release the least recently used component that the running graph has not used
        (and not the one being loaded); the bytes freed."""
        with self._lock:
            victim = next((k for k, e in self._entries.items() if k != self._keep
                           and (protect_run is None or e.run != protect_run)), None)
            if victim is None:
                return 0
            entry = self._entries.pop(victim)
            self.evictions += 1
            freed = entry.nbytes
            del entry
        _free_memory()
        return max(freed, 1)


class ModelHandle:
    """What travels on MODEL / CLIP / VAE edges and sits in cached results instead of the
    weights: the manager's key and how to load the component. `get()` borrows the weights for
    as long as the caller holds them (a node, while it runs) and reloads them if the manager
    evicted them, so a cached result never keeps an evicted model in memory."""

    def __init__(self, models: ModelManager, key: Hashable, load: Callable[[], Any],
                 index: int | None = None):
        self.models = models
        self.key = key
        self.load = load
        self.index = index

    def get(self) -> Any:
        value = self.models.get(self.key, self.load)
        return value if self.index is None else value[self.index]

    def part(self, index: int) -> ModelHandle:
        """A handle to item `index` of a tuple-valued component (tokenizers, text encoders)."""
        return ModelHandle(self.models, self.key, self.load, index)

    @property
    def loaded(self) -> bool:
        return self.key in self.models

    def __loom_cache_size__(self) -> int:
        return 0  # the manager counts the weights

    def __loom_fingerprint__(self) -> str:
        """For the read-only-inputs check (engine.integrity): the key and the weights, borrowed
        like a node would (loaded again if evicted, so "before" and "after" compare the same
        thing), so a node that patches shared weights in place is named."""
        from engine.integrity import fingerprint

        return f"{self.key!r}|{fingerprint(self.get())}"

    def __repr__(self) -> str:
        return f"ModelHandle({self.key!r}{'' if self.index is None else f'[{self.index}]'})"


def resolve(ref: Any) -> Any:
    """The component behind a bundle field: a handle's weights, or the value itself."""
    return ref.get() if isinstance(ref, ModelHandle) else ref


def _free_memory() -> None:
    gc.collect()
    _trim_heap()
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


def _trim_heap() -> None:
    """Give freed heap memory back to the system (glibc's malloc_trim). Most of a model's
    tensors are under glibc's mmap threshold (which grows to 32 MB after the first large free),
    so they live in the heap, and without this the process keeps an evicted model's pages:
    three SD-size checkpoints in turn left resident memory at 1.47 x one model's, not 1.0."""
    from engine.memory import release_freed_memory

    release_freed_memory()


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
