"""The mask editor: paint (left button) and erase (right button, or Erase mode) a mask over a
reference image, with an adjustable brush, Clear and Invert. Saved as a greyscale PNG (white =
repaint) in a `masks` folder beside the user's workflow, or in the user's data folder for an
untitled workflow or a copy of a bundled one (Loom's own files are never written), and the
node's input is set to it (one undo step)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPainter, QPen
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from editor.places import is_shipped, masks_dir, refuse_shipped
from engine.errors import LoomError
from engine.paths import resolve_path

DEFAULT_SIZE = 512


class MaskCanvas(QWidget):
    def __init__(self, mask: QImage, base: QImage | None, parent: QWidget | None = None):
        super().__init__(parent)
        self.mask = mask
        self.base = base
        self.brush = 32
        self.erase = False
        self._last: QPointF | None = None
        self._painting_erase = False
        self._cursor: QPointF | None = None
        self.setMinimumSize(420, 420)
        self.setMouseTracking(True)
        self.setCursor(Qt.CursorShape.CrossCursor)

    def _rect(self) -> QRectF:
        w, h = self.mask.width(), self.mask.height()
        s = min(self.width() / w, self.height() / h)
        return QRectF((self.width() - w * s) / 2, (self.height() - h * s) / 2, w * s, h * s)

    def to_image(self, p: QPointF) -> QPointF:
        r = self._rect()
        s = r.width() / self.mask.width()
        return QPointF((p.x() - r.x()) / s, (p.y() - r.y()) / s)

    def stroke(self, points: list[QPointF], erase: bool = False) -> None:
        """Paint (or erase) along `points` given in image pixels."""
        p = QPainter(self.mask)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        color = QColor(0, 0, 0) if erase else QColor(255, 255, 255)
        pen = QPen(color, self.brush, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap,
                   Qt.PenJoinStyle.RoundJoin)
        p.setPen(pen)
        if len(points) == 1:
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(color)
            p.drawEllipse(points[0], self.brush / 2, self.brush / 2)
        for a, b in zip(points, points[1:]):
            p.drawLine(a, b)
        p.end()
        self.update()

    def clear(self) -> None:
        self.mask.fill(0)
        self.update()

    def invert(self) -> None:
        self.mask.invertPixels()
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("#161719"))
        r = self._rect()
        if self.base is not None:
            p.drawImage(r, self.base)
        else:
            p.fillRect(r, QColor("#2a2c30"))
        overlay = QImage(self.mask.size(), QImage.Format.Format_ARGB32_Premultiplied)
        overlay.fill(QColor(239, 83, 80))
        op = QPainter(overlay)
        op.setCompositionMode(QPainter.CompositionMode.CompositionMode_DestinationIn)
        op.drawImage(0, 0, _as_alpha(self.mask))
        op.end()
        p.setOpacity(0.55)
        p.drawImage(r, overlay)
        p.setOpacity(1.0)
        if self._cursor is not None:
            s = r.width() / self.mask.width()
            p.setPen(QPen(QColor("#ffffff"), 1))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawEllipse(self._cursor, self.brush * s / 2, self.brush * s / 2)

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        self._painting_erase = self.erase or event.button() == Qt.MouseButton.RightButton
        self._last = self.to_image(event.position())
        self.stroke([self._last], self._painting_erase)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        self._cursor = event.position()
        if self._last is not None:
            cur = self.to_image(event.position())
            self.stroke([self._last, cur], self._painting_erase)
            self._last = cur
        else:
            self.update()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        self._last = None

    def wheelEvent(self, event) -> None:  # noqa: N802
        self.brush = max(1, min(512, int(self.brush * (1.1 if event.angleDelta().y() > 0
                                                       else 1 / 1.1))))
        self.update()


def _as_alpha(mask: QImage) -> QImage:
    """The mask as an image whose alpha is the mask (for DestinationIn compositing)."""
    out = QImage(mask.size(), QImage.Format.Format_ARGB32)
    out.fill(QColor(255, 255, 255, 255))
    out.setAlphaChannel(mask)
    return out


class MaskEditor(QDialog):
    def __init__(self, parent: QWidget | None, scene, node_id: str, input: str,
                 reference: QImage | None = None):
        super().__init__(parent)
        self.setWindowTitle(f"Mask — {node_id}.{input}")
        self.scene = scene
        self.node_id, self.input = node_id, input
        doc = scene.doc
        self.base_dir = doc.base_dir()
        opts = {"base_dir": str(self.base_dir)}
        value = doc.graph.nodes[node_id].values.get(input) or ""
        mask = QImage()
        if value:
            mask = QImage(str(resolve_path(value, opts)))
        base = reference if reference is not None and not reference.isNull() \
            else self._find_reference(opts)
        if mask.isNull():
            size = base.size() if base is not None else None
            mask = QImage(size.width() if size else DEFAULT_SIZE,
                          size.height() if size else DEFAULT_SIZE, QImage.Format.Format_Grayscale8)
            mask.fill(0)
        else:
            mask = mask.convertToFormat(QImage.Format.Format_Grayscale8)
        if base is not None and base.size() != mask.size():
            base = base.scaled(mask.size())
        self.canvas = MaskCanvas(mask, base)

        size = QSlider(Qt.Orientation.Horizontal)
        size.setRange(1, 256)
        size.setValue(self.canvas.brush)
        size.valueChanged.connect(lambda v: setattr(self.canvas, "brush", v))
        self.size_slider = size
        erase = QCheckBox("Erase")
        erase.toggled.connect(lambda on: setattr(self.canvas, "erase", on))
        clear = QPushButton("Clear")
        clear.clicked.connect(self.canvas.clear)
        invert = QPushButton("Invert")
        invert.clicked.connect(self.canvas.invert)
        ref = QPushButton("Reference image…")
        ref.clicked.connect(self._choose_reference)
        save = QPushButton("Save mask")
        save.setDefault(True)
        save.clicked.connect(self.save_and_close)
        cancel = QPushButton("Cancel")
        cancel.clicked.connect(self.reject)
        bar = QHBoxLayout()
        bar.addWidget(QLabel("Brush"))
        bar.addWidget(size, 1)
        for w in (erase, clear, invert, ref):
            bar.addWidget(w)
        bottom = QHBoxLayout()
        hint = QLabel("Left: paint · Right: erase · Wheel: brush size · white = repaint")
        hint.setStyleSheet("color:#8b8f96;")
        bottom.addWidget(hint, 1)
        bottom.addWidget(cancel)
        bottom.addWidget(save)
        lay = QVBoxLayout(self)
        lay.addLayout(bar)
        lay.addWidget(self.canvas, 1)
        lay.addLayout(bottom)
        from editor.panels import fit_on_screen

        self.resize(*fit_on_screen(self, 760, 720))

    def _find_reference(self, opts: dict) -> QImage | None:
        """An image to paint over: the first image file another node of the graph loads."""
        graph, registry = self.scene.graph, self.scene.registry
        for n in graph.nodes.values():
            spec = registry.get(n.type)
            if spec is None:
                continue
            for name, inp in spec.inputs.items():
                if inp.widget == "image" and n.values.get(name):
                    img = QImage(str(resolve_path(n.values[name], opts)))
                    if not img.isNull():
                        return img
        return None

    def _choose_reference(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Reference image", str(self.base_dir),
                                              "Images (*.png *.jpg *.jpeg *.webp *.bmp)")
        if path:
            img = QImage(path)
            if not img.isNull():
                self.canvas.base = img.scaled(self.canvas.mask.size())
                self.canvas.update()

    def mask_path(self) -> Path:
        """Beside the user's own workflow (masks/<workflow>_<node>_<input>.png), replaced on
        each save. Without one (untitled, or a copy of a bundled workflow) the mask goes to
        the user's data folder under a new number each time (see save)."""
        doc = self.scene.doc
        if doc.path is not None and not is_shipped(doc.path):
            return doc.path.parent / "masks" / f"{doc.path.stem}_{self.node_id}_{self.input}.png"
        return masks_dir() / f"{self._stem()}_{self.node_id}_{self.input}.png"

    def _stem(self) -> str:
        source = self.scene.doc.source
        return source.stem if source is not None else "untitled"

    def save(self) -> Path:
        from editor.document import image_bytes
        from engine.files import write_atomic, write_numbered

        path = self.mask_path()
        refuse_shipped(path, "the mask")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = image_bytes(self.canvas.mask, "PNG")
        except ValueError as exc:
            raise OSError(f"could not write {path}: {exc}") from None
        if path.parent == masks_dir():
            # shared by every untitled workflow: never replace another one's mask
            path = Path(write_numbered(path.parent, path.stem, ".png", data))
        else:
            write_atomic(path, data)  # complete or not at all; a symlink's target is replaced
        self.scene.set_value(self.node_id, self.input, self.scene.portable_path(str(path)))
        return path

    def save_and_close(self) -> None:
        try:
            self.save()
        except (OSError, LoomError) as exc:
            self.scene.flash(f"Mask not saved: {exc}")
            return
        self.accept()
