"""Canvas items: nodes (with painted fields), sockets, edges and groups.

Items only draw and report user gestures to the scene (`GraphScene`), which turns them into
undo commands; they change when the scene applies graph events to them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QFontMetricsF,
    QImage,
    QPainter,
    QPainterPath,
    QPainterPathStroker,
    QPen,
)
from PySide6.QtWidgets import (
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsProxyWidget,
    QGraphicsSceneHoverEvent,
    QGraphicsSceneMouseEvent,
    QLineEdit,
    QPlainTextEdit,
    QStyleOptionGraphicsItem,
    QWidget,
)

from editor import fields, theme
from engine.node import Input, NodeSpec, Output, ignored_inputs

if TYPE_CHECKING:
    from editor.scene import GraphScene

TITLE_H = 28.0
SLOT_H = 22.0
PAD = 8.0
SOCKET_R = 5.5
DEFAULT_W = 230.0
MIN_W = 150.0
IMAGE_MAX_H = 260.0
RADIUS = 7.0
_press_tokens = itertools.count(1)

_F_TITLE = theme.ui_font(9.5, bold=True)
_F_ROW = theme.ui_font(8.5)
_F_SMALL = theme.ui_font(7.5)
_FM_ROW = QFontMetricsF(_F_ROW)
_FM_TITLE = QFontMetricsF(_F_TITLE)


@dataclass
class Row:
    kind: str  # "slot" (connection input and/or output), "field", "image"
    y: float
    h: float
    input: Input | None = None
    output: Output | None = None


class SocketItem(QGraphicsItem):
    """A typed connection point. Pressing on it starts a wire drag (handled by the scene)."""

    def __init__(self, node: NodeItem, name: str, type_name: str, is_output: bool):
        super().__init__(node)
        self.node = node
        self.name = name
        self.type_name = type_name
        self.is_output = is_output
        self.color = QColor(node.ctl.registry.types.color(type_name))
        self.highlight = 0  # 0 normal, 1 compatible, -1 refused
        self.hovered = False
        self.edges: set[EdgeItem] = set()
        spec_in = node.spec.inputs.get(name) if node.spec and not is_output else None
        self.is_field = spec_in is not None and fields.has_field(spec_in)
        self.setAcceptHoverEvents(True)
        self.setZValue(2)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemHasNoContents)
        self.setCursor(Qt.CursorShape.CrossCursor)
        self.setToolTip(f"{name}: {type_name}")

    def boundingRect(self) -> QRectF:  # noqa: N802
        r = SOCKET_R + 4
        return QRectF(-r, -r, 2 * r, 2 * r)

    def shape(self) -> QPainterPath:
        p = QPainterPath()
        p.addEllipse(QPointF(0, 0), SOCKET_R + 4, SOCKET_R + 4)
        return p

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem,
              widget: QWidget | None = None) -> None:
        pass  # drawn by its node (into the node's cached pixmap): thousands of sockets stay cheap

    def update(self, *args) -> None:  # noqa: D102 - redraw happens in the node
        self.node.update()

    def draw(self, painter: QPainter) -> None:
        """Draw this socket at its position in the node's coordinates."""
        c = self.pos()
        r = SOCKET_R
        connected = bool(self.edges)
        if self.is_field and not connected and self.highlight == 0 and not self.hovered:
            # a field's socket stays discreet until a wire is dragged near it
            dim = QColor(self.color)
            dim.setAlpha(110)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(dim)
            painter.drawEllipse(QRectF(c.x() - 2.5, c.y() - 2.5, 5, 5))
            return
        color = QColor(self.color)
        if self.highlight < 0:
            color.setAlpha(60)
        if self.highlight > 0 or self.hovered:
            r += 2
            painter.setPen(Qt.PenStyle.NoPen)
            glow = QColor(self.color)
            glow.setAlpha(90)
            painter.setBrush(glow)
            painter.drawEllipse(QRectF(c.x() - r - 3, c.y() - r - 3, 2 * r + 6, 2 * r + 6))
        if connected or self.highlight > 0:
            painter.setPen(QPen(theme.NODE_BORDER, 1.5))
            painter.setBrush(color)
        else:
            painter.setPen(QPen(color, 2.0))
            painter.setBrush(theme.NODE_BODY)
        painter.drawEllipse(QRectF(c.x() - r, c.y() - r, 2 * r, 2 * r))

    def hoverEnterEvent(self, event: QGraphicsSceneHoverEvent) -> None:  # noqa: N802
        self.hovered = True
        self.update()

    def hoverLeaveEvent(self, event: QGraphicsSceneHoverEvent) -> None:  # noqa: N802
        self.hovered = False
        self.update()

    def mousePressEvent(self, event: QGraphicsSceneMouseEvent) -> None:  # noqa: N802
        if event.button() == Qt.MouseButton.LeftButton:
            self.node.ctl.begin_wire(self, event.scenePos())
            event.accept()
        else:
            event.ignore()

    def mouseMoveEvent(self, event: QGraphicsSceneMouseEvent) -> None:  # noqa: N802
        self.node.ctl.update_wire(event.scenePos())

    def mouseReleaseEvent(self, event: QGraphicsSceneMouseEvent) -> None:  # noqa: N802
        self.node.ctl.end_wire(event.scenePos(), event.screenPos())


