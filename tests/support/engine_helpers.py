"""Fixtures and builders for the engine tests. Import the fixtures into a test module:

    from tests.support.engine_helpers import executor_fixture, registry_fixture  # noqa: F401

(named *_fixture so that test parameters called `registry` / `executor` do not shadow them)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from engine.cache import ResultCache
from engine.executor import Executor, NodeStatus, Progress
from engine.graph import Graph
from engine.registry import Registry
from tests.support import pynodes


@pytest.fixture(name="registry")
def registry_fixture() -> Registry:
    pynodes.reset()
    return pynodes.make_registry()


@pytest.fixture(name="executor")
def executor_fixture(registry: Registry) -> Iterator[Executor]:
    ex = Executor(registry, ResultCache())
    yield ex
    ex.shutdown()


def chain(registry: Registry, n: int, start: int = 1, prefix: str = "n") -> Graph:
    """const -> add(+1) -> add(+1) ... -> show: n nodes in all (n >= 2)."""
    g = Graph(registry)
    g.add_node("test.const", f"{prefix}0", {"value": start})
    for i in range(1, n - 1):
        g.add_node("test.add", f"{prefix}{i}", {"b": 1})
        g.connect(f"{prefix}{i - 1}", "value" if i == 1 else "sum", f"{prefix}{i}", "a")
    g.add_node("test.show", f"{prefix}{n - 1}")
    g.connect(f"{prefix}{n - 2}", "value" if n == 2 else "sum", f"{prefix}{n - 1}", "value")
    return g


class Recorder:
    """An on_event callback that keeps every event (called from the worker thread)."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def __call__(self, event: Any) -> None:
        self.events.append(event)

    def statuses(self, node_id: str | None = None) -> list[tuple[str, str]] | list[str]:
        if node_id is None:
            return [(e.node_id, e.status) for e in self.events if isinstance(e, NodeStatus)]
        return [e.status for e in self.events
                if isinstance(e, NodeStatus) and e.node_id == node_id]

    def progress(self, node_id: str) -> list[tuple[int, int]]:
        return [(e.step, e.total) for e in self.events
                if isinstance(e, Progress) and e.node_id == node_id]
