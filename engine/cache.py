"""The result cache: content-addressed entries under a memory budget.

A key is computed from what determines a node's result (type, version, constants, upstream keys),
never from node ids, so results survive edits and are shared between workflows. When the total
size passes the budget, the entries that are cheapest to lose go first: lowest recompute time per
byte, least recently used among equals.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from engine.memory import MemoryBudget, default_budget

_PLAIN = (int, float, bool, str, bytes, bytearray, type(None))


def sizeof(value: Any, _depth: int = 0) -> int:
    """Approximate bytes held by a value, without importing torch (duck-typed)."""
    if type(value) in _PLAIN:
        return sys.getsizeof(value)
    if _depth > 6:
        return 0
    custom = getattr(value, "__loom_cache_size__", None)
    if callable(custom):
        return int(custom())
    if hasattr(value, "element_size") and hasattr(value, "nelement"):
        try:
            return int(value.element_size() * value.nelement())
        except Exception:
            return 0
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, dict):
        return sys.getsizeof(value) + sum(sizeof(v, _depth + 1) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return sys.getsizeof(value) + sum(sizeof(v, _depth + 1) for v in value)
    try:
        return sys.getsizeof(value)
    except TypeError:
        return 64


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=repr)


def make_key(parts: Any) -> str:
    """A stable hash of JSON-able parts."""
    return hashlib.sha256(_ENCODER.encode(parts).encode()).hexdigest()


@dataclass
class Entry:
    outputs: dict[str, Any]
    ui: dict[str, Any]
    size: int
    compute_s: float
    last_used: float = field(default_factory=time.monotonic)
    run: int | None = None  # the last graph run that used it (protected while it runs)

    def value_per_byte(self) -> float:
        return self.compute_s / max(self.size, 1)


class ResultCache:
    """Cached node results: a pool of the memory budget (engine.memory) it shares with the
    loaded models. `ResultCache(budget_bytes)` gets a budget of its own; `ResultCache()` joins
    the process's one budget, as a Session's cache does."""

    name = "results"
    priority = 1  # loaded models go first

    def __init__(self, budget_bytes: int | None = None, memory: MemoryBudget | None = None):
        if memory is None:
            memory = MemoryBudget(budget_bytes) if budget_bytes is not None else default_budget()
        self.memory = memory
        self._entries: dict[str, Entry] = {}
        self._lock = threading.RLock()
        self.total_bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        memory.register(self)

    @property
    def budget_bytes(self) -> int:
        return self.memory.budget_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def count(self) -> int:
        return len(self._entries)

    def nbytes(self) -> int:
        return self.total_bytes

    def peek(self, key: str) -> Entry | None:
        """The entry, if any, without counting a hit or a miss or touching its age."""
        with self._lock:
            return self._entries.get(key)

    def get(self, key: str) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            entry.last_used = time.monotonic()
            entry.run = self.memory.current_run
            return entry

    def put(self, key: str, outputs: dict[str, Any], ui: dict[str, Any], compute_s: float) -> None:
        size = sizeof(outputs) + sizeof(ui)
        with self._lock:
            if key in self._entries:
                self.total_bytes -= self._entries[key].size
            if size > self.budget_bytes:
                self._entries.pop(key, None)
                return
            self._entries[key] = Entry(outputs, ui, size, compute_s, run=self.memory.current_run)
            self.total_bytes += size
        self.memory.make_room()

    def evict_one(self, protect_run: int | None) -> int:
        """Drop the entry cheapest to lose (lowest recompute time per byte, then the least
        recently used) that the running graph has not used; the bytes freed."""
        with self._lock:
            candidates = [(e.value_per_byte(), e.last_used, k) for k, e in self._entries.items()
                          if protect_run is None or e.run != protect_run]
            if not candidates:
                return 0
            key = min(candidates)[2]
            entry = self._entries.pop(key)
            self.total_bytes -= entry.size
            self.evictions += 1
            return max(entry.size, 1)

    def discard(self, key: str) -> bool:
        """Drop one entry (e.g. a value found changed in place); True if it was there."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            self.total_bytes -= entry.size
            return True

    def set_budget(self, budget_bytes: int) -> None:
        """Set the budget this cache shares (with the models, for a Session's cache)."""
        self.memory.set_budget(budget_bytes)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.total_bytes = 0

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._entries), "bytes": self.total_bytes, "hits": self.hits,
                "misses": self.misses, "evictions": self.evictions}
