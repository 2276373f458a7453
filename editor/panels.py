"""Side panels: the image viewer (zoom, pan, compare with the previous run, save as) and the
problems list (validation problems before a run, node errors after one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPainter, QPen, QWheelEvent
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from editor import theme
from engine.errors import LoomError, Problem

NO_PREVIOUS = ("Nothing to compare yet: Compare shows this image beside the previous run's. "
               "Change something and run again.")


@dataclass
class Shown:
    image: QImage
    caption: str
    file: str | None = None


class ImageCanvas(QWidget):
    """Draws one image, fitted or zoomed; wheel zooms at the cursor, drag pans. In compare mode
    the previous image shows left of a split line that follows the mouse drag."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setToolTip("Wheel: zoom · drag: pan · double-click: fit · right-click: menu")
        self.current: QImage | None = None
        self.previous: QImage | None = None
        self.compare = False
        self.note = ""
        """A line shown over the image (why Compare cannot compare yet)."""
        self.split = 0.5
        self.zoom = 0.0  # 0 = fit
        self.offset = QPointF(0, 0)
        self._drag: QPointF | None = None
        self.setMinimumSize(160, 160)
        self.setMouseTracking(True)

    def set_images(self, current: QImage | None, previous: QImage | None) -> None:
        self.current, self.previous = current, previous
        self.update()

    def _scale(self) -> float:
        if self.current is None:
            return 1.0
        if self.zoom <= 0:
            return min(self.width() / self.current.width(), self.height() / self.current.height())
        return self.zoom

    def image_rect(self) -> QRectF:
        if self.current is None:
            return QRectF()
        s = self._scale()
        w, h = self.current.width() * s, self.current.height() * s
        return QRectF(self.width() / 2 - w / 2 + self.offset.x(),
                      self.height() / 2 - h / 2 + self.offset.y(), w, h)

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("#161719"))
        if self.current is None:
            p.setPen(theme.TEXT_DIM)
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter,
                       "Images appear here after a run")
            return
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self._scale() < 2)
        r = self.image_rect()
        p.drawImage(r, self.current)
        if self.note:
            box = QRectF(8, self.height() - 54, self.width() - 16, 46)
            p.fillRect(box, QColor(20, 21, 24, 220))
            p.setPen(theme.TEXT)
            p.drawText(box.adjusted(8, 4, -8, -4), Qt.AlignmentFlag.AlignCenter
                       | Qt.TextFlag.TextWordWrap, self.note)
        if self.compare and self.previous is not None:
            x = self.width() * self.split
            p.save()
            p.setClipRect(QRectF(0, 0, x, self.height()))
            p.drawImage(r, self.previous)
            p.restore()
            p.setPen(QPen(theme.ACCENT, 2))
            p.drawLine(QPointF(x, 0), QPointF(x, self.height()))
            p.setPen(theme.TEXT)
            p.drawText(QRectF(8, 6, x - 12, 18), Qt.AlignmentFlag.AlignLeft, "previous")
            p.drawText(QRectF(x + 6, 6, self.width() - x - 12, 18),
                       Qt.AlignmentFlag.AlignLeft, "current")

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802
        if self.current is None:
            return
        old = self._scale()
        new = max(0.05, min(32.0, old * (1.0015 ** event.angleDelta().y())))
        # keep the image point under the cursor fixed
        c = event.position() - QPointF(self.width() / 2, self.height() / 2)
        self.offset = c - (c - self.offset) * (new / old)
        self.zoom = new
        self.update()

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        self._drag = event.position()
        if self.compare:
            self.split = max(0.0, min(1.0, event.position().x() / max(self.width(), 1)))
            self.update()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if self._drag is None:
            return
        if self.compare:
            self.split = max(0.0, min(1.0, event.position().x() / max(self.width(), 1)))
        else:
            self.offset += event.position() - self._drag
            self._drag = event.position()
        self.update()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        self._drag = None

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        self.fit()

    def fit(self) -> None:
        self.zoom, self.offset = 0.0, QPointF(0, 0)
        self.update()

    def actual_size(self) -> None:
        self.zoom, self.offset = 1.0, QPointF(0, 0)
        self.update()


