"""Socket types and the rules for which output may feed which input.

Types are names. A value of type A may feed an input of type B when A == B, either side is ANY,
A is INT and B is FLOAT, or A was declared a subtype of B (transitively). The engine never looks
inside values: tensors, models and functions are opaque to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ANY = "ANY"
INT = "INT"
FLOAT = "FLOAT"
STRING = "STRING"
BOOLEAN = "BOOLEAN"

PRIMITIVES = (INT, FLOAT, STRING, BOOLEAN)


@dataclass(frozen=True)
class SocketType:
    name: str
    color: str = "#9aa0a6"
    parents: tuple[str, ...] = ()
    description: str = ""


@dataclass
class TypeRegistry:
    """All known socket types, with their colours (for the editor) and subtype links."""

    types: dict[str, SocketType] = field(default_factory=dict)

    def register(
        self, name: str, color: str = "#9aa0a6", parents: tuple[str, ...] = (),
        description: str = ""
    ) -> SocketType:
        existing = self.types.get(name)
        if existing is not None and (existing.parents, existing.color) != (tuple(parents), color):
            raise ValueError(f"socket type {name!r} is already registered differently")
        t = SocketType(name, color, tuple(parents), description)
        self.types[name] = t
        return t

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        stack = [name]
        while stack:
            cur = stack.pop()
            t = self.types.get(cur)
            for p in t.parents if t else ():
                if p not in seen:
                    seen.add(p)
                    stack.append(p)
        return seen

    def compatible(self, src: str, dst: str) -> bool:
        """May an output of type `src` feed an input of type `dst`?"""
        if src == dst or ANY in (src, dst):
            return True
        if src == INT and dst == FLOAT:
            return True
        return dst in self.ancestors(src)

    def color(self, name: str) -> str:
        t = self.types.get(name)
        return t.color if t else "#9aa0a6"


TYPES = TypeRegistry()
"""The process-wide type registry; node modules add their own types to it."""

for _name, _color in (
    (ANY, "#cfcfcf"),
    (INT, "#6cc3a0"),
    (FLOAT, "#8fd16a"),
    (STRING, "#e0c36b"),
    (BOOLEAN, "#c98fd1"),
):
    TYPES.register(_name, _color)


def compatible(src: str, dst: str) -> bool:
    return TYPES.compatible(src, dst)
