"""Canvas items: nodes (with painted fields), sockets, edges and groups.

Items only draw and report user gestures to the scene (`GraphScene`), which turns them into
undo commands; they change when the scene applies graph events to them.
"""

from __future__ import annotations

import itertools
import math
import time
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
    QGraphicsSceneContextMenuEvent,
    QGraphicsSceneHoverEvent,
    QGraphicsSceneMouseEvent,
    QLineEdit,
    QPlainTextEdit,
    QStyleOptionGraphicsItem,
    QWidget,
)

from editor import fields, theme
from editor.field_widgets import F_ROW, F_SMALL, FieldWidget, _esc, clip_lines, widget_for
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
BADGE_H = 16.0  # the run-state badge above a node (timings, "blocked", "muted")
BUSY_W = 60.0  # the moving stripe of a running node that has nothing to count yet
DRAG_SLOP = 3.0  # scene units a press moves before it is a drag (a scrub)
_press_tokens = itertools.count(1)

_F_TITLE = theme.ui_font(10.0, bold=True)
_F_ROW = F_ROW
_F_SMALL = F_SMALL
_FM_SMALL = QFontMetricsF(_F_SMALL)
_FM_TITLE = QFontMetricsF(_F_TITLE)


@dataclass
class Row:
    kind: str  # "slot" (connection input and/or output), "field", "image", "text"
    y: float
    h: float
    input: Input | None = None
    output: Output | None = None
    field: FieldWidget | None = None


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
        self.setToolTip(socket_tooltip(node.spec, name, type_name, is_output))

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

    def contextMenuEvent(self, event: QGraphicsSceneContextMenuEvent) -> None:  # noqa: N802
        self.src.node.ctl.edge_menu(self, event.scenePos(), event.screenPos())
        event.accept()


