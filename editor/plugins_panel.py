"""The Plugins panel: where the node types come from (Loom's own, each plugin package, the user's
nodes folder), the plugins that failed to load (with their error; Loom runs without them), and
for a workflow imported from ComfyUI, what did not map and what is approximated.

Reads `registry.report` (engine.plugins) and the graph's `ui.comfy_import` (engine.comfy); never
imports a plugin or installs anything.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QListWidget, QListWidgetItem, QVBoxLayout, QWidget

from editor import theme

ERROR = QColor("#e06c6c")
WARN = QColor("#e0b050")
KINDS = {"builtin": "built in", "plugin": "plugin", "user": "user nodes folder",
         "module": "LOOM_EXTRA_NODES"}


class PluginsPanel(QWidget):
    node_clicked = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.list = QListWidget()
        self.list.setWordWrap(True)
        self.list.itemClicked.connect(self._clicked)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.list)
        self.registry: Any = None
        self.graph: Any = None

    # filling -------------------------------------------------------------------------------
    def set_registry(self, registry: Any) -> None:
        self.registry = registry
        self.refresh()

    def set_graph(self, graph: Any) -> None:
        self.graph = graph
        self.refresh()

    def error_count(self) -> int:
        report = getattr(self.registry, "report", None)
        return len(report.errors) if report is not None else 0

    def import_info(self) -> dict[str, Any] | None:
        info = self.graph.ui.get("comfy_import") if self.graph is not None else None
        return info if isinstance(info, dict) else None

    def refresh(self) -> None:
        self.list.clear()
        report = getattr(self.registry, "report", None)
        if report is not None:
            for info, types in report.packages:
                kind = KINDS.get(info.kind, info.kind)
                item = self._add(f"{info.label()}  ·  {kind}  ·  {len(types)} node type"
                                 f"{'s' if len(types) != 1 else ''}",
                                 theme.TEXT_DIM if info.kind == "builtin" else theme.TEXT)
                item.setToolTip("\n".join([info.source, *types]) if info.source
                                else "\n".join(types))
            for error in report.errors:
                item = self._add(f"✖  {error}", ERROR)
                item.setToolTip(error.traceback or str(error))
            if report.safe:
                self._add("Safe mode (--safe): only Loom's own nodes are loaded", WARN)
            if report.user_dir:
                item = self._add(f"User nodes folder: {report.user_dir}", theme.TEXT_DIM)
                item.setToolTip("Put node modules (name.py or name/ packages) here; Loom reads "
                                "them at start-up")
        info = self.import_info()
        if info is not None:
            missing = info.get("not_mapped") or []
            source = info.get("source") or "a ComfyUI workflow"
            self._add(f"Imported from ComfyUI ({source}, {info.get('format', '?')} format): "
                      f"{len(missing)} node{'s' if len(missing) != 1 else ''} not mapped",
                      WARN if missing else theme.TEXT)
            for entry in missing:
                if isinstance(entry, dict):
                    nid = f"comfy_{entry.get('id')}"
                    self._add(f"▲  node {entry.get('id')} ({entry.get('type')}): "
                              f"{entry.get('reason')} — placeholder '{nid}'", WARN, nid)
            for note in info.get("notes") or []:
                self._add(f"•  {note}", theme.TEXT_DIM)

    def _add(self, text: str, color: QColor, node_id: str | None = None) -> QListWidgetItem:
        item = QListWidgetItem(text)
        item.setForeground(color)
        item.setToolTip(text)
        item.setData(Qt.ItemDataRole.UserRole, node_id)
        self.list.addItem(item)
        return item

    def _clicked(self, item: QListWidgetItem) -> None:
        node_id = item.data(Qt.ItemDataRole.UserRole)
        if node_id:
            self.node_clicked.emit(node_id)

    # wiring into the main window ---------------------------------------------------------------
    def attach(self, window: Any) -> None:
        """Follow `window`'s session and document: list the registry's packages and errors, and
        each opened graph's ComfyUI import; bring the panel forward (and say so in the status
        bar) when a plugin failed or an import left placeholders."""
        self.set_registry(window.session.registry)
        self.node_clicked.connect(window.focus_node)
        dock = getattr(window, "plugins_dock", None)

        def graph_replaced() -> None:
            self.set_graph(window.doc.graph)
            info = self.import_info()
            if info is not None:
                missing = len(info.get("not_mapped") or [])
                text = (f"Imported a ComfyUI workflow: {missing} node"
                        f"{'s' if missing != 1 else ''} not mapped (kept as placeholders), "
                        f"{len(info.get('notes') or [])} notes — see the Plugins panel")
                QTimer.singleShot(0, lambda: window.say(text))
                if dock is not None:
                    dock.show()
                    dock.raise_()

        window.doc.graph_replaced.connect(graph_replaced)
        self.set_graph(window.doc.graph)
        errors = self.error_count()
        if errors:
            window.say(f"{errors} plugin error{'s' if errors != 1 else ''}: Loom runs without "
                       "them — see the Plugins panel")
            if dock is not None:
                dock.show()
                dock.raise_()
