"""The canvas view: grid background, zoom around the cursor, pan, fit, rubber-band select, and
scroll bars over what the graph covers (a workflow opens at a readable zoom, never below
READABLE_ZOOM: a graph too big for the window is scrolled, not shrunk)."""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QKeyEvent, QMouseEvent, QPainter, QPen, QWheelEvent
from PySide6.QtWidgets import QFrame, QGraphicsProxyWidget, QGraphicsView

from editor import theme
from editor.scene import GraphScene

ZOOM_MIN, ZOOM_MAX = 0.1, 3.0
READABLE_ZOOM = 0.8
"""A workflow opens at 100 % where it fits, else smaller down to this, never below (field
labels stay about 10 px high)."""
GRID = 20.0
FREE = QRectF(-50_000, -50_000, 100_000, 100_000)
"""The view's scroll area while it is moved on purpose (zoom, pan, fit): anywhere."""


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
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setBackgroundBrush(theme.BG)
        self.setCacheMode(QGraphicsView.CacheModeFlag.CacheBackground)
        self.setAcceptDrops(False)  # the window handles dropped files
        self._pan_from: QPointF | None = None
        self._space = False
        self._updating_area = False
        self._area_timer = QTimer(self)
        self._area_timer.setSingleShot(True)
        self._area_timer.setInterval(0)
        self._area_timer.timeout.connect(self.update_scroll_area)
        if isinstance(scene, GraphScene):
            self.watch(scene)

    def watch(self, scene: GraphScene) -> None:
        """Keep the scroll bars over what `scene` covers as it changes."""
        scene.changed.connect(lambda _rects: self._area_timer.start())

    def setScene(self, scene) -> None:  # noqa: N802 - Qt's name
        super().setScene(scene)
        if isinstance(scene, GraphScene):
            self.watch(scene)
            self.setSceneRect(FREE)

    # scroll area ---------------------------------------------------------------------------
    def _free(self) -> None:
        """Lift the scroll limits before moving the view on purpose."""
        if self.sceneRect() != FREE:
            self._updating_area = True
            try:
                self.setSceneRect(FREE)
            finally:
                self._updating_area = False

    def update_scroll_area(self) -> None:
        """Scroll bars over the graph and the part of the canvas in view: they appear when
        part of the graph is out of view, with room to scroll it in (and half a window more
        around it), and go when everything is in view."""
        scene = self.scene()
        if self._updating_area or not isinstance(scene, GraphScene):
            return
        vis = self.mapToScene(self.viewport().rect()).boundingRect()
        items = scene.items_rect()
        rect = QRectF(vis)
        if not items.isEmpty():
            mx, my = vis.width() / 2, vis.height() / 2  # room beyond the graph's far side
            if items.left() < vis.left():
                rect.setLeft(items.left() - mx)
            if items.right() > vis.right():
                rect.setRight(items.right() + mx)
            if items.top() < vis.top():
                rect.setTop(items.top() - my)
            if items.bottom() > vis.bottom():
                rect.setBottom(items.bottom() + my)
        # a bar only along an axis with something out of view (an empty bar would take room
        # and shift the view as it comes and goes)
        wide = rect.width() > vis.width() + 0.5
        tall = rect.height() > vis.height() + 0.5
        self._updating_area = True
        try:
            for bar, policy_set, need in (
                    (self.horizontalScrollBarPolicy(), self.setHorizontalScrollBarPolicy, wide),
                    (self.verticalScrollBarPolicy(), self.setVerticalScrollBarPolicy, tall)):
                want = Qt.ScrollBarPolicy.ScrollBarAsNeeded if need \
                    else Qt.ScrollBarPolicy.ScrollBarAlwaysOff
                if bar != want:
                    policy_set(want)
            if rect != self.sceneRect():
                self.setSceneRect(rect)
        finally:
            self._updating_area = False

    def centerOn(self, *args) -> None:  # noqa: N802 - Qt's name; never clamped by the area
        self._free()
        super().centerOn(*args)
        self._area_timer.start()

    def resizeEvent(self, event) -> None:  # noqa: N802
        self._free()
        super().resizeEvent(event)
        self._area_timer.start()

    # zoom ------------------------------------------------------------------------------------
    @property
    def zoom(self) -> float:
        return self.transform().m11()

    def set_zoom(self, z: float, anchor_under_mouse: bool = False) -> None:
        z = max(ZOOM_MIN, min(ZOOM_MAX, z))
        self._free()
        if not anchor_under_mouse:
            self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        factor = z / self.zoom
        self.scale(factor, factor)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.zoom_changed.emit(self.zoom)
        self._area_timer.start()

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802
        item = self.itemAt(event.position().toPoint())
        if isinstance(item, QGraphicsProxyWidget):
            super().wheelEvent(event)
            return
        angle = event.angleDelta()
        mods = event.modifiers()
        if angle.x() and not angle.y():  # a touchpad's sideways swipe scrolls sideways
            self.pan_by(-angle.x() / 2, 0)
            return
        if mods & Qt.KeyboardModifier.ShiftModifier:  # Shift+wheel scrolls sideways
            self.pan_by(-angle.y() / 2, 0)
            return
        delta = angle.y()
        if delta == 0:
            return
        self.set_zoom(self.zoom * math.pow(1.0015, delta), anchor_under_mouse=True)

    def open_fit(self) -> None:
        """How a workflow opens: at 100 % where it fits, smaller down to READABLE_ZOOM,
        never below; a graph still too big shows its start (top left) and scrolls."""
        scene = self.scene()
        rect = scene.items_rect() if isinstance(scene, GraphScene) else scene.itemsBoundingRect()
        self._free()
        if rect.isEmpty():
            self.resetTransform()
            self.centerOn(0, 0)
            self.zoom_changed.emit(self.zoom)
            return
        rect = rect.adjusted(-40, -40, 40, 40)
        vp = self.viewport().rect()
        z = min(vp.width() / rect.width(), vp.height() / rect.height(), 1.0)
        z = max(z, READABLE_ZOOM)
        self.resetTransform()
        self.set_zoom(z)
        self._free()
        cx = rect.center().x() if rect.width() * z <= vp.width() \
            else rect.left() + vp.width() / (2 * z)
        cy = rect.center().y() if rect.height() * z <= vp.height() \
            else rect.top() + vp.height() / (2 * z)
        self.centerOn(QPointF(cx, cy))
        self.zoom_changed.emit(self.zoom)
        self._area_timer.start()

    def fit(self) -> None:
        """Fit to View (F): everything in view, however small."""
        scene = self.scene()
        rect = scene.items_rect() if isinstance(scene, GraphScene) else scene.itemsBoundingRect()
        self._free()
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
        self._free()
        self.centerOn(rect.center())
        self.zoom_changed.emit(self.zoom)
        self._area_timer.start()

    def viewport_state(self) -> dict:
        c = self.mapToScene(self.viewport().rect().center())
        return {"center": [round(c.x(), 1), round(c.y(), 1)], "zoom": round(self.zoom, 4)}

    def restore_viewport(self, state: object) -> bool:
        if not isinstance(state, dict):
            return False
        c, z = state.get("center"), state.get("zoom")
        if not (isinstance(c, list) and len(c) == 2 and isinstance(z, (int, float))):
            return False
        self._free()
        self.resetTransform()
        self.set_zoom(float(z))
        self._free()
        self.centerOn(QPointF(float(c[0]), float(c[1])))
        self._area_timer.start()
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
        self._free()
        self.centerOn(c + QPointF(dx, dy) / self.zoom)
        self._area_timer.start()

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
