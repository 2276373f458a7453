"""Field widgets: how one constant input looks and behaves on a node.

Each kind (number, slider, seed, toggle, choice, text, multi-line text, file, image, mask) is one
class that lays itself out (`zones`: the one place its geometry lives, read by painting and by
hit-testing alike), paints itself, and says what a click, a drag, a double-click and its context
menu do. `widget_for(item, inp)` picks the class from the input's declared `widget` (through
`fields.kind_of`); a new kind is one class and one entry in `WIDGETS`.

Widgets are painted by their node item (cheap for big graphs) and edited through short-lived
real widgets (a line edit, a menu, a file dialog) only while the user edits them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFontMetricsF, QPainter, QPen

from editor import fields, theme
from engine.node import Input

if TYPE_CHECKING:
    from editor.items import NodeItem

F_ROW = theme.ui_font(9.0)
F_SMALL = theme.ui_font(7.5)
FM_ROW = QFontMetricsF(F_ROW)
FM_SMALL = QFontMetricsF(F_SMALL)
LEFT = Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft
RIGHT = Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight
CENTER = Qt.AlignmentFlag.AlignCenter
INSET = 8.0  # text inset from the field's rounded edge
ARROW_W = 16.0  # the ‹ › step zones of a number
BUTTON_W = 22.0  # a small icon button (browse, dice, randomize toggle)


@dataclass
class Zone:
    """A clickable part of a field, in the node's coordinates."""
    name: str
    rect: QRectF
    tip: str = ""


@dataclass
class Action:
    """An entry of the field's part of the node's context menu."""
    text: str
    run: Callable[[], Any]
    checked: bool | None = None


