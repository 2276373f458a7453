"""Plain values and small pure-Python helpers: numbers, text, arithmetic, text output."""

from __future__ import annotations

from pathlib import Path

from engine.errors import NodeInputError
from engine.node import Input, Output, RunContext, node
from engine.types import BOOLEAN, FLOAT, INT, STRING

_INT64 = 2**63 - 1


@node("primitive.int", title="Integer", category="primitives", version="1.0.0",
      outputs=[Output("value", INT)])
class IntegerNode:
    """An integer constant to feed several inputs at once (e.g. one seed for many samplers)."""

    value = Input(INT, default=0, min=-_INT64, max=_INT64)

    def run(self, ctx: RunContext) -> int:
        return self.value


@node("primitive.float", title="Float", category="primitives", version="1.0.0",
      outputs=[Output("value", FLOAT)])
class FloatNode:
    """A number constant."""

    value = Input(FLOAT, default=0.0)

    def run(self, ctx: RunContext) -> float:
        return float(self.value)


@node("primitive.string", title="Text", category="primitives", version="1.0.0",
      outputs=[Output("value", STRING)])
class TextNode:
    """A text constant (e.g. one prompt shared by several encoders)."""

    value = Input(STRING, default="", multiline=True)

    def run(self, ctx: RunContext) -> str:
        return self.value


@node("primitive.bool", title="Boolean", category="primitives", version="1.0.0",
      outputs=[Output("value", BOOLEAN)])
class BooleanNode:
    """A true/false constant."""

    value = Input(BOOLEAN, default=False)

    def run(self, ctx: RunContext) -> bool:
        return self.value


@node("math.arithmetic", title="Arithmetic", category="primitives", version="1.0.0",
      outputs=[Output("result", FLOAT)])
class ArithmeticNode:
    """a <op> b on numbers."""

    a = Input(FLOAT, default=0.0)
    b = Input(FLOAT, default=0.0)
    op = Input(STRING, default="add", choices=("add", "subtract", "multiply", "divide",
                                                "min", "max", "power"))

    def run(self, ctx: RunContext) -> float:
        a, b = float(self.a), float(self.b)
        if self.op == "divide" and b == 0:
            raise NodeInputError("b", "cannot divide by zero")
        return {
            "add": lambda: a + b, "subtract": lambda: a - b, "multiply": lambda: a * b,
            "divide": lambda: a / b, "min": lambda: min(a, b), "max": lambda: max(a, b),
            "power": lambda: a ** b,
        }[self.op]()


@node("text.join", title="Join Text", category="primitives", version="1.0.0",
      outputs=[Output("text", STRING)])
class JoinTextNode:
    """Join two texts with a separator (e.g. a subject and a style)."""

    a = Input(STRING, default="", multiline=True)
    b = Input(STRING, default="", multiline=True)
    separator = Input(STRING, default=", ")

    def run(self, ctx: RunContext) -> str:
        return self.separator.join(t for t in (self.a, self.b) if t)


@node("text.show", title="Show Text", category="primitives", version="1.0.0",
      output_node=True)
class ShowTextNode:
    """Show a value in the editor (and on the command line's stderr)."""

    value = Input("ANY")

    def run(self, ctx: RunContext) -> None:
        ctx.set_ui(text=str(self.value))


@node("text.save", title="Save Text", category="primitives", version="1.0.0",
      output_node=True)
class SaveTextNode:
    """Write a value as a numbered .txt file in the output folder."""

    value = Input("ANY")
    prefix = Input(STRING, default="loom")

    @classmethod
    def preflight(cls, values, ctx):
        """Before anything runs: a plain prefix, and an output folder that can be written."""
        from engine.preflight import file_output_problems

        return file_output_problems(values, ctx)

    def run(self, ctx: RunContext) -> None:
        # numbered after the highest existing file; the name is claimed atomically with the
        # complete file, never replacing or writing through anything (engine/files.py)
        from engine.files import check_prefix, write_numbered

        out_dir = Path(ctx.options.get("output_dir", "out"))
        why = check_prefix(self.prefix)
        if why is not None:
            raise NodeInputError("prefix", why)
        path = write_numbered(out_dir, self.prefix, ".txt", f"{self.value}\n")
        ctx.set_ui(files=[str(path)], text=str(self.value))