class ImageViewer(QWidget):
    """The viewer panel: the latest images of a run, the previous ones for comparison."""

    edit_mask_requested = Signal()
    """"Edit mask…": paint the graph's mask over the image shown."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.save_dir: Path | None = None
        """Where "Save…" starts (the window's output folder)."""
        self.shown: list[Shown] = []
        self.previous: list[Shown] = []
        self.index = 0
        self.canvas = ImageCanvas()
        self.caption = QLabel("")
        self.caption.setStyleSheet("color:#8b8f96;")
        bar = QHBoxLayout()
        bar.setContentsMargins(4, 2, 4, 2)
        bar.setSpacing(1)

        def button(text: str, tip: str, slot, checkable: bool = False) -> QToolButton:
            b = QToolButton()
            b.setStyleSheet("QToolButton { padding: 3px 5px; }")  # the panel may be narrow
            b.setText(text)
            b.setToolTip(tip)
            b.setCheckable(checkable)
            (b.toggled if checkable else b.clicked).connect(slot)
            bar.addWidget(b)
            return b

        self.prev_button = button("◀", "Previous image", lambda: self.step(-1))
        self.next_button = button("▶", "Next image", lambda: self.step(1))
        self.compare_button = button("Compare", "Compare with the previous run (drag the split)",
                                     self.set_compare, checkable=True)
        self.mask_button = button("Edit mask…", "Paint the workflow's mask over this image",
                                  self.edit_mask_requested.emit)
        self.save_button = button("Save…", "Save the image as…", self.save_as_dialog)
        bar.addStretch(1)
        self.canvas.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.canvas.customContextMenuRequested.connect(
            lambda pos: self.build_menu().exec(self.canvas.mapToGlobal(pos)))
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addLayout(bar)
        lay.addWidget(self.canvas, 1)
        lay.addWidget(self.caption)
        self._refresh()

    def build_menu(self) -> QMenu:
        """The image's right-click menu: fit (or double-click), actual size, and the bar's
        commands."""
        menu = QMenu(self)
        menu.addAction("Fit\tDouble-click").triggered.connect(self.canvas.fit)
        menu.addAction("Actual Size (1:1)").triggered.connect(self.canvas.actual_size)
        menu.addSeparator()
        for b in (self.compare_button, self.mask_button, self.save_button):
            act = menu.addAction(b.text())
            act.setEnabled(b.isEnabled())
            act.triggered.connect(b.click)
        return menu

    def show_images(self, items: list[Shown]) -> None:
        if not items:
            return
        if self.shown:
            self.previous = self.shown
        self.shown = items
        self.index = 0
        self._refresh()

    def set_compare(self, on: bool) -> None:
        if on and self.canvas.previous is None:
            # nothing to compare with yet: say why instead of doing nothing
            self.compare_button.blockSignals(True)
            self.compare_button.setChecked(False)
            self.compare_button.blockSignals(False)
            self.canvas.note = NO_PREVIOUS
            self.canvas.compare = False
            self.canvas.update()
            return
        self.canvas.note = ""
        self.canvas.compare = on
        self.canvas.update()

    def step(self, d: int) -> None:
        if self.shown:
            self.index = (self.index + d) % len(self.shown)
            self._refresh()

    @property
    def current(self) -> Shown | None:
        return self.shown[self.index] if self.shown else None

    def _refresh(self) -> None:
        cur = self.current
        prev = self.previous[min(self.index, len(self.previous) - 1)] if self.previous else None
        self.canvas.set_images(cur.image if cur else None, prev.image if prev else None)
        many = len(self.shown) > 1
        self.prev_button.setEnabled(many)
        self.next_button.setEnabled(many)
        self.save_button.setEnabled(cur is not None)
        self.mask_button.setEnabled(cur is not None)
        self.compare_button.setEnabled(cur is not None)
        self.compare_button.setToolTip(
            "Compare with the previous run (drag the split)" if prev is not None else
            "Compare shows this image beside the previous run's: change something and run "
            "again to have two")
        if prev is not None:
            self.canvas.note = ""
        if cur is not None:
            n = f" ({self.index + 1}/{len(self.shown)})" if many else ""
            self.caption.setText(f"  {cur.caption}{n} — {cur.image.width()}×"
                                 f"{cur.image.height()}")
        else:
            self.caption.setText("")

    def save_as(self, path: str | Path) -> None:
        """Save the shown image. A result already written as a PNG is copied as is (keeping
        the workflow embedded in it); otherwise the image is encoded anew."""
        cur = self.current
        if cur is None:
            raise ValueError("no image to save")
        from editor.document import image_bytes
        from editor.places import refuse_shipped
        from engine.files import write_atomic

        target = Path(path)
        refuse_shipped(target, "the image")
        if cur.file and Path(cur.file).is_file() and target.suffix.lower() == \
                Path(cur.file).suffix.lower():
            data = Path(cur.file).read_bytes()
        else:
            try:
                data = image_bytes(cur.image, target.suffix[1:].upper() or "PNG")
            except ValueError as exc:
                raise OSError(f"could not write {target}: {exc}") from None
        write_atomic(target, data)  # complete or not at all, never half an image

    def save_as_dialog(self) -> None:
        cur = self.current
        if cur is None:
            return
        name = Path(cur.file).name if cur.file else "image.png"
        start = self.save_dir / name if self.save_dir is not None else Path(name)
        path, _ = QFileDialog.getSaveFileName(self, "Save image", str(start),
                                              "PNG (*.png);;JPEG (*.jpg);;WebP (*.webp)")
        if path:
            try:
                self.save_as(path)
            except (OSError, ValueError, LoomError) as exc:
                self.caption.setText(f"  Could not save: {exc}")


class ProblemsPanel(QListWidget):
    """Problems to fix before a run and errors from the last run; a click selects the node."""

    node_clicked = Signal(str)
    count_changed = Signal(int)
    """How many problems the list shows (its dock's title says it)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._count = 0
        self.validation: list[Problem] = []
        self.errors: dict[str, str] = {}
        self.itemClicked.connect(self._clicked)
        self.setWordWrap(True)

    def set_validation(self, problems: list[Problem]) -> None:
        self.validation = list(problems)
        self._refresh()

    def set_error(self, node_id: str, message: str | None) -> None:
        if message is None:
            self.errors.pop(node_id, None)
        else:
            self.errors[node_id] = message
        self._refresh()

    def clear_errors(self) -> None:
        self.errors.clear()
        self._refresh()

    def _refresh(self) -> None:
        self.clear()
        for nid, msg in self.errors.items():
            self._add(f"✖  {nid}: {msg}", nid, theme.STATUS_COLORS["error"])
        for p in self.validation:
            self._add(f"▲  {p}", p.node_id, QColor("#e0b050"))
        self._count = self.count()
        self.count_changed.emit(self._count)
        if self.count() == 0:
            item = QListWidgetItem("No problems")
            item.setForeground(theme.TEXT_DIM)
            item.setFlags(Qt.ItemFlag.NoItemFlags)
            self.addItem(item)

    def _add(self, text: str, node_id: str | None, color: QColor) -> None:
        item = QListWidgetItem(text)
        item.setForeground(color)
        item.setData(Qt.ItemDataRole.UserRole, node_id)
        item.setToolTip(text)
        self.addItem(item)

    def problem_count(self) -> int:
        """The number of problems listed (the "No problems" line is not one)."""
        return self._count

    def _clicked(self, item: QListWidgetItem) -> None:
        nid = item.data(Qt.ItemDataRole.UserRole)
        if nid:
            self.node_clicked.emit(nid)


class InfoDialog(QDialog):
    """A non-modal page of rich text (Help > Keyboard Shortcuts, About, a node's help) that fits
    on the screen."""

    def __init__(self, parent: QWidget | None, title: str, html: str):
        super().__init__(parent)
        self.setWindowTitle(title)
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(True)
        self.browser.setHtml(html)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)
        lay = QVBoxLayout(self)
        lay.addWidget(self.browser, 1)
        lay.addWidget(buttons)
        self.resize(*fit_on_screen(self, 560, 620))

    def text(self) -> str:
        return self.browser.toPlainText()


def fit_on_screen(widget: QWidget, w: int, h: int) -> tuple[int, int]:
    """(w, h) shrunk to the screen `widget` is on (90 % of its available area at most)."""
    screen = widget.screen() or (widget.parentWidget().screen()
                                 if widget.parentWidget() else None)
    if screen is None:
        return w, h
    area = screen.availableGeometry()
    return min(w, int(area.width() * 0.9)), min(h, int(area.height() * 0.9))


def node_help_html(spec) -> str:
    """A node type's help page: what it does, each input (type, default, range, what it is
    for) and each output."""
    def esc(t: object) -> str:
        return str(t).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    rows = []
    for inp in spec.inputs.values():
        facts = [esc(inp.type)]
        if inp.has_default and inp.default not in ("", None):
            facts.append(f"default {esc(inp.default)}")
        if inp.min is not None or inp.max is not None:
            facts.append(f"{esc(inp.min)} … {esc(inp.max)}")
        if inp.choices:
            facts.append("one of " + ", ".join(esc(c) for c in inp.choices))
        if inp.optional:
            facts.append("optional")
        elif inp.connection_only:
            facts.append("must be connected")
        rows.append(f"<tr><td><b>{esc(inp.label or inp.name)}</b></td>"
                    f"<td>{esc(inp.description)}<br><span style='color:#8b8f96'>"
                    f"{' · '.join(facts)}</span></td></tr>")
    outs = "".join(f"<tr><td><b>{esc(o.name)}</b></td><td>{esc(o.description)}<br>"
                   f"<span style='color:#8b8f96'>{esc(o.type)}</span></td></tr>"
                   for o in spec.outputs)
    desc = "".join(f"<p>{esc(p)}</p>" for p in spec.description.split("\n\n") if p.strip())
    return (f"<h3>{esc(spec.title)}</h3><p style='color:#8b8f96'>{esc(spec.type_id)} · "
            f"version {esc(spec.version)} · {esc(spec.category)}</p>{desc}"
            f"<h4>Inputs</h4><table cellpadding=3>{''.join(rows) or '<tr><td>none</td></tr>'}"
            f"</table><h4>Outputs</h4><table cellpadding=3>{outs or '<tr><td>none</td></tr>'}"
            "</table>")
