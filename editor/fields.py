"""The values behind a node's fields: which kind an input is, formatting, stepping, parsing.

How each kind looks and behaves (its layout, painting, clicks) is its class in
editor.field_widgets, chosen by `kind_of`.
"""

from __future__ import annotations

import math
from typing import Any

from engine.node import Input
from engine.types import BOOLEAN, FLOAT, INT, STRING

ROW_H = 25.0
MULTILINE_H = 76.0
SEED_MAX = 2**32 - 1


def kind_of(inp: Input) -> str:
    """number, slider, seed, bool, choice, text, multiline, file, folder, image, mask."""
    if inp.choices is not None:
        return "choice"
    w = inp.widget
    if inp.type in (INT, FLOAT):
        if w == "seed":
            return "seed"
        if w == "slider" and inp.min is not None and inp.max is not None:
            return "slider"
        return "number"
    if inp.type == BOOLEAN:
        return "bool"
    if inp.type == STRING:
        if w in ("file", "folder", "image", "mask"):
            return w
        if inp.path:
            return "file"
        return "multiline" if inp.multiline else "text"
    return "socket"


def has_field(inp: Input) -> bool:
    return not inp.connection_only and kind_of(inp) != "socket"


def label_of(inp: Input) -> str:
    return inp.label or inp.name.replace("_", " ")


def step_of(inp: Input, value: Any = None) -> float:
    if inp.step:
        return inp.step
    if inp.type == INT:
        return 1
    lo, hi = inp.min, inp.max
    if lo is not None and hi is not None and math.isfinite(hi - lo) and hi - lo <= 1000:
        span = hi - lo
        return 10 ** math.floor(math.log10(span / 100)) if span > 0 else 0.01
    return 0.1


def clamp(inp: Input, value: Any) -> Any:
    if inp.type not in (INT, FLOAT) or isinstance(value, bool) \
            or not isinstance(value, (int, float)) or not math.isfinite(value):
        return value
    if inp.min is not None and value < inp.min:
        value = inp.min
    if inp.max is not None and value > inp.max:
        value = inp.max
    return int(round(value)) if inp.type == INT else float(value)


def nudge(inp: Input, value: Any, steps: float) -> Any:
    """`value` moved by `steps` steps (a scrub or an arrow click), clamped to the range."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        value = inp.default if isinstance(inp.default, (int, float)) else 0
    step = step_of(inp, value)
    new = value + steps * step
    if inp.type == FLOAT:
        decimals = max(0, -math.floor(math.log10(step))) + 1 if step < 1 else 0
        new = round(new, decimals + 2)
    return clamp(inp, new)


def fmt(inp: Input, value: Any) -> str:
    if value is None:
        return "—"
    if inp.type == FLOAT and isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != 0 and abs(value) < 0.001:
            return f"{value:.2e}"
        return f"{value:.4f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def parse(inp: Input, text: str) -> Any:
    """A typed value from what the user typed (ValueError if it cannot be read)."""
    if inp.type == STRING:
        return text
    if inp.type == FLOAT:
        # a little arithmetic is handy when typing numbers ("512*1.5"), but never eval
        return float(_simple_expr(text))
    if inp.type == INT:
        v = _simple_expr(text)
        if isinstance(v, float) and not v.is_integer():
            raise ValueError(f"{text!r} is not a whole number")
        return int(v)
    return inp.parse(text)


def _simple_expr(text: str) -> float | int:
    text = text.strip().replace(",", ".") if text.count(",") == 1 and "." not in text \
        else text.strip()
    try:
        return int(text, 0)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    for op in ("+", "*", "/"):
        left, sep, right = text.rpartition(op)
        if sep and left.strip():
            a, b = _simple_expr(left), _simple_expr(right)
            return a + b if op == "+" else a * b if op == "*" else a / b
    try:
        return int(text, 0)
    except ValueError:
        return float(text)


def short_path(value: str, limit: int = 28) -> str:
    if not value:
        return ""
    if len(value) <= limit:
        return value
    name = value.replace("\\", "/").rsplit("/", 1)[-1]
    return "…/" + name if len(name) < limit - 2 else "…" + name[-(limit - 1):]