class FieldWidget:
    """The base: a label on the left, the value on the right; a click types a new value."""

    kind = "text"
    hint = "click to type"

    def __init__(self, item: NodeItem, inp: Input):
        self.item = item
        self.inp = inp

    # model ----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.inp.name

    @property
    def value(self) -> Any:
        return self.item.value(self.inp.name)

    @property
    def label(self) -> str:
        return fields.label_of(self.inp)

    def set(self, value: Any, merge_key: Any = None) -> bool:
        return self.item.ctl.set_value(self.item.node_id, self.inp.name, value, merge_key)

    def shown_value(self) -> str:
        value = self.value
        return "" if value is None else fields.fmt(self.inp, value)

    # geometry -------------------------------------------------------------------------------
    def height(self) -> float:
        return fields.ROW_H

    def zones(self, rect: QRectF) -> list[Zone]:
        """The field's clickable parts, most specific first; "body" is the rest."""
        return [Zone("body", rect)]

    def zone_at(self, rect: QRectF, pos: QPointF) -> str:
        for z in self.zones(rect):
            if z.rect.contains(pos):
                return z.name
        return "body"

    def zone_rect(self, rect: QRectF, name: str) -> QRectF:
        return next((z.rect for z in self.zones(rect) if z.name == name), rect)

    # painting -------------------------------------------------------------------------------
    def paint(self, p: QPainter, rect: QRectF, hover: bool, error: bool) -> None:
        p.setPen(QPen(theme.STATUS_COLORS["error"], 1.2) if error else Qt.PenStyle.NoPen)
        p.setBrush(theme.FIELD_HOVER if hover else theme.FIELD)
        p.drawRoundedRect(rect, 5, 5)
        self.paint_content(p, rect, hover)

    def paint_linked(self, p: QPainter, rect: QRectF) -> None:
        """A connected input: its label only (the wire gives the value)."""
        p.setPen(theme.TEXT)
        p.drawText(rect.adjusted(2, 0, 0, 0), LEFT, self.label)

    def value_rect(self, rect: QRectF) -> QRectF:
        """Where the value goes: right of the label (which takes at most 55 %)."""
        inner = self.zone_rect(rect, "body").adjusted(INSET, 0, -INSET, 0)
        label_w = min(FM_ROW.horizontalAdvance(self.label) + 8, inner.width() * 0.55)
        return QRectF(inner.x() + label_w, inner.y(), inner.width() - label_w, inner.height())

    def paint_label(self, p: QPainter, rect: QRectF) -> None:
        inner = self.zone_rect(rect, "body").adjusted(INSET, 0, -INSET, 0)
        label_w = min(FM_ROW.horizontalAdvance(self.label) + 8, inner.width() * 0.55)
        p.setPen(theme.TEXT_DIM)
        p.drawText(QRectF(inner.x(), inner.y(), label_w, inner.height()), LEFT,
                   FM_ROW.elidedText(self.label, Qt.TextElideMode.ElideRight, label_w))

    def paint_content(self, p: QPainter, rect: QRectF, hover: bool) -> None:
        self.paint_label(p, rect)
        vr = self.value_rect(rect)
        p.setPen(theme.TEXT)
        p.drawText(vr, RIGHT, FM_ROW.elidedText(self.shown_value(), Qt.TextElideMode.ElideLeft,
                                                vr.width()))

    # interaction ----------------------------------------------------------------------------
    def press(self, zone: str, pos: QPointF, rect: QRectF, token: Any) -> None:
        """The mouse went down on `zone` (a drag may follow)."""

    def drag(self, zone: str, pos: QPointF, rect: QRectF, dx: float, start: Any,
             token: Any) -> bool:
        """The mouse moved `dx` scene units since the press; True when this is a drag."""
        return False

    def click(self, zone: str, screen_pos: QPointF) -> None:
        """A press and release without a drag."""
        self.item.open_editor(self.name)

    def double_click(self, zone: str) -> bool:
        """True when handled (otherwise the node treats it as a double-click on itself)."""
        return True

    def multiline(self) -> bool:
        return False

    def editor_text(self) -> str:
        value = self.value
        if value is None:
            return ""
        return str(value) if self.inp.type == "STRING" else fields.fmt(self.inp, value)

    def actions(self) -> list[Action]:
        """This field's entries in the node's context menu."""
        out = [Action(f"Edit {self.label}…", lambda: self.item.open_editor(self.name))]
        if self.inp.has_default and self.value != self.inp.default:
            out.append(Action(f"Reset {self.label} to {fields.fmt(self.inp, self.inp.default)}",
                              lambda: self.set(self.inp.default)))
        return out

    def tooltip(self) -> str:
        inp = self.inp
        desc = inp.description or self.label
        extra = []
        if inp.min is not None or inp.max is not None:
            extra.append(f"range {inp.min} … {inp.max}")
        if self.hint:
            extra.append(self.hint)
        return (f"<b>{_esc(self.label)}</b> ({inp.type})<br>{_esc(desc)}"
                + (f"<br><span style='color:#8b8f96'>{'; '.join(extra)}</span>"
                   if extra else ""))


class NumberField(FieldWidget):
    """‹ value ›: drag sideways to scrub, click the arrows to step, click the middle to type."""

    kind = "number"
    hint = "drag to scrub · click to type · ‹ › step"

    def zones(self, rect: QRectF) -> list[Zone]:
        return [Zone("dec", QRectF(rect.x(), rect.y(), ARROW_W, rect.height()), "one step less"),
                Zone("inc", QRectF(rect.right() - ARROW_W, rect.y(), ARROW_W, rect.height()),
                     "one step more"),
                Zone("body", rect.adjusted(ARROW_W, 0, -ARROW_W, 0))]

    def paint_content(self, p: QPainter, rect: QRectF, hover: bool) -> None:
        p.setPen(theme.TEXT_DIM if hover else QColor(0, 0, 0, 0))
        p.drawText(self.zone_rect(rect, "dec"), CENTER, "‹")
        p.drawText(self.zone_rect(rect, "inc"), CENTER, "›")
        self.paint_label(p, rect)
        vr = self.value_rect(rect)
        p.setPen(theme.TEXT)
        p.drawText(vr, RIGHT, FM_ROW.elidedText(self.shown_value(), Qt.TextElideMode.ElideLeft,
                                                vr.width()))

    def drag(self, zone: str, pos: QPointF, rect: QRectF, dx: float, start: Any,
             token: Any) -> bool:
        if zone not in ("body", "dec", "inc"):
            return False
        px = 4.0 if self.inp.type == "FLOAT" else 6.0
        self.set(fields.nudge(self.inp, start, round(dx / px)), merge_key=token)
        return True

    def click(self, zone: str, screen_pos: QPointF) -> None:
        if zone in ("dec", "inc"):
            self.set(fields.nudge(self.inp, self.value, -1 if zone == "dec" else 1))
        else:
            super().click(zone, screen_pos)