def socket_tooltip(spec: NodeSpec | None, name: str, type_name: str, is_output: bool) -> str:
    """What a socket is for: its label and type, the port's description, whether it may stay
    unconnected."""
    port: Input | Output | None = None
    if spec is not None:
        port = next((o for o in spec.outputs if o.name == name), None) if is_output \
            else spec.inputs.get(name)
    label = fields.label_of(port) if isinstance(port, Input) else name.replace("_", " ")
    parts = [f"<b>{_esc(label)}</b> <span style='color:#8b8f96'>{_esc(type_name)} "
             f"{'output' if is_output else 'input'}</span>"]
    desc = getattr(port, "description", "") if port is not None else ""
    if desc:
        parts.append(_esc(desc))
    if isinstance(port, Input):
        if port.optional:
            parts.append("<i>optional</i>")
        elif port.connection_only:
            parts.append("<i>must be connected</i>")
        else:
            parts.append("<i>connect a value here, or set it in the field</i>")
    return "<br>".join(parts)


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
    constant input (each with its own socket: connecting hides the field), the last run's
    state. Each field is a widget object (editor.field_widgets) that lays itself out, paints
    itself and handles its own clicks; the node only routes events to it."""

    def __init__(self, ctl: GraphScene, node_id: str, type_id: str, spec: NodeSpec | None):
        super().__init__()
        self.ctl = ctl
        self.node_id = node_id
        self.type_id = type_id
        self.spec = spec
        self._ignored_shown: dict[str, str] = {}
        self.type_title = spec.title if spec else f"{type_id} (unknown)"
        self.title = self.type_title
        self.mode: str | None = None  # "bypass" or "mute" (engine.modes)
        self.rows: list[Row] = []
        self.in_sockets: dict[str, SocketItem] = {}
        self.out_sockets: dict[str, SocketItem] = {}
        self.widgets: dict[str, FieldWidget] = {}
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
        self.run_since: float | None = None
        self.preview: QImage | None = None
        self.images: list[QImage] = []
        self.text_result: str | None = None
        self._hover_row: Row | None = None
        self._hover_zone: str | None = None
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

    @property
    def loads(self) -> bool:
        """A node that loads models (its running time is mostly reading weights)."""
        return self.spec is not None and self.spec.category == "loaders"

    # layout --------------------------------------------------------------------------------
    def _make_sockets(self) -> None:
        if self.spec is None:
            return
        for inp in self.spec.inputs.values():
            self.in_sockets[inp.name] = SocketItem(self, inp.name, inp.type, False)
            if fields.has_field(inp):
                self.widgets[inp.name] = widget_for(self, inp)
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
        if isinstance(size, (list, tuple)) and size and isinstance(size[0], (int, float)) \
                and not isinstance(size[0], bool) and math.isfinite(size[0]):
            width = max(MIN_W, float(size[0]))
        color = ui.get("color") if isinstance(ui.get("color"), str) else None
        collapsed = bool(ui.get("collapsed", False))
        title = ui.get("title") if isinstance(ui.get("title"), str) and ui.get("title") \
            else self.type_title
        mode = ui.get("mode") if ui.get("mode") in ("bypass", "mute") else None
        if (title, mode) != (self.title, self.mode):
            self.title, self.mode = title, mode
            self._refresh_tooltip()
            self.update()
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
            conn = [i for i in spec.inputs.values() if i.name not in self.widgets]
            for k in range(max(len(conn), len(spec.outputs))):
                inp = conn[k] if k < len(conn) else None
                out = spec.outputs[k] if k < len(spec.outputs) else None
                rows.append(Row("slot", y, SLOT_H, inp, out))
                y += SLOT_H
            for name, w in self.widgets.items():
                h = fields.ROW_H if self.linked(name) else w.height()
                rows.append(Row("field", y, h, w.inp, field=w))
                y += h
        img = self.shown_image()
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

    def shown_image(self) -> QImage | None:
        return self.preview if self.state == "running" and self.preview is not None \
            else (self.images[0] if self.images else None)

    def update_edges(self) -> None:
        for s in itertools.chain(self.in_sockets.values(), self.out_sockets.values()):
            for e in s.edges:
                e.update_path()

    def boundingRect(self) -> QRectF:  # noqa: N802 - includes the status badge above
        return QRectF(-12, -BADGE_H - 6, self.width + 24, self.height + BADGE_H + 12)

    def itemChange(self, change: QGraphicsItem.GraphicsItemChange, value: Any) -> Any:  # noqa: N802
        if change == QGraphicsItem.GraphicsItemChange.ItemPositionHasChanged:
            self.update_edges()
        elif change == QGraphicsItem.GraphicsItemChange.ItemSelectedHasChanged:
            self.setZValue(1 if value else 0)
        return super().itemChange(change, value)

    def field_rect(self, row: Row) -> QRectF:
        return QRectF(PAD + 4, row.y + 2, self.width - 2 * PAD - 8, row.h - 4)

    def field_row(self, name: str) -> Row | None:
        return next((r for r in self.rows if r.kind == "field" and r.input.name == name), None)

    # painting ------------------------------------------------------------------------------
    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem,
              widget: QWidget | None = None) -> None:
        lod = option.levelOfDetailFromTransform(painter.worldTransform())
        body = QRectF(0, 0, self.width, self.height)
        title_color = QColor(self.color) if self.color else theme.NODE_TITLE
        border = self._border()
        painter.save()
        # muted, blocked and not-run nodes are veiled (opaque, so wires do not show through)
        veil = 150 if self.mode == "mute" else 100 if self.state in ("blocked", "not run") \
            else 0
        if lod < 0.35:  # far away: blocks only
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(theme.NODE_BODY)
            painter.drawRect(body)
            painter.setBrush(title_color if border is None else border[0])
            painter.drawRect(QRectF(0, 0, self.width, TITLE_H))
            if self.isSelected():
                painter.setPen(QPen(theme.SELECTED, 4))
                painter.setBrush(Qt.BrushStyle.NoBrush)
                painter.drawRect(body)
            if veil:
                painter.setPen(Qt.PenStyle.NoPen)
                painter.setBrush(QColor(theme.BG.red(), theme.BG.green(), theme.BG.blue(), veil))
                painter.drawRect(body)
            painter.restore()
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
        # progress (the state itself is in the badge above the node)
        if self.state == "running":
            painter.setBrush(theme.ACCENT)
            if self.progress is not None and self.progress[0] > 0:
                step, total = self.progress
                frac = step / total if total else 0
                painter.drawRect(QRectF(0, TITLE_H - 3, self.width * frac, 3))
            else:  # nothing to count yet (a model loads): a stripe that moves
                span = self.width + BUSY_W
                x = (time.monotonic() * 140.0) % span - BUSY_W
                painter.drawRect(QRectF(max(0.0, x), TITLE_H - 3,
                                        min(x + BUSY_W, self.width) - max(0.0, x), 3))
        # the title uses the full width: timings go to the badge above the node
        painter.setFont(_F_TITLE)
        painter.setPen(theme.TEXT)
        tr = self.title_rect()
        painter.drawText(tr, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                         self.shown_title())
        if not self.collapsed and lod >= 0.5:
            painter.setFont(_F_ROW)
            ignored: dict[str, str] | None = None  # found once per paint, not once per field
            for row in self.rows:
                if row.kind == "slot":
                    self._paint_slot(painter, row)
                elif row.kind == "field":
                    if ignored is None:
                        ignored = self.ignored()
                        if ignored != self._ignored_shown:
                            self._refresh_tooltip()
                    self._paint_field(painter, row, ignored)
                elif row.kind == "image":
                    self._paint_image(painter, row)
                elif row.kind == "text":
                    self._paint_text(painter, row)
        if self.mode == "bypass":
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(theme.BYPASS_TINT)
            painter.drawRoundedRect(body, RADIUS, RADIUS)
        if veil:
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(QColor(theme.BG.red(), theme.BG.green(), theme.BG.blue(), veil))
            painter.drawRoundedRect(body, RADIUS, RADIUS)
        # border
        painter.setBrush(Qt.BrushStyle.NoBrush)
        if self.isSelected():
            painter.setPen(QPen(theme.SELECTED, 2.0))
        elif border is not None:
            color, width, style = border
            painter.setPen(QPen(color, width, style))
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
        painter.restore()
        self._paint_badge(painter)

    def title_rect(self) -> QRectF:
        """Where the title is written: the title bar's width (the run's timing and state are
        in the badge above the node, so a long title is not cut when they show)."""
        return QRectF(PAD + 2, 0, self.width - 2 * PAD - 2, TITLE_H)

    def shown_title(self) -> str:
        return _FM_TITLE.elidedText(self.title, Qt.TextElideMode.ElideRight,
                                    self.title_rect().width())

    def _border(self) -> tuple[QColor, float, Qt.PenStyle] | None:
        solid = Qt.PenStyle.SolidLine
        if self.state == "error":
            return theme.STATUS_COLORS["error"], 2.5, solid
        if self.state == "running":
            return theme.STATUS_COLORS["running"], 2.0, solid
        if self.state == "blocked":
            return theme.STATUS_COLORS["blocked"], 1.5, Qt.PenStyle.DashLine
        if self.problem:
            return QColor("#b08a3c"), 2.0, solid
        return None

    def status_text(self) -> str:
        """What the badge above the node says of the last run (and of its mode)."""
        state = self.state
        text = ""
        if state == "running":
            if self.progress and not self.loads:
                text = f"{self.progress[0]}/{self.progress[1]}"
            else:  # a loader: its parts so far and how long it has been at it
                text = self.busy_text() + (f" · {self.progress[0]}/{self.progress[1]}"
                                           if self.progress else "")
        elif state in ("done", "cancelled") and self.elapsed is not None:
            text = _duration(self.elapsed) if state == "done" else \
                f"cancelled · {_duration(self.elapsed)}"
        elif state == "error":
            text = "failed" + (f" · {_duration(self.elapsed)}" if self.elapsed else "")
        elif state is not None and state != "queued":  # queued: the grey dot says it
            text = state
        mode = {"bypass": "bypassed", "mute": "muted"}.get(self.mode or "")
        return " · ".join(t for t in (mode, text) if t)

    def busy_text(self) -> str:
        since = time.monotonic() - self.run_since if self.run_since is not None else 0.0
        return f"{'loading' if self.loads else 'running'}… {since:.0f}s"

    def _paint_badge(self, painter: QPainter) -> None:
        """A small tag above the node's right end: a dot in the state's colour, then what it
        says (the timing, "blocked", "failed", "muted", ...)."""
        text = self.status_text()
        if not text and self.state is None:
            return
        painter.setFont(_F_SMALL)
        dot = 12.0 if self.state is not None else 0.0
        # room to spare: text drawn at a zoom below 100 % may come out wider than measured
        tw = (_FM_SMALL.horizontalAdvance(text) * 1.15 + 12 if text else 4) + dot
        r = QRectF(max(0.0, self.width - tw), -BADGE_H - 3, min(tw, self.width), BADGE_H)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(theme.BADGE)
        painter.drawRoundedRect(r, 4, 4)
        color = theme.STATUS_COLORS.get(self.state or "", theme.TEXT_DIM)
        if dot:
            painter.setBrush(color)
            painter.drawEllipse(QPointF(r.x() + 8, r.center().y()), 3.5, 3.5)
        if text:
            painter.setPen(color if self.state else theme.TEXT_DIM)
            tr = r.adjusted(dot + 3, 0, -4, 0)
            if tw > self.width:  # wider than the node: cut at its end
                text = _FM_SMALL.elidedText(text, Qt.TextElideMode.ElideRight, tr.width())
            painter.drawText(tr, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                             text)

    def _paint_slot(self, painter: QPainter, row: Row) -> None:
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

    def _input_error(self, name: str) -> bool:
        return self.state == "error" and self.error_input == name

    def ignored(self) -> dict[str, str]:
        """Inputs that have no effect as the node is wired and set (engine.node.ignored_inputs):
        drawn greyed out, with the reason in the tooltip."""
        n = self.node
        if self.spec is None or n is None:
            return {}
        return ignored_inputs(self.spec, n.values, set(self.ctl.graph.inputs_of(self.node_id)))

    def _paint_field(self, painter: QPainter, row: Row, ignored: dict[str, str]) -> None:
        w = row.field
        rect = self.field_rect(row)
        if self.linked(w.name):
            w.paint_linked(painter, rect)
            return
        painter.save()
        if w.name in ignored:
            painter.setOpacity(painter.opacity() * 0.35)
        try:
            w.paint(painter, rect, self._hover_row is row, self._input_error(w.name))
        finally:
            painter.restore()

    def _paint_image(self, painter: QPainter, row: Row) -> None:
        img = self.shown_image()
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
                         clip_lines(self.text_result or "", inner))

    # run state -----------------------------------------------------------------------------
    def set_run_state(self, state: str | None, elapsed: float | None = None,
                      error: str | None = None, error_input: str | None = None) -> None:
        """queued, running, cached, done, error, blocked (an input it needs failed), not run
        (cancelled before it started), cancelled; None clears the last run's marks."""
        self.state, self.elapsed = state, elapsed
        self.error, self.error_input = error, error_input
        if state != "running":
            self.progress = None
            self.run_since = None
        else:
            self.run_since = time.monotonic()
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
        parts = [f"<b>{_esc(self.title)}</b> <span style='color:#8b8f96'>{self.node_id} · "
                 f"{self.type_id}</span>"]
        if self.spec and self.spec.description:
            parts.append(_esc(self.spec.description.split("\n\n")[0]))
        if self.mode == "bypass":
            parts.append("<i>Bypassed: its input goes straight to its output (Ctrl+B)</i>")
        elif self.mode == "mute":
            parts.append("<i>Muted: it does not run, nor what needs it (Ctrl+M)</i>")
        if self.state == "error" and self.error:
            parts.append(f"<span style='color:#ef5350'><b>Error:</b> {_esc(self.error)}</span>")
        elif self.state == "blocked":
            parts.append(f"<span style='color:#9aa0a8'>{_esc(self.error or 'blocked')}</span>")
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
        return row.field.zone_at(self.field_rect(row), pos) if row.field else "body"

    def _editable(self, row: Row | None) -> bool:
        return row is not None and row.kind == "field" and not self.linked(row.input.name)

    def hoverMoveEvent(self, event: QGraphicsSceneHoverEvent) -> None:  # noqa: N802
        row = self.row_at(event.pos())
        if row is not None and row.kind != "field":
            row = None
        zone = self.zone_at(row, event.pos()) if self._editable(row) else None
        if row is not self._hover_row or zone != self._hover_zone:
            changed_row = row is not self._hover_row
            self._hover_row, self._hover_zone = row, zone
            if row is not None:
                tip = next((z.tip for z in row.field.zones(self.field_rect(row))
                            if z.name == zone and z.tip), "")
                self.setToolTip(row.field.tooltip()
                                + (f"<br><b>{_esc(tip)}</b>" if tip else ""))
            else:
                self._refresh_tooltip()
            if changed_row:
                self.update()
        if self.isSelected() and self._in_grip(event.pos()):
            self.setCursor(Qt.CursorShape.SizeHorCursor)
        else:
            self.unsetCursor()

    def hoverLeaveEvent(self, event: QGraphicsSceneHoverEvent) -> None:  # noqa: N802
        if self._hover_row is not None:
            self._hover_row = self._hover_zone = None
            self._refresh_tooltip()
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
        if self._editable(row):
            rect = self.field_rect(row)
            zone = row.field.zone_at(rect, pos)
            token = ("scrub", self.node_id, next(_press_tokens))
            self._press = {"row": row, "zone": zone, "x": event.scenePos().x(),
                           "value": self.value(row.input.name), "moved": False, "token": token}
            row.field.press(zone, pos, rect, token)
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
        row = press["row"]
        dx = event.scenePos().x() - press["x"]
        if not press["moved"] and abs(dx) <= DRAG_SLOP and row.field.kind != "slider":
            return
        if row.field.drag(press["zone"], event.pos(), self.field_rect(row), dx,
                          press["value"], press["token"]):
            press["moved"] = True

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
        if not press["moved"]:
            press["row"].field.click(press["zone"], event.screenPos())

    def mouseDoubleClickEvent(self, event: QGraphicsSceneMouseEvent) -> None:  # noqa: N802
        row = self.row_at(event.pos())
        if self._editable(row):
            row.field.double_click(self.zone_at(row, event.pos()))
            return
        if event.pos().y() < TITLE_H:
            self.ctl.toggle_collapsed([self.node_id])
            return
        if row is not None and row.kind == "image":
            self.ctl.show_in_viewer(self.node_id)
            return
        super().mouseDoubleClickEvent(event)

    def contextMenuEvent(self, event: QGraphicsSceneContextMenuEvent) -> None:  # noqa: N802
        row = self.row_at(event.pos())
        field = row.field if self._editable(row) else None
        if not self.isSelected():
            self.ctl.clearSelection()
            self.setSelected(True)
        self.ctl.node_menu(self, event.screenPos(), field)
        event.accept()

    # inline editor -------------------------------------------------------------------------
    def open_editor(self, name: str) -> QWidget | None:
        """Edit one field with a real widget on top of it; Enter/focus-out commits, Esc
        cancels. Returns the widget (tests type into it)."""
        self.close_editor()
        row = self.field_row(name)
        if row is None or self.linked(name):
            return None
        field = row.field
        inp = field.inp
        value = self.value(name)
        rect = self.field_rect(row)
        multiline = field.multiline()
        if multiline:
            w: QWidget = _TextEditor(field.editor_text())
        else:
            w = _LineEditor(field.editor_text())
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


def _duration(seconds: float) -> str:
    return f"{seconds:.2f}s" if seconds < 60 else f"{seconds / 60:.1f}m"


def _claims_escape(widget: QWidget, event) -> bool:
    """Escape belongs to an open editor (it cancels the edit), not to the window's
    Escape shortcut (which cancels a run)."""
    from PySide6.QtCore import QEvent

    if event.type() == QEvent.Type.ShortcutOverride and event.key() == Qt.Key.Key_Escape:
        event.accept()
        return True
    return False


class _LineEditor(QLineEdit):
    committed = Signal(str)
    cancelled = Signal()

    def __init__(self, text: str):
        super().__init__(text)
        self.returnPressed.connect(lambda: self.committed.emit(self.text()))

    def event(self, event) -> bool:  # noqa: D102
        return _claims_escape(self, event) or super().event(event)

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

    def event(self, event) -> bool:  # noqa: D102
        return _claims_escape(self, event) or super().event(event)

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
