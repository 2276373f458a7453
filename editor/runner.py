"""The bridge between the engine's worker thread and the GUI, so the window never blocks while a
graph runs. Per-node events (status, progress, previews) become Qt signals delivered on the GUI
thread (queued). The end of a run is awaited: when the editor runs on qasync's event loop (as
`python main.py` does) a coroutine awaits the engine's run handle and reports the result; with no
asyncio loop running (tests, embedding) the engine's final event is relayed instead."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal

from engine.executor import NodeStatus, Progress, RunFinished, RunHandle, RunStarted
from engine.graph import Graph


class RunController(QObject):
    _relay = Signal(object)
    started = Signal(object)  # RunStarted
    node_status = Signal(object)  # NodeStatus
    progress = Signal(object)  # Progress
    finished = Signal(object)  # RunResult
    busy_changed = Signal(bool)

    def __init__(self, session: Any, parent: QObject | None = None):
        super().__init__(parent)
        self.session = session
        self.handle: RunHandle | None = None
        self.device = os.environ.get("LOOM_DEVICE", "auto")
        self._relay.connect(self._dispatch, Qt.ConnectionType.QueuedConnection)

    @property
    def busy(self) -> bool:
        return self.handle is not None and not self.handle.done()

    def run(self, graph: Graph, output_dir: str | Path,
            outputs: list[str] | None = None, run_graph: Graph | None = None) -> RunHandle:
        """Validate and submit (raises ValidationError / LoomError before anything runs).
        `run_graph` (bypassed and muted nodes applied, engine.modes) is what runs; `graph`
        is what the written PNGs carry."""
        options = self.session.options(graph, output_dir, self.device)
        self.handle = self.session.executor.submit(run_graph if run_graph is not None
                                                   else graph, outputs, options,
                                                   self._relay.emit)
        self.busy_changed.emit(True)
        self._awaiting = self._start_watch(self.handle)
        return self.handle

    _awaiting: asyncio.Future | None = None

    def _start_watch(self, handle: RunHandle) -> asyncio.Future | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            try:
                loop = asyncio.get_event_loop_policy().get_event_loop()
            except RuntimeError:
                return None
            if not loop.is_running():
                return None
        return asyncio.ensure_future(self._watch(handle), loop=loop)

    async def _watch(self, handle: RunHandle) -> None:
        result = await handle
        self._finish(result)

    def _finish(self, result: Any) -> None:
        # the relayed final event and the awaited handle may both arrive: report once
        if getattr(result, "run_id", None) == getattr(self, "_reported", None):
            return
        self._reported = result.run_id
        self.finished.emit(result)
        self.busy_changed.emit(False)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, Progress):
            self.progress.emit(event)
        elif isinstance(event, NodeStatus):
            self.node_status.emit(event)
        elif isinstance(event, RunStarted):
            self.started.emit(event)
        elif isinstance(event, RunFinished):
            if self._awaiting is None:
                self._finish(event.result)

    def cache_summary(self) -> str:
        """What the process's memory budget holds: loaded models and cached results, each with
        its own count and size (engine.memory), against the budget."""
        pools = self.session.cache.memory.stats()
        res = pools.get("results", {"count": 0, "bytes": 0})
        mod = pools.get("models", {"count": 0, "bytes": 0})
        budget = pools.get("budget", {"bytes": 0})["bytes"]
        text = (f"models: {mod['count']}, {_size(mod['bytes'])} · "
                f"cache: {res['count']} results, {_size(res['bytes'])}")
        return text + (f" (of {_size(budget)})" if budget else "")


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"
