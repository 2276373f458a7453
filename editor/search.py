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
                   origin_is_output: bool = True,
                   through: tuple[str, str] | None = None) -> list[NodeSpec]:
    """Node types matching `text` (every word in title, id or category), and, for a dropped
    wire, only those with a socket that accepts (or feeds) `origin_type`; to insert into a wire
    (`through` = its source and target types), only those that take the one and give the
    other."""
    words = text.lower().split()
    types = registry.types
    found = []
    for spec in registry:
        hay = f"{spec.title} {spec.type_id} {spec.category} {spec.description} " \
              f"{package_label(registry, spec.type_id)}".lower()
        if not all(w in hay for w in words):
            continue
        if through is not None:
            if not (any(types.compatible(through[0], i.type) for i in spec.inputs.values())
                    and any(types.compatible(o.type, through[1]) for o in spec.outputs)):
                continue
        elif origin_type is not None:
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


def package_label(registry: Registry, type_id: str) -> str:
    """The package a node type comes from, as the search shows it ("loom-example-nodes 1.0.0");
    "" when the registry does not say."""
    info = registry.package_of(type_id) if hasattr(registry, "package_of") else None
    return info.label() if info is not None else ""


class NodeSearch(QFrame):
    """A frameless popup: type to filter, Enter or click to add."""

    picked = Signal(str)

    def __init__(self, registry: Registry, parent: QWidget | None = None,
                 origin_type: str | None = None, origin_is_output: bool = True,
                 through: tuple[str, str] | None = None):
        super().__init__(parent, Qt.WindowType.Popup)
        self.registry = registry
        self.origin_type = origin_type
        self.origin_is_output = origin_is_output
        self.through = through
        self.setObjectName("nodeSearch")
        self.setStyleSheet("#nodeSearch { background: #26282c; border: 1px solid #4f9cf9;"
                           " border-radius: 6px; }")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.setSpacing(4)
        hint = "Add node" if origin_type is None else \
            f"Add node {'taking' if origin_is_output else 'giving'} {origin_type}"
        if through is not None:
            hint = f"Insert a node taking {through[0]} and giving {through[1]}"
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
        for spec in matching_specs(self.registry, text, self.origin_type, self.origin_is_output,
                                   self.through):
            package = package_label(self.registry, spec.type_id)
            info = self.registry.package_of(spec.type_id)
            shown = f"    ·  {package}" if info is not None and info.kind != "builtin" else ""
            item = QListWidgetItem(f"{spec.title}    ·  {spec.category}{shown}")
            item.setData(Qt.ItemDataRole.UserRole, spec.type_id)
            item.setToolTip(f"{spec.type_id}  ({package or 'no package'})\n{spec.description}")
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
        """Show at `pos`, moved as needed to stay on the screen (near an edge it opens above
        or left of the point instead)."""
        self.adjustSize()
        self.move(on_screen(pos, self.size(), self.screen()))
        self.show()
        self.edit.setFocus()


def on_screen(pos: QPoint, size, screen) -> QPoint:
    """The top-left corner for a popup of `size` wanted at `pos`, kept inside `screen`'s
    available area (flipped above / left of `pos` when it would run off the bottom / right)."""
    from PySide6.QtGui import QGuiApplication

    screen = QGuiApplication.screenAt(pos) or screen or QGuiApplication.primaryScreen()
    if screen is None:
        return pos
    area = screen.availableGeometry()
    x, y = pos.x(), pos.y()
    if x + size.width() > area.right():
        x = max(area.left(), min(pos.x() - size.width(), area.right() - size.width()))
    if y + size.height() > area.bottom():
        y = max(area.top(), min(pos.y() - size.height(), area.bottom() - size.height()))
    return QPoint(max(area.left(), x), max(area.top(), y))
