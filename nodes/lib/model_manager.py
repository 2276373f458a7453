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
from dataclasses import dataclass, field
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
    staged: list = field(default_factory=list)
    """Its modules that run on a GPU but may wait in CPU RAM (nodes.lib.vram.stage)."""
    resident: Any = None  # the device the staged modules are on now (None: the CPU)
    vram_bytes: int = 0
    node_call: int = -1  # the node call that last borrowed it (not moved out during it)


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
        self.offloads = 0  # how many times weights moved from a GPU back to CPU RAM
        self.evictions = 0
        memory.register(self)

    @property
    def budget_bytes(self) -> int:
        return self.memory.budget_bytes

    def set_budget(self, budget_bytes: int) -> None:
        self.memory.set_budget(budget_bytes)

    def get(self, key: Hashable, load: Callable[[], Any],
            size: Callable[[Any], int] = module_nbytes, borrow: bool = True) -> Any:
        """The value stored under `key`, loading (and storing) it first if needed. `borrow`:
        a node is about to compute with it, so its GPU modules move in (nodes.lib.vram);
        False for a loader node that only loads it (or reads its config)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                entry.run = self.memory.current_run
                if borrow:
                    self._borrow(key, entry)
                return entry.value
            value = load()
            self.loads += 1
            entry = _Entry(value, int(size(value)), self.memory.current_run)
            self._entries[key] = entry
            self._keep = key
            try:
                self.memory.make_room()
            finally:
                self._keep = None
            self._stage(entry)
            if borrow:
                self._borrow(key, entry)
            return value

    # GPU placement (nodes.lib.vram) ----------------------------------------------------------
    def _stage(self, entry: _Entry) -> None:
        """Note a new entry's staged modules (loaded on the CPU to run on a GPU)."""
        if not isinstance(entry.value, (list, tuple, dict)) and \
                not hasattr(entry.value, "parameters"):
            return
        from nodes.lib import vram

        entry.staged = list(vram.staged_modules(entry.value))
        entry.vram_bytes = sum(vram.param_bytes(m) for m in entry.staged)

    def _borrow(self, key: Hashable, entry: _Entry) -> None:
        """Before a node uses an entry whose modules run on a GPU: move them in, first moving
        others out (least recently used first; in "low" mode all others) until they fit the
        device's budget; what the current node call already borrowed stays. A component that
        does not fit even then runs block by block instead."""
        if not entry.staged:
            return
        from nodes.lib import vram

        # a module another entry shares (LoRA's copy keeps the unpatched encoder) may have
        # gone block by block since: it is no longer moved whole
        entry.staged = [m for m in entry.staged if getattr(m, vram.EXEC_ATTR, None) is not None]
        entry.vram_bytes = sum(vram.param_bytes(m) for m in entry.staged)
        if not entry.staged:
            return
        call = entry.node_call = self.memory.node_call
        device = vram.module_device(entry.staged[0])
        low = vram.current_mode() == "low"
        others = [e for k, e in self._entries.items()
                  if k != key and e.resident == device]
        if entry.resident == device:
            if low:  # only what the running node borrowed stays with it
                for other in others:
                    if other.node_call != call:
                        self._move_out(other)
            return
        used = sum(e.vram_bytes for e in others)
        limit = vram.budget(device, used)
        for other in others:  # least recently used first
            if not low and used + entry.vram_bytes <= limit:
                break
            if other.node_call == call:
                continue  # the running node holds it
            self._move_out(other)
            used -= other.vram_bytes
        if used + entry.vram_bytes > limit:  # too big even alone: block by block
            for module in entry.staged:
                vram.block_offload(module, device)
            entry.staged, entry.vram_bytes = [], 0
            return
        for module in entry.staged:
            module.to(device)
        entry.resident = device

    def _move_out(self, entry: _Entry) -> None:
        moved = {id(m) for m in entry.staged}
        for module in entry.staged:
            module.to("cpu")
        for other in self._entries.values():  # entries sharing a module are not resident now
            if any(id(m) in moved for m in other.staged):
                other.resident = None
        self.offloads += 1
        _empty_device_caches()

    def vram_stats(self) -> dict[str, int]:
        """{device: bytes of weights resident there} for staged entries (status display)."""
        with self._lock:
            out: dict[str, int] = {}
            for e in self._entries.values():
                if e.resident is not None:
                    out[str(e.resident)] = out.get(str(e.resident), 0) + e.vram_bytes
            return out

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

    def preload(self) -> Any:
        """Load (if needed) without borrowing: what a loader node does so that errors and load
        time belong to it; the weights stay where the VRAM mode keeps idle models."""
        value = self.models.get(self.key, self.load, borrow=False)
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
    _empty_device_caches()


def _empty_device_caches() -> None:
    """Hand the GPU allocator's cached blocks back (after weights left the device)."""
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