class SeedField(NumberField):
    """A number with a dice (new random seed) and an R toggle (a new seed after each run)."""

    kind = "seed"

    def randomized(self) -> bool:
        node = self.item.node
        return bool((node.ui.get("randomize") or {}).get(self.name)) if node else False

    def zones(self, rect: QRectF) -> list[Zone]:
        rand = QRectF(rect.right() - BUTTON_W, rect.y(), BUTTON_W, rect.height())
        dice = rand.translated(-BUTTON_W, 0)
        number = QRectF(rect.x(), rect.y(), dice.x() - rect.x(), rect.height())
        return [Zone("rand", rand, "randomize after each run"),
                Zone("dice", dice, "a new random seed now"),
                *super().zones(number)]

    def paint_content(self, p: QPainter, rect: QRectF, hover: bool) -> None:
        super().paint_content(p, rect, hover)
        dice, tog = self.zone_rect(rect, "dice"), self.zone_rect(rect, "rand")
        p.setPen(theme.TEXT_DIM)
        p.drawText(dice, CENTER, "⚄")
        on = self.randomized()
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(theme.ACCENT if on else QColor("#45484f"))
        p.drawRoundedRect(tog.adjusted(4, 5, -4, -5), 3, 3)
        p.setPen(QColor("#ffffff") if on else theme.TEXT_DIM)
        p.setFont(F_SMALL)
        p.drawText(tog, CENTER, "R")
        p.setFont(F_ROW)

    def click(self, zone: str, screen_pos: QPointF) -> None:
        if zone == "dice":
            self.item.ctl.randomize_seed(self.item.node_id, self.name)
        elif zone == "rand":
            self.item.ctl.toggle_randomize(self.item.node_id, self.name)
        else:
            super().click(zone, screen_pos)

    def actions(self) -> list[Action]:
        return [*super().actions(),
                Action("New random seed", lambda: self.item.ctl.randomize_seed(
                    self.item.node_id, self.name)),
                Action("Randomize after each run", lambda: self.item.ctl.toggle_randomize(
                    self.item.node_id, self.name), checked=self.randomized())]


class SliderField(FieldWidget):
    """A bar filled to the value: press or drag to set it, double-click to type."""

    kind = "slider"
    hint = "drag to set · double-click to type"

    def paint_content(self, p: QPainter, rect: QRectF, hover: bool) -> None:
        lo, hi = float(self.inp.min), float(self.inp.max)
        value = self.value
        frac = (float(value) - lo) / (hi - lo) if hi > lo and isinstance(value, (int, float)) \
            else 0.0
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(theme.FIELD_FILL)
        p.drawRoundedRect(QRectF(rect.x(), rect.y(), rect.width() * max(0.0, min(1.0, frac)),
                                 rect.height()), 5, 5)
        super().paint_content(p, rect, hover)

    def _slide(self, pos: QPointF, rect: QRectF, token: Any) -> None:
        inp = self.inp
        frac = max(0.0, min(1.0, (pos.x() - rect.x()) / max(rect.width(), 1.0)))
        value = inp.min + frac * (inp.max - inp.min)
        step = fields.step_of(inp)
        self.set(fields.clamp(inp, round(round(value / step) * step, 6)), merge_key=token)

    def press(self, zone: str, pos: QPointF, rect: QRectF, token: Any) -> None:
        self._slide(pos, rect, token)

    def drag(self, zone: str, pos: QPointF, rect: QRectF, dx: float, start: Any,
             token: Any) -> bool:
        self._slide(pos, rect, token)
        return True

    def click(self, zone: str, screen_pos: QPointF) -> None:
        pass  # the press already set the value

    def double_click(self, zone: str) -> bool:
        self.item.open_editor(self.name)
        return True


