"""The canvas view: grid background, zoom around the cursor, pan, fit, rubber-band select."""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QKeyEvent, QMouseEvent, QPainter, QPen, QWheelEvent
from PySide6.QtWidgets import QFrame, QGraphicsProxyWidget, QGraphicsView

from editor import theme
from editor.scene import GraphScene

ZOOM_MIN, ZOOM_MAX = 0.1, 3.0
GRID = 20.0


class GraphView(QGraphicsView):
    search_requested = Signal(QPointF, QPointF, object)
    zoom_changed = Signal(float)

    def __init__(self, scene: GraphScene, parent=None):
        super().__init__(scene, parent)
        self.setRenderHints(QPainter.RenderHint.Antialiasing
                            | QPainter.RenderHint.TextAntialiasing)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.SmartViewportUpdate)
        self.setOptimizationFlags(QGraphicsView.OptimizationFlag.DontSavePainterState)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setDragMode(QGraphicsView.DragMode.RubberBandDrag)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setBackgroundBrush(theme.BG)
        self.setCacheMode(QGraphicsView.CacheModeFlag.CacheBackground)
        self.setAcceptDrops(False)  # the window handles dropped files
        self._pan_from: QPointF | None = None
        self._space = False

    # zoom ------------------------------------------------------------------------------------
    @property
    def zoom(self) -> float:
        return self.transform().m11()

    def set_zoom(self, z: float, anchor_under_mouse: bool = False) -> None:
        z = max(ZOOM_MIN, min(ZOOM_MAX, z))
        if not anchor_under_mouse:
            self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        factor = z / self.zoom
        self.scale(factor, factor)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.zoom_changed.emit(self.zoom)

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802
        item = self.itemAt(event.position().toPoint())
        if isinstance(item, QGraphicsProxyWidget):
            super().wheelEvent(event)
            return
        delta = event.angleDelta().y()
        if delta == 0:
            return
        self.set_zoom(self.zoom * math.pow(1.0015, delta), anchor_under_mouse=True)

    def fit(self) -> None:
        scene = self.scene()
        rect = scene.items_rect() if isinstance(scene, GraphScene) else scene.itemsBoundingRect()
        if rect.isEmpty():
            self.resetTransform()
            self.centerOn(0, 0)
            return
        rect = rect.adjusted(-40, -40, 40, 40)
        self.fitInView(rect, Qt.AspectRatioMode.KeepAspectRatio)
        if self.zoom > 1.0:
            self.set_zoom(1.0)
        elif self.zoom < ZOOM_MIN:
            self.set_zoom(ZOOM_MIN)
        self.centerOn(rect.center())
        self.zoom_changed.emit(self.zoom)

    def viewport_state(self) -> dict:
        c = self.mapToScene(self.viewport().rect().center())
        return {"center": [round(c.x(), 1), round(c.y(), 1)], "zoom": round(self.zoom, 4)}

    def restore_viewport(self, state: object) -> bool:
        if not isinstance(state, dict):
            return False
        c, z = state.get("center"), state.get("zoom")
        if not (isinstance(c, list) and len(c) == 2 and isinstance(z, (int, float))):
            return False
        self.resetTransform()
        self.set_zoom(float(z))
        self.centerOn(QPointF(float(c[0]), float(c[1])))
        return True

    # background ------------------------------------------------------------------------------
    def drawBackground(self, painter: QPainter, rect: QRectF) -> None:  # noqa: N802
        painter.fillRect(rect, theme.BG)
        z = self.zoom
        step = GRID if z >= 0.5 else GRID * 5
        left = math.floor(rect.left() / step) * step
        top = math.floor(rect.top() / step) * step
        minor, major = [], []
        x = left
        while x < rect.right():
            (major if round(x / step) % 5 == 0 else minor).append((x, True))
            x += step
        y = top
        while y < rect.bottom():
            (major if round(y / step) % 5 == 0 else minor).append((y, False))
            y += step
        for lines, color in ((minor, theme.GRID_MINOR), (major, theme.GRID_MAJOR)):
            pen = QPen(color)
            pen.setCosmetic(True)
            painter.setPen(pen)
            for v, vertical in lines:
                if vertical:
                    painter.drawLine(QPointF(v, rect.top()), QPointF(v, rect.bottom()))
                else:
                    painter.drawLine(QPointF(rect.left(), v), QPointF(rect.right(), v))

    # panning ---------------------------------------------------------------------------------
    def _start_pan(self, event: QMouseEvent) -> None:
        self._pan_from = event.position()
        self.viewport().setCursor(Qt.CursorShape.ClosedHandCursor)

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if event.button() == Qt.MouseButton.MiddleButton or (
                self._space and event.button() == Qt.MouseButton.LeftButton):
            self._start_pan(event)
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if self._pan_from is not None:
            d = event.position() - self._pan_from
            self._pan_from = event.position()
            self.pan_by(-d.x(), -d.y())
            event.accept()
            return
        super().mouseMoveEvent(event)

    def pan_by(self, dx: float, dy: float) -> None:
        """Move the view by (dx, dy) viewport pixels."""
        c = self.mapToScene(self.viewport().rect().center())
        self.centerOn(c + QPointF(dx, dy) / self.zoom)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if self._pan_from is not None and event.button() in (Qt.MouseButton.MiddleButton,
                                                            Qt.MouseButton.LeftButton):
            self._pan_from = None
            self.viewport().unsetCursor()
            event.accept()
            return
        super().mouseReleaseEvent(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        focus = self.scene().focusItem()
        if focus is not None:
            super().keyPressEvent(event)
            return
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = True
            self.viewport().setCursor(Qt.CursorShape.OpenHandCursor)
            return
        if event.key() == Qt.Key.Key_Tab:
            pos = self.mapFromGlobal(self.cursor().pos())
            if not self.viewport().rect().contains(pos):
                pos = self.viewport().rect().center()
            self.search_requested.emit(self.mapToScene(pos),
                                       QPointF(self.viewport().mapToGlobal(pos)), None)
            return
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = False
            self.viewport().unsetCursor()
            return
        super().keyReleaseEvent(event)

    def focusNextPrevChild(self, next: bool) -> bool:  # noqa: N802, A002
        # Tab opens the node search on the canvas instead of moving the focus away
        if self.scene().focusItem() is None:
            return False
        return super().focusNextPrevChild(next)
