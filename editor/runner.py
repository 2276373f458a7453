"""The bridge between the engine's worker thread and the GUI: executor events become Qt
signals delivered on the GUI thread (queued), so the window never blocks while a graph runs."""

from __future__ import annotations

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
            outputs: list[str] | None = None) -> RunHandle:
        """Validate and submit (raises ValidationError / LoomError before anything runs)."""
        options = self.session.options(graph, output_dir, self.device)
        self.handle = self.session.executor.submit(graph, outputs, options, self._relay.emit)
        self.busy_changed.emit(True)
        return self.handle

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
            self.finished.emit(event.result)
            self.busy_changed.emit(False)

    def cache_summary(self) -> str:
        stats = self.session.cache.stats()
        mb = stats["bytes"] / 2**20
        return f"cache: {stats['entries']} results, {mb:.1f} MB"