class BoolField(FieldWidget):
    """A switch: a click flips it."""

    kind = "bool"
    hint = "click to switch"

    def paint_content(self, p: QPainter, rect: QRectF, hover: bool) -> None:
        self.paint_label(p, rect)
        vr = self.value_rect(rect)
        on = bool(self.value)
        sw = QRectF(vr.right() - 28, vr.center().y() - 7.5, 28, 15)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(theme.ACCENT if on else QColor("#45484f"))
        p.drawRoundedRect(sw, 7.5, 7.5)
        p.setBrush(QColor("#f0f0f0"))
        p.drawEllipse(QPointF(sw.right() - 7.5 if on else sw.left() + 7.5, sw.center().y()),
                      5.5, 5.5)

    def click(self, zone: str, screen_pos: QPointF) -> None:
        self.set(not bool(self.value))

    def actions(self) -> list[Action]:
        return [Action(self.label, lambda: self.set(not bool(self.value)),
                       checked=bool(self.value))]


class ChoiceField(FieldWidget):
    """The value with a ▾: a click opens the list of choices."""

    kind = "choice"
    hint = "click to choose"

    def paint_content(self, p: QPainter, rect: QRectF, hover: bool) -> None:
        self.paint_label(p, rect)
        vr = self.value_rect(rect)
        p.setPen(theme.TEXT)
        p.drawText(vr.adjusted(0, 0, -14, 0), RIGHT, FM_ROW.elidedText(
            self.shown_value(), Qt.TextElideMode.ElideLeft, vr.width() - 14))
        p.setPen(theme.TEXT_DIM)
        p.drawText(QRectF(vr.right() - 10, vr.y(), 10, vr.height()), CENTER, "▾")

    def click(self, zone: str, screen_pos: QPointF) -> None:
        self.item.ctl.choose(self.item.node_id, self.inp, screen_pos)

    def actions(self) -> list[Action]:
        return [Action(f"{self.label}: {c}", lambda c=c: self.set(c), checked=c == self.value)
                for c in self.inp.choices or ()]


class MultilineField(FieldWidget):
    """A few lines of text under a small label; a click edits it in a text box."""

    kind = "multiline"

    def height(self) -> float:
        return fields.MULTILINE_H

    def multiline(self) -> bool:
        return True

    def paint_content(self, p: QPainter, rect: QRectF, hover: bool) -> None:
        inner = rect.adjusted(INSET, 0, -INSET, 0)
        p.setPen(theme.TEXT_DIM)
        p.setFont(F_SMALL)
        p.drawText(QRectF(inner.x(), rect.y() + 2, inner.width(), 13), LEFT, self.label)
        p.setFont(F_ROW)
        value = self.value
        p.setPen(theme.TEXT if value else theme.TEXT_DIM)
        box = QRectF(inner.x(), rect.y() + 16, inner.width(), rect.height() - 18)
        p.drawText(box, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop
                   | Qt.TextFlag.TextWordWrap, clip_lines(value or f"{self.label}…", box))