class EdgeItem(QGraphicsPathItem):
    """A connection drawn as a cubic curve from an output socket to an input socket."""

    def __init__(self, src: SocketItem, dst: SocketItem):
        super().__init__()
        self.src, self.dst = src, dst
        self.color = QColor(src.color)
        self.setZValue(-1)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIsSelectable)
        self.setAcceptHoverEvents(True)
        self.hovered = False
        src.edges.add(self)
        dst.edges.add(self)
        self.update_path()

    @property
    def key(self) -> tuple[str, str]:
        return self.dst.node.node_id, self.dst.name

    def detach(self) -> None:
        self.src.edges.discard(self)
        self.dst.edges.discard(self)
        self.src.update()
        self.dst.update()

    def update_path(self) -> None:
        self.setPath(wire_path(self.src.scenePos(), self.dst.scenePos()))

    def shape(self) -> QPainterPath:
        s = QPainterPathStroker()
        s.setWidth(10)
        return s.createStroke(self.path())

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem,
              widget: QWidget | None = None) -> None:
        color = QColor(self.color)
        width = 2.4
        if self.isSelected():
            color = color.lighter(140)
            width = 4.0
        elif self.hovered:
            width = 3.4
        painter.setPen(QPen(color, width, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawPath(self.path())

    def hoverEnterEvent(self, event: QGraphicsSceneHoverEvent) -> None:  # noqa: N802
        self.hovered = True
        self.update()

    def hoverLeaveEvent(self, event: QGraphicsSceneHoverEvent) -> None:  # noqa: N802
        self.hovered = False
        self.update()


def wire_path(p1: QPointF, p2: QPointF) -> QPainterPath:
    dx = max(abs(p2.x() - p1.x()) * 0.5, 40.0)
    path = QPainterPath(p1)
    path.cubicTo(QPointF(p1.x() + dx, p1.y()), QPointF(p2.x() - dx, p2.y()), p2)
    return path


def to_qimage(image: Any) -> QImage | None:
    """A QImage from a numpy uint8 array (HxW, HxWx3, HxWx4), a PIL image or a QImage."""
    if isinstance(image, QImage):
        return image
    if hasattr(image, "convert") and hasattr(image, "size") and not hasattr(image, "shape"):
        image = image.convert("RGBA")
        w, h = image.size
        return QImage(image.tobytes(), w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()
    if not hasattr(image, "shape"):
        return None
    import numpy as np  # only once images exist (numpy is loaded by then anyway)

    a = np.asarray(image)
    if a.ndim == 4:
        a = a[0]
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[2] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # CHW -> HWC
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    a = np.ascontiguousarray(a)
    h, w = a.shape[:2]
    if a.ndim == 2:
        fmt, bpl = QImage.Format.Format_Grayscale8, w
    elif a.shape[2] == 4:
        fmt, bpl = QImage.Format.Format_RGBA8888, 4 * w
    else:
        fmt, bpl = QImage.Format.Format_RGB888, 3 * w
    return QImage(a.data, w, h, bpl, fmt).copy()


class NodeItem(QGraphicsItem):
    """One node: a title, slot rows (connection inputs left, outputs right), a field row per
    constant input (each with its own socket: connecting hides the field), run state."""

    def __init__(self, ctl: GraphScene, node_id: str, type_id: str, spec: NodeSpec | None):
        super().__init__()
        self.ctl = ctl
        self.node_id = node_id
        self.type_id = type_id
        self.spec = spec
        self._ignored_shown: dict[str, str] = {}
        self.title = spec.title if spec else f"{type_id} (unknown)"
        self.rows: list[Row] = []
        self.in_sockets: dict[str, SocketItem] = {}
        self.out_sockets: dict[str, SocketItem] = {}
        self.width = DEFAULT_W
        self.height = TITLE_H
        self.collapsed = False
        self.color: str | None = None
        # run state
        self.state: str | None = None
        self.elapsed: float | None = None
        self.error: str | None = None
        self.error_input: str | None = None
        self.problem: str | None = None
        self.progress: tuple[int, int] | None = None
        self.preview: QImage | None = None
        self.images: list[QImage] = []
        self.text_result: str | None = None
        self._hover_row: Row | None = None
        self._press: dict[str, Any] | None = None
        self._editor: QGraphicsProxyWidget | None = None
        self._resizing = False
        self.setFlags(QGraphicsItem.GraphicsItemFlag.ItemIsMovable
                      | QGraphicsItem.GraphicsItemFlag.ItemIsSelectable
                      | QGraphicsItem.GraphicsItemFlag.ItemSendsGeometryChanges)
        self.setAcceptHoverEvents(True)
        self.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        self._make_sockets()

    # model access --------------------------------------------------------------------------
    @property
    def node(self):
        return self.ctl.graph.nodes.get(self.node_id)

    def value(self, name: str) -> Any:
        n = self.node
        if n is None:
            return None
        if name in n.values:
            return n.values[name]
        inp = self.spec.inputs.get(name) if self.spec else None
        return inp.default if inp is not None and inp.has_default else None

    def linked(self, name: str) -> bool:
        return (self.node_id, name) in self.ctl.graph.links

    # layout --------------------------------------------------------------------------------
    def _make_sockets(self) -> None:
        if self.spec is None:
            return
        for inp in self.spec.inputs.values():
            self.in_sockets[inp.name] = SocketItem(self, inp.name, inp.type, False)
        for out in self.spec.outputs:
            self.out_sockets[out.name] = SocketItem(self, out.name, out.type, True)

    def apply_ui(self, ui: dict[str, Any]) -> None:
        pos = ui.get("pos")
        if isinstance(pos, (list, tuple)) and len(pos) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in pos):  # a hand-edited file may hold anything here: ignore it then
            p = QPointF(float(pos[0]), float(pos[1]))
            if p != self.pos():
                self.setPos(p)
        size = ui.get("size")
        width = DEFAULT_W
        if isinstance(size, (list, tuple)) and size and isinstance(size[0], (int, float)):
            width = max(MIN_W, float(size[0]))
        color = ui.get("color") if isinstance(ui.get("color"), str) else None
        collapsed = bool(ui.get("collapsed", False))
        if (width, color, collapsed) != (self.width, self.color, self.collapsed) \
                or not self.rows:
            self.width, self.color, self.collapsed = width, color, collapsed
            self.relayout()

    def relayout(self) -> None:
        self.prepareGeometryChange()
        rows: list[Row] = []
        y = TITLE_H + 4
        spec = self.spec
        if spec is not None:
            conn = [i for i in spec.inputs.values() if not fields.has_field(i)]
            for k in range(max(len(conn), len(spec.outputs))):
                inp = conn[k] if k < len(conn) else None
                out = spec.outputs[k] if k < len(spec.outputs) else None
                rows.append(Row("slot", y, SLOT_H, inp, out))
                y += SLOT_H
            for inp in spec.inputs.values():
                if fields.has_field(inp):
                    h = fields.ROW_H if self.linked(inp.name) else fields.row_height(inp)
                    rows.append(Row("field", y, h, inp))
                    y += h
        img = self.preview if self.state == "running" and self.preview is not None \
            else (self.images[0] if self.images else None)
        if img is not None and not img.isNull():
            iw = self.width - 2 * PAD
            ih = min(IMAGE_MAX_H, iw * img.height() / max(img.width(), 1))
            rows.append(Row("image", y + 4, ih))
            y += ih + 8
        if self.text_result is not None:
            rows.append(Row("text", y + 2, 40))
            y += 44
        self.rows = rows
        self.height = TITLE_H if self.collapsed else y + 6
        half = TITLE_H / 2
        for name, s in self.in_sockets.items():
            row = next((r for r in rows if r.input is not None and r.input.name == name), None)
            s.setVisible(not self.collapsed and row is not None)
            s.setPos(0, half if self.collapsed or row is None else
                     row.y + (min(row.h, fields.ROW_H) if row.kind == "field" else row.h) / 2)
        for name, s in self.out_sockets.items():
            row = next((r for r in rows if r.output is not None and r.output.name == name), None)
            s.setVisible(not self.collapsed and row is not None)
            s.setPos(self.width, half if self.collapsed or row is None else row.y + row.h / 2)
        self.update_edges()
        self.update()

    def update_edges(self) -> None:
        for s in itertools.chain(self.in_sockets.values(), self.out_sockets.values()):
            for e in s.edges:
                e.update_path()

    def boundingRect(self) -> QRectF:  # noqa: N802
        return QRectF(-12, -6, self.width + 24, self.height + 12)

    def itemChange(self, change: QGraphicsItem.GraphicsItemChange, value: Any) -> Any:  # noqa: N802
        if change == QGraphicsItem.GraphicsItemChange.ItemPositionHasChanged:
            self.update_edges()
        elif change == QGraphicsItem.GraphicsItemChange.ItemSelectedHasChanged:
            self.setZValue(1 if value else 0)
        return super().itemChange(change, value)

    # painting ------------------------------------------------------------------------------
    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem,
              widget: QWidget | None = None) -> None:
        lod = option.levelOfDetailFromTransform(painter.worldTransform())
        body = QRectF(0, 0, self.width, self.height)
        title_color = QColor(self.color) if self.color else theme.NODE_TITLE
        border = self._border_color()
        if lod < 0.35:  # far away: blocks only
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(theme.NODE_BODY)
            painter.drawRect(body)
            painter.setBrush(title_color if border is None else border)
            painter.drawRect(QRectF(0, 0, self.width, TITLE_H))
            if self.isSelected():
                painter.setPen(QPen(theme.SELECTED, 4))
                painter.setBrush(Qt.BrushStyle.NoBrush)
                painter.drawRect(body)
            return
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        # body and title
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(theme.NODE_BODY)
        painter.drawRoundedRect(body, RADIUS, RADIUS)
        title = QPainterPath()
        title.addRoundedRect(QRectF(0, 0, self.width, TITLE_H), RADIUS, RADIUS)
        if not self.collapsed:
            title.addRect(QRectF(0, TITLE_H - RADIUS, self.width, RADIUS))
        painter.setBrush(title_color)
        painter.drawPath(title.simplified())
        # status strip, progress
        if self.state is not None:
            sc = theme.STATUS_COLORS.get(self.state, theme.TEXT_DIM)
            painter.setBrush(sc)
            painter.drawEllipse(QPointF(12, TITLE_H / 2), 4, 4)
        if self.progress is not None and self.state == "running":
            step, total = self.progress
            frac = step / total if total else 0
            painter.setBrush(theme.ACCENT)
            painter.drawRect(QRectF(0, TITLE_H - 3, self.width * frac, 3))
        # title text and timing
        painter.setFont(_F_TITLE)
        painter.setPen(theme.TEXT)
        x0 = 22 if self.state is not None else PAD + 2
        status = self._status_text()
        sw = _FM_ROW.horizontalAdvance(status) + 8 if status else 0
        tr = QRectF(x0, 0, self.width - x0 - PAD - sw, TITLE_H)
        painter.drawText(tr, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                         _FM_TITLE.elidedText(self.title, Qt.TextElideMode.ElideRight, tr.width()))
        if status:
            painter.setFont(_F_ROW)
            painter.setPen(theme.STATUS_COLORS.get(self.state or "", theme.TEXT_DIM))
            painter.drawText(QRectF(self.width - PAD - sw, 0, sw, TITLE_H),
                             Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight, status)
        if not self.collapsed and lod >= 0.5:
            painter.setFont(_F_ROW)
            for row in self.rows:
                if row.kind == "slot":
                    self._paint_slot(painter, row)
                elif row.kind == "field":
                    self._paint_field(painter, row)
                elif row.kind == "image":
                    self._paint_image(painter, row)
                elif row.kind == "text":
                    self._paint_text(painter, row)
        # border
        painter.setBrush(Qt.BrushStyle.NoBrush)
        if self.isSelected():
            painter.setPen(QPen(theme.SELECTED, 2.0))
        elif border is not None:
            painter.setPen(QPen(border, 2.0))
        else:
            painter.setPen(QPen(theme.NODE_BORDER, 1.0))
        painter.drawRoundedRect(body, RADIUS, RADIUS)
        for sock in itertools.chain(self.in_sockets.values(), self.out_sockets.values()):
            if sock.isVisible():
                sock.draw(painter)
        if not self.collapsed and self.isSelected():
            painter.setPen(QPen(theme.TEXT_DIM, 1.2))
            w, h = self.width, self.height
            for d in (4, 8):
                painter.drawLine(QPointF(w - d, h - 2), QPointF(w - 2, h - d))

    def _border_color(self) -> QColor | None:
        if self.error or self.state == "error":
            return theme.STATUS_COLORS["error"]
        if self.state == "running":
            return theme.STATUS_COLORS["running"]
        if self.problem:
            return QColor("#b08a3c")
        return None

    def _status_text(self) -> str:
        if self.state is None:
            return ""
        if self.state == "running":
            if self.progress:
                return f"{self.progress[0]}/{self.progress[1]}"
            return "running"
        if self.state in ("done", "error", "cancelled") and self.elapsed is not None:
            return f"{self.elapsed:.2f}s" if self.elapsed < 60 else f"{self.elapsed / 60:.1f}m"
        return self.state

    def _paint_slot(self, painter: QPainter, row: Row) -> None:
        cy = QRectF(0, row.y, self.width, row.h)
        if row.input is not None:
            painter.setPen(theme.TEXT if not self._input_error(row.input.name) else
                           theme.STATUS_COLORS["error"])
            r = QRectF(PAD + 6, row.y, self.width / 2 - PAD, row.h)
            text = fields.label_of(row.input) + ("" if not row.input.optional else " ·")
            painter.drawText(r, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft, text)
        if row.output is not None:
            painter.setPen(theme.TEXT)
            r = QRectF(self.width / 2, row.y, self.width / 2 - PAD - 6, row.h)
            painter.drawText(r, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight,
                             row.output.name.replace("_", " "))
        del cy

    def _input_error(self, name: str) -> bool:
        return self.error_input == name

    def field_rect(self, row: Row) -> QRectF:
        return QRectF(PAD + 4, row.y + 2, self.width - 2 * PAD - 8, row.h - 4)

    def ignored(self) -> dict[str, str]:
        """Inputs that have no effect as the node is wired and set (engine.node.ignored_inputs):
        drawn greyed out, with the reason in the tooltip."""
        n = self.node
        if self.spec is None or n is None:
            return {}
        linked = {inp for (dst, inp) in self.ctl.graph.links if dst == self.node_id}
        return ignored_inputs(self.spec, n.values, linked)

    def _paint_field(self, painter: QPainter, row: Row) -> None:
        inp = row.input
        assert inp is not None
        ignored = self.ignored()
        if ignored != self._ignored_shown:
            self._ignored_shown = ignored
            self._refresh_tooltip()
        if inp.name in ignored and not self.linked(inp.name):
            painter.save()
            painter.setOpacity(0.35)
            try:
                self._paint_field_body(painter, row)
            finally:
                painter.restore()
            return
        self._paint_field_body(painter, row)

    def _paint_field_body(self, painter: QPainter, row: Row) -> None:
        inp = row.input
        assert inp is not None
        kind = fields.kind_of(inp)
        rect = self.field_rect(row)
        label = fields.label_of(inp)
        if self.linked(inp.name):
            painter.setPen(theme.TEXT)
            painter.drawText(QRectF(rect.x() + 2, rect.y(), rect.width(), rect.height()),
                             Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft, label)
            return
        value = self.value(inp.name)
        hover = self._hover_row is row
        painter.setPen(QPen(theme.STATUS_COLORS["error"], 1) if self._input_error(inp.name)
                       else Qt.PenStyle.NoPen)
        painter.setBrush(theme.FIELD_HOVER if hover else theme.FIELD)
        painter.drawRoundedRect(rect, 5, 5)
        inner = rect.adjusted(8, 0, -8, 0)
        dim, text = theme.TEXT_DIM, theme.TEXT
        left = Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft
        right = Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight
        if kind == "slider":
            lo, hi = float(inp.min), float(inp.max)
            frac = (float(value) - lo) / (hi - lo) if hi > lo and value is not None else 0
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(theme.FIELD_FILL)
            fill = QRectF(rect.x(), rect.y(), rect.width() * max(0.0, min(1.0, frac)),
                          rect.height())
            painter.drawRoundedRect(fill, 5, 5)
        if kind in ("number", "seed"):
            painter.setPen(dim if hover else QColor(0, 0, 0, 0))
            painter.drawText(QRectF(rect.x() + 3, rect.y(), 10, rect.height()),
                             Qt.AlignmentFlag.AlignCenter, "‹")
            end = rect.right() - (40 if kind == "seed" else 0)
            painter.drawText(QRectF(end - 13, rect.y(), 10, rect.height()),
                             Qt.AlignmentFlag.AlignCenter, "›")
            inner = QRectF(rect.x() + 14, rect.y(), end - rect.x() - 28, rect.height())
        if kind == "multiline":
            painter.setPen(dim)
            painter.setFont(_F_SMALL)
            painter.drawText(QRectF(inner.x(), rect.y() + 2, inner.width(), 12), left, label)
            painter.setFont(_F_ROW)
            painter.setPen(text if value else dim)
            box = QRectF(inner.x(), rect.y() + 15, inner.width(), rect.height() - 17)
            shown = value if value else f"{label}…"
            painter.drawText(box, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop
                             | Qt.TextFlag.TextWordWrap, _clip_lines(shown, box))
            return
        painter.setPen(dim)
        label_w = min(_FM_ROW.horizontalAdvance(label) + 6, inner.width() * 0.55)
        painter.drawText(QRectF(inner.x(), inner.y(), label_w, inner.height()), left,
                         _FM_ROW.elidedText(label, Qt.TextElideMode.ElideRight, label_w))
        vr = QRectF(inner.x() + label_w, inner.y(), inner.width() - label_w, inner.height())
        painter.setPen(text)
        if kind == "bool":
            on = bool(value)
            sw = QRectF(vr.right() - 26, vr.center().y() - 7, 26, 14)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(theme.ACCENT if on else QColor("#45484f"))
            painter.drawRoundedRect(sw, 7, 7)
            painter.setBrush(QColor("#f0f0f0"))
            painter.drawEllipse(QPointF(sw.right() - 7 if on else sw.left() + 7,
                                        sw.center().y()), 5, 5)
        elif kind == "choice":
            painter.drawText(vr.adjusted(0, 0, -12, 0), right, _FM_ROW.elidedText(
                fields.fmt(inp, value), Qt.TextElideMode.ElideLeft, vr.width() - 12))
            painter.setPen(dim)
            painter.drawText(QRectF(vr.right() - 9, vr.y(), 10, vr.height()),
                             Qt.AlignmentFlag.AlignCenter, "▾")
        elif kind in ("file", "folder", "image", "mask"):
            buttons = 2 if kind == "mask" else 1
            vr2 = vr.adjusted(0, 0, -18 * buttons, 0)
            shown = fields.short_path(str(value or ""), 40) or "(none)"
            painter.setPen(text if value else dim)
            painter.drawText(vr2, right, _FM_ROW.elidedText(shown, Qt.TextElideMode.ElideLeft,
                                                             vr2.width()))
            painter.setPen(dim)
            painter.drawText(QRectF(vr.right() - 16, vr.y(), 16, vr.height()),
                             Qt.AlignmentFlag.AlignCenter, "…")
            if kind == "mask":
                painter.drawText(QRectF(vr.right() - 34, vr.y(), 16, vr.height()),
                                 Qt.AlignmentFlag.AlignCenter, "✎")
        elif kind == "seed":
            painter.drawText(vr, right, fields.fmt(inp, value))
            rand = bool((self.node.ui.get("randomize") or {}).get(inp.name)) if self.node else False
            dice = QRectF(rect.right() - 38, rect.y() + 2, 18, rect.height() - 4)
            tog = QRectF(rect.right() - 19, rect.y() + 2, 17, rect.height() - 4)
            painter.setPen(dim)
            painter.drawText(dice, Qt.AlignmentFlag.AlignCenter, "⚄")
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(theme.ACCENT if rand else QColor("#45484f"))
            painter.drawRoundedRect(tog.adjusted(2, 3, -2, -3), 3, 3)
            painter.setPen(QColor("#ffffff") if rand else dim)
            painter.setFont(_F_SMALL)
            painter.drawText(tog, Qt.AlignmentFlag.AlignCenter, "R")
            painter.setFont(_F_ROW)
        else:
            painter.drawText(vr, right, _FM_ROW.elidedText(fields.fmt(inp, value),
                                                           Qt.TextElideMode.ElideLeft, vr.width()))

    def _paint_image(self, painter: QPainter, row: Row) -> None:
        img = self.preview if self.state == "running" and self.preview is not None \
            else (self.images[0] if self.images else None)
        if img is None:
            return
        box = QRectF(PAD, row.y, self.width - 2 * PAD, row.h)
        scale = min(box.width() / img.width(), box.height() / img.height())
        w, h = img.width() * scale, img.height() * scale
        target = QRectF(box.center().x() - w / 2, box.y(), w, h)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        painter.drawImage(target, img)
        if len(self.images) > 1:
            painter.setPen(theme.TEXT)
            painter.setFont(_F_SMALL)
            painter.drawText(target.adjusted(4, 2, -4, -2),
                             Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignRight,
                             f"1/{len(self.images)}")
            painter.setFont(_F_ROW)

    def _paint_text(self, painter: QPainter, row: Row) -> None:
        box = QRectF(PAD + 4, row.y, self.width - 2 * PAD - 8, row.h)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(theme.FIELD)
        painter.drawRoundedRect(box, 4, 4)
        painter.setPen(theme.TEXT)
        inner = box.adjusted(6, 3, -6, -3)
        painter.drawText(inner, Qt.AlignmentFlag.AlignLeft | Qt.TextFlag.TextWordWrap,
                         _clip_lines(self.text_result or "", inner))

    # run state -----------------------------------------------------------------------------
    def set_run_state(self, state: str | None, elapsed: float | None = None,
                      error: str | None = None, error_input: str | None = None) -> None:
        self.state, self.elapsed = state, elapsed
        self.error, self.error_input = error, error_input
        if state != "running":
            self.progress = None
        if state == "queued":
            self.preview = None
        self._refresh_tooltip()
        self.relayout()

    def set_progress(self, step: int, total: int, preview: QImage | None) -> None:
        self.progress = (step, total)
        relayout = preview is not None and self.preview is None
        if preview is not None:
            self.preview = preview
        if relayout:
            self.relayout()
        else:
            self.update()

    def set_results(self, images: list[QImage], text: str | None) -> None:
        self.images = images
        self.text_result = text
        self.relayout()

    def set_problem(self, message: str | None) -> None:
        if message != self.problem:
            self.problem = message
            self._refresh_tooltip()
            self.update()

    def _refresh_tooltip(self) -> None:
        parts = [f"<b>{self.title}</b> <span style='color:#8b8f96'>{self.node_id} · "
                 f"{self.type_id}</span>"]
        if self.spec and self.spec.description:
            parts.append(self.spec.description.split("\n\n")[0])
        if self.error:
            parts.append(f"<span style='color:#ef5350'><b>Error:</b> {_esc(self.error)}</span>")
        if self.problem:
            parts.append(f"<span style='color:#e0b050'>{_esc(self.problem)}</span>")
        self._ignored_shown = self.ignored()
        for name, why in self._ignored_shown.items():
            parts.append(f"<span style='color:#8b8f96'>{_esc(name)} is ignored: "
                         f"{_esc(why)}</span>")
        self.setToolTip("<br>".join(parts))

    # interaction ---------------------------------------------------------------------------
    def row_at(self, pos: QPointF) -> Row | None:
        if self.collapsed:
            return None
        for r in self.rows:
            if r.y <= pos.y() < r.y + r.h:
                return r
        return None

    def zone_at(self, row: Row, pos: QPointF) -> str:
        kind = fields.kind_of(row.input)
        rect = self.field_rect(row)
        x = pos.x()
        if kind == "seed":
            if x >= rect.right() - 19:
                return "rand"
            if x >= rect.right() - 38:
                return "dice"
            if x < rect.x() + 14:
                return "dec"
            if x > rect.right() - 52:
                return "inc"
        if kind == "number":
            if x < rect.x() + 14:
                return "dec"
            if x > rect.right() - 14:
                return "inc"
        if kind in ("file", "folder", "image", "mask") and x > rect.right() - 26:
            return "browse"
        if kind == "mask" and x > rect.right() - 44:
            return "paint"
        return "body"

    def hoverMoveEvent(self, event: QGraphicsSceneHoverEvent) -> None:  # noqa: N802
        row = self.row_at(event.pos())
        if row is not None and row.kind != "field":
            row = None
        if row is not self._hover_row:
            self._hover_row = row
            if row is not None and row.input is not None:
                inp = row.input
                desc = inp.description or fields.label_of(inp)
                extra = []
                if inp.min is not None or inp.max is not None:
                    extra.append(f"range {inp.min} … {inp.max}")
                if fields.kind_of(inp) in ("number", "slider", "seed"):
                    extra.append("drag to scrub · click to type")
                self.setToolTip(f"<b>{inp.name}</b> ({inp.type})<br>{_esc(desc)}"
                                + (f"<br><span style='color:#8b8f96'>{'; '.join(extra)}</span>"
                                   if extra else ""))
            else:
                self._refresh_tooltip()
            self.update()
        if self.isSelected() and self._in_grip(event.pos()):
            self.setCursor(Qt.CursorShape.SizeHorCursor)
        else:
            self.unsetCursor()

    def hoverLeaveEvent(self, event: QGraphicsSceneHoverEvent) -> None:  # noqa: N802
        if self._hover_row is not None:
            self._hover_row = None
            self.update()

    def _in_grip(self, pos: QPointF) -> bool:
        return not self.collapsed and pos.x() > self.width - 12 and pos.y() > self.height - 12

    def mousePressEvent(self, event: QGraphicsSceneMouseEvent) -> None:  # noqa: N802
        if event.button() != Qt.MouseButton.LeftButton:
            super().mousePressEvent(event)
            return
        pos = event.pos()
        if self.isSelected() and self._in_grip(pos):
            self._resizing = True
            self._press = {"width": self.width}
            event.accept()
            return
        row = self.row_at(pos)
        if row is not None and row.kind == "field" and not self.linked(row.input.name):
            zone = self.zone_at(row, pos)
            self._press = {"row": row, "zone": zone, "x": event.scenePos().x(),
                           "value": self.value(row.input.name), "moved": False,
                           "token": ("scrub", self.node_id, next(_press_tokens))}
            kind = fields.kind_of(row.input)
            if kind == "slider":
                self._slide_to(row, pos)
            event.accept()
            return
        self._press = None
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QGraphicsSceneMouseEvent) -> None:  # noqa: N802
        press = self._press
        if self._resizing and press is not None:
            self.prepareGeometryChange()
            self.width = max(MIN_W, event.pos().x())
            self.relayout()
            return
        if press is None or "row" not in press:
            super().mouseMoveEvent(event)
            return
        row, inp = press["row"], press["row"].input
        kind = fields.kind_of(inp)
        if kind == "slider":
            press["moved"] = True
            self._slide_to(row, event.pos())
        elif kind in ("number", "seed") and press["zone"] in ("body", "dec", "inc"):
            dx = event.scenePos().x() - press["x"]
            if abs(dx) > 3 or press["moved"]:
                press["moved"] = True
                px = 4.0 if inp.type == "FLOAT" else 6.0
                value = fields.nudge(inp, press["value"], round(dx / px))
                self.ctl.set_value(self.node_id, inp.name, value, merge_key=press["token"])

    def mouseReleaseEvent(self, event: QGraphicsSceneMouseEvent) -> None:  # noqa: N802
        press, self._press = self._press, None
        if self._resizing:
            self._resizing = False
            old = press["width"] if press else self.width
            if old != self.width:
                self.ctl.resize_node(self.node_id, old, self.width)
            return
        if press is None or "row" not in press:
            super().mouseReleaseEvent(event)
            return
        row, zone = press["row"], press["zone"]
        inp = row.input
        kind = fields.kind_of(inp)
        if press["moved"]:
            return
        value = self.value(inp.name)
        if zone in ("dec", "inc"):
            self.ctl.set_value(self.node_id, inp.name,
                               fields.nudge(inp, value, -1 if zone == "dec" else 1))
        elif zone == "dice":
            self.ctl.randomize_seed(self.node_id, inp.name)
        elif zone == "rand":
            self.ctl.toggle_randomize(self.node_id, inp.name)
        elif zone == "browse":
            self.ctl.browse_path(self.node_id, inp, kind)
        elif zone == "paint":
            self.ctl.edit_mask(self.node_id, inp)
        elif kind == "bool":
            self.ctl.set_value(self.node_id, inp.name, not bool(value))
        elif kind == "choice":
            self.ctl.choose(self.node_id, inp, event.screenPos())
        elif kind == "slider":
            pass
        else:
            self.open_editor(inp.name)

    def _slide_to(self, row: Row, pos: QPointF) -> None:
        inp = row.input
        rect = self.field_rect(row)
        frac = max(0.0, min(1.0, (pos.x() - rect.x()) / rect.width()))
        value = inp.min + frac * (inp.max - inp.min)
        step = fields.step_of(inp)
        value = round(round(value / step) * step, 6)
        self.ctl.set_value(self.node_id, inp.name, fields.clamp(inp, value),
                           merge_key=self._press["token"] if self._press else None)

    def mouseDoubleClickEvent(self, event: QGraphicsSceneMouseEvent) -> None:  # noqa: N802
        row = self.row_at(event.pos())
        if row is not None and row.kind == "field" and not self.linked(row.input.name):
            if fields.kind_of(row.input) == "slider":
                self.open_editor(row.input.name)
            return
        if event.pos().y() < TITLE_H:
            self.ctl.toggle_collapsed([self.node_id])
            return
        if row is not None and row.kind == "image":
            self.ctl.show_in_viewer(self.node_id)
            return
        super().mouseDoubleClickEvent(event)

    # inline editor -------------------------------------------------------------------------
    def open_editor(self, name: str) -> QWidget | None:
        """Edit one field with a real widget on top of it; Enter/focus-out commits, Esc
        cancels. Returns the widget (tests type into it)."""
        self.close_editor()
        row = next((r for r in self.rows if r.kind == "field" and r.input.name == name), None)
        if row is None:
            return None
        inp = row.input
        value = self.value(name)
        rect = self.field_rect(row)
        multiline = fields.kind_of(inp) == "multiline"
        if multiline:
            w: QWidget = _TextEditor(str(value or ""))
        else:
            w = _LineEditor("" if value is None else (str(value) if inp.type == "STRING"
                                                      else fields.fmt(inp, value)))
            w.selectAll()
        w.setStyleSheet("background:#15161a; border:1px solid #4f9cf9; border-radius:4px;"
                        "color:#e8e9ec; font-size:9pt;")

        def commit(text: str) -> None:
            if self._editor is None:
                return
            self.close_editor()
            try:
                new = fields.parse(inp, text)
            except (ValueError, ZeroDivisionError):
                self.ctl.flash(f"{name}: cannot read {text!r} as {inp.type}")
                return
            if new != value:
                self.ctl.set_value(self.node_id, name, fields.clamp(inp, new))

        w.committed.connect(commit)
        w.cancelled.connect(self.close_editor)
        proxy = QGraphicsProxyWidget(self)
        proxy.setWidget(w)
        proxy.setGeometry(rect if not multiline else rect.adjusted(0, 0, 0, 60))
        proxy.setZValue(10)
        self._editor = proxy
        self.setCacheMode(QGraphicsItem.CacheMode.NoCache)
        w.setFocus(Qt.FocusReason.MouseFocusReason)
        return w

    def close_editor(self) -> None:
        proxy, self._editor = self._editor, None
        if proxy is not None:
            proxy.hide()
            w = proxy.widget()
            if w is not None:
                w.blockSignals(True)
            if proxy.scene() is not None:
                proxy.scene().removeItem(proxy)
            proxy.deleteLater()
            self.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)

    @property
    def editor(self) -> QWidget | None:
        return self._editor.widget() if self._editor is not None else None


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace(
        "\n", "<br>")


