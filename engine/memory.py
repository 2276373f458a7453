"""One owner for memory: every pool of things Loom keeps in RAM (loaded models, cached node
results) reports its size to one `MemoryBudget`, which decides what goes when the total passes
the budget: loaded models first (as ComfyUI's RAM-pressure cache drops models before results:
a model reloads from disk in seconds, an intermediate tensor may stand for minutes of
sampling), the entries the running graph touched last. Pure Python: pools measure themselves.

Why models can simply go: the values on MODEL / CLIP / VAE edges (and in cached results) are
handles, not weights (nodes.lib.model_manager.ModelHandle); a node borrows the weights while
it runs, and a handle whose model was evicted loads it again when next used. So an evicted
model is really freed, even while a cached result still refers to it.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

DEFAULT_BUDGET_GB = 12.0
ENV = "LOOM_MEMORY_GB"


class Pool(Protocol):
    """Something that holds memory and can give some back."""

    name: str
    priority: int
    """Lower goes first when room must be made (models 0, cached results 1)."""

    def nbytes(self) -> int: ...

    def count(self) -> int: ...

    def evict_one(self, protect_run: int | None) -> int:
        """Drop the least valuable item not used in run `protect_run`; the bytes freed (0 when
        nothing may go)."""
        ...


class MemoryBudget:
    """The budget that several pools share, and the run counter that protects what the running
    graph uses."""

    def __init__(self, budget_bytes: int | None = None, name: str = "ram"):
        if budget_bytes is None:
            budget_bytes = default_budget_bytes()
        self.name = name
        self.budget_bytes = int(budget_bytes)
        self._pools: list[weakref.ReferenceType[Pool]] = []
        self._lock = threading.RLock()
        self.run_id = 0
        self._active_runs = 0
        self.node_call = 0
        """Counts node calls (the executor bumps it before each): what a node borrowed during
        its own call is in use, so the GPU placement never moves it out from under it."""
        self.evictions: dict[str, int] = {}

    # pools ---------------------------------------------------------------------------------
    def register(self, pool: Pool) -> None:
        with self._lock:
            self._pools = [r for r in self._pools if r() is not None and r() is not pool]
            self._pools.append(weakref.ref(pool))

    def unregister(self, pool: Pool) -> None:
        with self._lock:
            self._pools = [r for r in self._pools if r() is not None and r() is not pool]

    def pools(self) -> list[Pool]:
        with self._lock:
            live = [p for p in (r() for r in self._pools) if p is not None]
        return sorted(live, key=lambda p: p.priority)

    def total(self) -> int:
        return sum(p.nbytes() for p in self.pools())

    # policy --------------------------------------------------------------------------------
    def set_budget(self, budget_bytes: int) -> None:
        self.budget_bytes = int(budget_bytes)
        self.make_room()

    def make_room(self, extra: int = 0) -> int:
        """Evict until the pools (plus `extra` bytes about to be added) fit the budget: pools
        in priority order, each giving up its least valuable item not used by the running
        graph. Returns the bytes freed. What the running graph uses is never evicted: a run
        that needs more than the budget runs over it instead of reloading in a loop."""
        freed = 0
        with self._lock:
            protect = self.run_id if self._active_runs else None
            while self.total() + extra > self.budget_bytes:
                for pool in self.pools():
                    got = pool.evict_one(protect)
                    if got > 0:
                        freed += got
                        self.evictions[pool.name] = self.evictions.get(pool.name, 0) + 1
                        break
                else:
                    break
        return freed

    @contextmanager
    def run(self) -> Iterator[int]:
        """Mark a graph run: what it touches is protected from eviction until it ends."""
        with self._lock:
            if self._active_runs == 0:
                self.run_id += 1
            self._active_runs += 1
            current = self.run_id
        try:
            yield current
        finally:
            with self._lock:
                self._active_runs -= 1
            self.make_room()

    def begin_node(self) -> int:
        """A node is about to run: a new node call (returned)."""
        with self._lock:
            self.node_call += 1
            return self.node_call

    @property
    def current_run(self) -> int | None:
        return self.run_id if self._active_runs else None

    def stats(self) -> dict[str, dict[str, int]]:
        """{pool name: {"count", "bytes"}} plus {"budget": {"bytes"}} (for status displays)."""
        out: dict[str, dict[str, int]] = {}
        for p in self.pools():
            s = out.setdefault(p.name, {"count": 0, "bytes": 0})
            s["count"] += p.count()
            s["bytes"] += p.nbytes()
        out["budget"] = {"count": 0, "bytes": self.budget_bytes}
        return out


_LIBC: object = None


def release_freed_memory() -> None:
    """Give heap memory that is free again back to the system (glibc's malloc_trim; a no-op
    elsewhere). Most tensors of a 64-512 px run are under glibc's mmap threshold (which grows
    to 32 MB after the first large free), so they live in the heap, and the pages a run's
    temporaries freed between the results it keeps stay resident: 200 runs of the default
    workflow grew RSS by 180 KB a run where the cached results were 70 KB (tools/reliability/
    report.py's soak). The executor calls this after a run that ran nodes; it takes well under
    a millisecond there."""
    global _LIBC
    if _LIBC is False or not sys.platform.startswith("linux"):
        return
    try:
        if _LIBC is None:
            import ctypes
            import ctypes.util

            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _LIBC.malloc_trim(0)  # type: ignore[attr-defined]
    except (OSError, AttributeError):  # not glibc (musl): nothing to trim with
        _LIBC = False


def default_budget_bytes() -> int:
    """`LOOM_MEMORY_GB` (or the older `LOOM_MODEL_MEMORY_GB`) if set, else the smaller of
    12 GiB and 70 % of this machine's RAM."""
    env = os.environ.get(ENV) or os.environ.get("LOOM_MODEL_MEMORY_GB")
    if env:
        try:
            return int(float(env) * 2**30)
        except ValueError:
            pass
    total = _physical_memory()
    cap = int(DEFAULT_BUDGET_GB * 2**30)
    return min(cap, int(total * 0.7)) if total else cap


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


_DEFAULT: MemoryBudget | None = None
_DEFAULT_LOCK = threading.Lock()


def default_budget() -> MemoryBudget:
    """The process-wide budget that Loom's model manager and every Session's cache share."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = MemoryBudget()
        return _DEFAULT
