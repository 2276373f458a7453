"""The node search popup (Tab, double-click, or a wire dropped on empty canvas)."""

from __future__ import annotations

from PySide6.QtCore import QPoint, Qt, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QFrame,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.node import NodeSpec
from engine.registry import Registry


def matching_specs(registry: Registry, text: str, origin_type: str | None = None,
                   origin_is_output: bool = True) -> list[NodeSpec]:
    """Node types matching `text` (every word in title, id or category), and, for a dropped
    wire, only those with a socket that accepts (or feeds) `origin_type`."""
    words = text.lower().split()
    types = registry.types
    found = []
    for spec in registry:
        hay = f"{spec.title} {spec.type_id} {spec.category} {spec.description}".lower()
        if not all(w in hay for w in words):
            continue
        if origin_type is not None:
            if origin_is_output:
                ok = any(types.compatible(origin_type, i.type) for i in spec.inputs.values())
            else:
                ok = any(types.compatible(o.type, origin_type) for o in spec.outputs)
            if not ok:
                continue
        found.append(spec)

    def rank(s: NodeSpec) -> tuple:
        title = s.title.lower()
        first = words[0] if words else ""
        return (not title.startswith(first), first not in title, s.category, s.title)

    return sorted(found, key=rank)


class NodeSearch(QFrame):
    """A frameless popup: type to filter, Enter or click to add."""

    picked = Signal(str)

    def __init__(self, registry: Registry, parent: QWidget | None = None,
                 origin_type: str | None = None, origin_is_output: bool = True):
        super().__init__(parent, Qt.WindowType.Popup)
        self.registry = registry
        self.origin_type = origin_type
        self.origin_is_output = origin_is_output
        self.setObjectName("nodeSearch")
        self.setStyleSheet("#nodeSearch { background: #26282c; border: 1px solid #4f9cf9;"
                           " border-radius: 6px; }")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.setSpacing(4)
        hint = "Add node" if origin_type is None else \
            f"Add node {'taking' if origin_is_output else 'giving'} {origin_type}"
        self.hint = QLabel(hint)
        self.hint.setStyleSheet("color:#8b8f96; font-size:8pt;")
        self.edit = QLineEdit()
        self.edit.setPlaceholderText("Search nodes…")
        self.list = QListWidget()
        self.list.setMinimumSize(300, 320)
        lay.addWidget(self.hint)
        lay.addWidget(self.edit)
        lay.addWidget(self.list)
        self.edit.textChanged.connect(self.refresh)
        self.edit.installEventFilter(self)
        self.list.itemActivated.connect(self._activate)
        self.list.itemClicked.connect(self._activate)
        self.refresh("")

    def refresh(self, text: str) -> None:
        self.list.clear()
        for spec in matching_specs(self.registry, text, self.origin_type, self.origin_is_output):
            item = QListWidgetItem(f"{spec.title}    ·  {spec.category}")
            item.setData(Qt.ItemDataRole.UserRole, spec.type_id)
            item.setToolTip(f"{spec.type_id}\n{spec.description}")
            self.list.addItem(item)
        if self.list.count():
            self.list.setCurrentRow(0)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802
        if obj is self.edit and isinstance(event, QKeyEvent) and \
                event.type() == QKeyEvent.Type.KeyPress:
            key = event.key()
            if key in (Qt.Key.Key_Down, Qt.Key.Key_Up):
                row = self.list.currentRow() + (1 if key == Qt.Key.Key_Down else -1)
                self.list.setCurrentRow(max(0, min(self.list.count() - 1, row)))
                return True
            if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
                item = self.list.currentItem()
                if item is not None:
                    self._activate(item)
                return True
            if key == Qt.Key.Key_Escape:
                self.close()
                return True
        return super().eventFilter(obj, event)

    def _activate(self, item: QListWidgetItem) -> None:
        type_id = item.data(Qt.ItemDataRole.UserRole)
        self.close()
        self.picked.emit(type_id)

    def popup(self, pos: QPoint) -> None:
        self.move(pos)
        self.show()
        self.edit.setFocus()