def _clip_lines(text: str, box: QRectF) -> str:
    lines = max(1, int(box.height() // _FM_ROW.lineSpacing()))
    approx = int(box.width() / max(_FM_ROW.averageCharWidth(), 1)) * lines
    return text if len(text) <= approx else text[:max(approx - 1, 1)] + "…"


class _LineEditor(QLineEdit):
    committed = Signal(str)
    cancelled = Signal()

    def __init__(self, text: str):
        super().__init__(text)
        self.returnPressed.connect(lambda: self.committed.emit(self.text()))

    def keyPressEvent(self, event) -> None:  # noqa: N802
        if event.key() == Qt.Key.Key_Escape:
            self.cancelled.emit()
            return
        super().keyPressEvent(event)

    def focusOutEvent(self, event) -> None:  # noqa: N802
        super().focusOutEvent(event)
        self.committed.emit(self.text())


class _TextEditor(QPlainTextEdit):
    committed = Signal(str)
    cancelled = Signal()

    def __init__(self, text: str):
        super().__init__(text)
        self.setTabChangesFocus(True)
        self.moveCursor(self.textCursor().MoveOperation.End)

    def keyPressEvent(self, event) -> None:  # noqa: N802
        if event.key() == Qt.Key.Key_Escape:
            self.cancelled.emit()
            return
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and \
                event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.committed.emit(self.toPlainText())
            return
        super().keyPressEvent(event)

    def focusOutEvent(self, event) -> None:  # noqa: N802
        super().focusOutEvent(event)
        self.committed.emit(self.toPlainText())


class GroupItem(QGraphicsItem):
    """A titled frame behind nodes. Dragging its title moves the nodes inside it too; the
    bottom-right corner resizes it; double-clicking the title renames it."""

    TITLE = 30.0

    def __init__(self, ctl: GraphScene, index: int, data: dict[str, Any]):
        super().__init__()
        self.ctl = ctl
        self.index = index
        self.title = str(data.get("title", "Group"))
        rect = data.get("rect") or [0, 0, 400, 300]
        self.w, self.h = float(rect[2]), float(rect[3])
        self.color = QColor(data.get("color") or "#3b5b8c")
        self.setPos(float(rect[0]), float(rect[1]))
        self.setZValue(-10)
        self.setFlags(QGraphicsItem.GraphicsItemFlag.ItemIsMovable
                      | QGraphicsItem.GraphicsItemFlag.ItemIsSelectable
                      | QGraphicsItem.GraphicsItemFlag.ItemSendsGeometryChanges)
        self._carried: list[tuple[QGraphicsItem, QPointF]] = []
        self._resizing = False

    def data_dict(self) -> dict[str, Any]:
        return {"title": self.title, "rect": [round(self.x(), 1), round(self.y(), 1),
                                              round(self.w, 1), round(self.h, 1)],
                "color": self.color.name()}

    def boundingRect(self) -> QRectF:  # noqa: N802
        return QRectF(0, 0, self.w, self.h)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem,
              widget: QWidget | None = None) -> None:
        r = self.boundingRect()
        fill = QColor(self.color)
        fill.setAlpha(38)
        painter.setPen(QPen(theme.SELECTED if self.isSelected() else self.color.darker(110),
                            1.5))
        painter.setBrush(fill)
        painter.drawRoundedRect(r, 6, 6)
        head = QColor(self.color)
        head.setAlpha(110)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(head)
        path = QPainterPath()
        path.addRoundedRect(QRectF(0, 0, self.w, self.TITLE), 6, 6)
        path.addRect(QRectF(0, self.TITLE - 6, self.w, 6))
        painter.drawPath(path.simplified())
        painter.setPen(theme.TEXT)
        painter.setFont(theme.ui_font(12, bold=True))
        painter.drawText(QRectF(10, 0, self.w - 20, self.TITLE),
                         Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft, self.title)
        painter.setPen(QPen(theme.TEXT_DIM, 1.2))
        for d in (5, 10):
            painter.drawLine(QPointF(self.w - d, self.h - 2), QPointF(self.w - 2, self.h - d))

    def contains_rect(self) -> QRectF:
        return QRectF(self.x(), self.y(), self.w, self.h)

    def mousePressEvent(self, event: QGraphicsSceneMouseEvent) -> None:  # noqa: N802
        p = event.pos()
        if p.x() > self.w - 14 and p.y() > self.h - 14:
            self._resizing = True
            event.accept()
            return
        if p.y() > self.TITLE:
            event.ignore()  # the inside of a frame is canvas: rubber band, clicks below
            return
        area = self.contains_rect()
        self._carried = [(n, n.pos() - self.pos()) for n in self.ctl.node_items.values()
                         if area.contains(n.sceneBoundingRect().adjusted(6, 6, -6, -6))
                         and not n.isSelected()]
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QGraphicsSceneMouseEvent) -> None:  # noqa: N802
        if self._resizing:
            self.prepareGeometryChange()
            self.w = max(120.0, event.pos().x())
            self.h = max(60.0, event.pos().y())
            return
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QGraphicsSceneMouseEvent) -> None:  # noqa: N802
        self._resizing = False
        self._carried = []
        super().mouseReleaseEvent(event)

    def itemChange(self, change: QGraphicsItem.GraphicsItemChange, value: Any) -> Any:  # noqa: N802
        if change == QGraphicsItem.GraphicsItemChange.ItemPositionHasChanged:
            for item, offset in self._carried:
                item.setPos(self.pos() + offset)
        return super().itemChange(change, value)

    def mouseDoubleClickEvent(self, event: QGraphicsSceneMouseEvent) -> None:  # noqa: N802
        if event.pos().y() <= self.TITLE:
            self.ctl.rename_group(self)
        else:
            event.ignore()


def snap(v: float, grid: float = 10.0) -> float:
    return math.floor(v / grid + 0.5) * grid