class FileField(FieldWidget):
    """A path (shortened from the left) and a browse button (…); a click on the path types
    one."""

    kind = "file"
    hint = "click to type a path · … to browse"

    def buttons(self) -> list[tuple[str, float, str, str]]:
        """(zone, width, glyph, tip) of the buttons at the right, rightmost first."""
        what = "folder" if self.kind == "folder" else "file"
        return [("browse", BUTTON_W, "…", f"choose a {what}")]

    def line(self, rect: QRectF) -> QRectF:
        """The row with the path and its buttons (the whole field here)."""
        return rect

    def zones(self, rect: QRectF) -> list[Zone]:
        line = self.line(rect)
        out, right = [], line.right()
        for name, width, _glyph, tip in self.buttons():
            out.append(Zone(name, QRectF(right - width, line.y(), width, line.height()), tip))
            right -= width
        out.append(Zone("body", QRectF(line.x(), line.y(), right - line.x(), line.height())))
        return out

    def shown_value(self) -> str:
        return fields.short_path(str(self.value or ""), 40) or "(none)"

    def paint_content(self, p: QPainter, rect: QRectF, hover: bool) -> None:
        self.paint_label(p, rect)
        vr = self.value_rect(rect)
        p.setPen(theme.TEXT if self.value else theme.TEXT_DIM)
        p.drawText(vr, RIGHT, FM_ROW.elidedText(self.shown_value(), Qt.TextElideMode.ElideLeft,
                                                vr.width()))
        for name, _w, glyph, _tip in self.buttons():
            self.paint_button(p, self.zone_rect(rect, name), glyph, hover)

    def paint_button(self, p: QPainter, r: QRectF, glyph: str, hover: bool) -> None:
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor("#33363c") if hover else QColor("#2b2e33"))
        p.drawRoundedRect(r.adjusted(2, 3, -2, -3), 4, 4)
        p.setPen(theme.TEXT if hover else theme.TEXT_DIM)
        p.drawText(r, CENTER, glyph)

    def click(self, zone: str, screen_pos: QPointF) -> None:
        if zone == "browse":
            self.item.ctl.browse_path(self.item.node_id, self.inp, self.kind)
        else:
            super().click(zone, screen_pos)

    def actions(self) -> list[Action]:
        return [Action(f"Choose {self.label}…", lambda: self.click("browse", QPointF())),
                *super().actions()]


class FolderField(FileField):
    kind = "folder"


class ImageField(FileField):
    """An image file (its node's menu has "Edit mask…": paint a mask over it)."""

    kind = "image"


class MaskField(ImageField):
    """A mask file on one line, and under it a full-width "✎ Edit mask…" button that opens the
    mask editor (the inpainting workflow's main gesture, so it is big)."""

    kind = "mask"
    hint = "Edit mask…: paint it (white = repaint) · … to choose a file"

    def height(self) -> float:
        return 2 * fields.ROW_H

    def line(self, rect: QRectF) -> QRectF:
        return QRectF(rect.x(), rect.y(), rect.width(), fields.ROW_H - 4)

    def zones(self, rect: QRectF) -> list[Zone]:
        top = self.line(rect)
        paint = QRectF(rect.x() + 4, top.bottom() + 2, rect.width() - 8,
                       rect.bottom() - top.bottom() - 5)
        return [Zone("paint", paint, "paint the mask (white = repaint)"), *super().zones(rect)]

    def paint_content(self, p: QPainter, rect: QRectF, hover: bool) -> None:
        super().paint_content(p, rect, hover)
        r = self.zone_rect(rect, "paint")
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor("#36517a") if hover else QColor("#2f4363"))
        p.drawRoundedRect(r, 4, 4)
        p.setPen(theme.TEXT)
        p.drawText(r, CENTER, "✎  Edit mask…")

    def click(self, zone: str, screen_pos: QPointF) -> None:
        if zone == "paint":
            self.item.ctl.edit_mask(self.item.node_id, self.inp)
        else:
            super().click(zone, screen_pos)


WIDGETS: dict[str, type[FieldWidget]] = {
    "number": NumberField, "seed": SeedField, "slider": SliderField, "bool": BoolField,
    "choice": ChoiceField, "text": FieldWidget, "multiline": MultilineField,
    "file": FileField, "folder": FolderField, "image": ImageField, "mask": MaskField,
}


def widget_for(item: NodeItem, inp: Input) -> FieldWidget:
    """The widget for `inp`, chosen by its declared `widget` (and type, choices)."""
    kind = fields.kind_of(inp)
    if kind == "file" and inp.library:  # a model: editor.model_picker's field
        kind = "library"
    return WIDGETS.get(kind, FieldWidget)(item, inp)


def clip_lines(text: str, box: QRectF) -> str:
    lines = max(1, int(box.height() // FM_ROW.lineSpacing()))
    approx = int(box.width() / max(FM_ROW.averageCharWidth(), 1)) * lines
    return text if len(text) <= approx else text[:max(approx - 1, 1)] + "…"


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace(
        "\n", "<br>")


# A path naming a model (Input.library) also lists the model library's files: WIDGETS["library"]
import editor.model_picker  # noqa: E402,F401
