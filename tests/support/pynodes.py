"""Small pure-Python node types for the engine tests, the CLI tests and the engine benchmark.

Every node appends its node id to `RUNS` when it runs, so a test can count exactly which nodes
ran and in which order. Load them into a registry with `make_registry()`, or into the CLI with
`LOOM_EXTRA_NODES=tests.support.pynodes`.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

from engine.errors import NodeInputError
from engine.node import Input, Output, RunContext, node
from engine.paths import resolve_path
from engine.registry import Registry
from engine.types import ANY, BOOLEAN, FLOAT, INT, STRING, TYPES

# Socket types with a subtype chain: LEAF -> MID -> BASE (a LEAF may feed a BASE input).
T_BASE, T_MID, T_LEAF, T_OTHER = "TEST_BASE", "TEST_MID", "TEST_LEAF", "TEST_OTHER"
TYPES.register(T_BASE, "#101010")
TYPES.register(T_MID, "#202020", (T_BASE,))
TYPES.register(T_LEAF, "#303030", (T_MID,))
TYPES.register(T_OTHER, "#404040")

RUNS: list[str] = []
"""Node ids in the order their run() was called (all test nodes)."""
STEPS: list[tuple[str, int]] = []
"""(node id, step) for every step a `test.slow` node executed."""
STEP_REACHED: dict[str, threading.Event] = {}
"""Set by `test.slow` when it has finished step `stop_signal_at`; the node then waits until the
run is cancelled or `RESUME[node id]` is set (so "cancel after step k" is exact)."""
RESUME: dict[str, threading.Event] = {}
_lock = threading.Lock()


def reset() -> None:
    with _lock:
        RUNS.clear()
        STEPS.clear()
        STEP_REACHED.clear()
        RESUME.clear()


def _ran(ctx: RunContext) -> None:
    with _lock:
        RUNS.append(ctx.node_id)


@node("test.const", title="Test Constant", category="test", version="1.0.0",
      outputs=[Output("value", INT)])
class Const:
    """An integer constant."""

    value = Input(INT, default=0)

    def run(self, ctx: RunContext) -> int:
        _ran(ctx)
        return self.value


@node("test.constf", title="Test Float", category="test", version="1.0.0",
      outputs=[Output("value", FLOAT)])
class ConstF:
    value = Input(FLOAT, default=0.5)

    def run(self, ctx: RunContext) -> float:
        _ran(ctx)
        return self.value


@node("test.add", title="Test Add", category="test", version="1.0.0",
      outputs=[Output("sum", INT)])
class Add:
    """a + b on integers."""

    a = Input(INT, default=0)
    b = Input(INT, default=0)

    def run(self, ctx: RunContext) -> int:
        _ran(ctx)
        return self.a + self.b


@node("test.addf", title="Test Add Float", category="test", version="1.0.0",
      outputs=[Output("sum", FLOAT)])
class AddF:
    a = Input(FLOAT, default=0.0)
    b = Input(FLOAT, default=0.0)

    def run(self, ctx: RunContext) -> float:
        _ran(ctx)
        return self.a + self.b


@node("test.sum8", title="Test Sum of 8", category="test", version="1.0.0",
      outputs=[Output("sum", INT)])
class Sum8:
    """Sum of up to 8 optional integer inputs (for wide fan-in graphs)."""

    i0 = Input(INT, default=0)
    i1 = Input(INT, default=0)
    i2 = Input(INT, default=0)
    i3 = Input(INT, default=0)
    i4 = Input(INT, default=0)
    i5 = Input(INT, default=0)
    i6 = Input(INT, default=0)
    i7 = Input(INT, default=0)

    def run(self, ctx: RunContext) -> int:
        _ran(ctx)
        return (self.i0 + self.i1 + self.i2 + self.i3 + self.i4 + self.i5 + self.i6 + self.i7)


@node("test.pair", title="Test Pair", category="test", version="1.0.0",
      outputs=[Output("low", INT), Output("high", INT)])
class Pair:
    """Two outputs: x and x + 1 (returned as a tuple)."""

    x = Input(INT, default=0)

    def run(self, ctx: RunContext) -> tuple[int, int]:
        _ran(ctx)
        return self.x, self.x + 1


@node("test.show", title="Test Show", category="test", version="1.0.0", output_node=True)
class Show:
    """An output node: shows any value (in the run's ui results)."""

    value = Input(ANY)

    def run(self, ctx: RunContext) -> None:
        _ran(ctx)
        ctx.set_ui(text=repr(self.value))


@node("test.write", title="Test Write", category="test", version="1.0.0", output_node=True)
class Write:
    """An output node: writes str(value) to `name` in the output folder."""

    value = Input(ANY)
    name = Input(STRING, default="out.txt")

    def run(self, ctx: RunContext) -> None:
        _ran(ctx)
        if Path(self.name).name != self.name:
            raise NodeInputError("name", f"{self.name!r} must be a plain file name")
        out = Path(ctx.options.get("output_dir", "out"))
        out.mkdir(parents=True, exist_ok=True)
        path = out / self.name
        path.write_text(f"{self.value}\n", encoding="utf-8")
        ctx.set_ui(files=[str(path)])


@node("test.slow", title="Test Slow", category="test", version="1.0.0",
      outputs=[Output("value", INT)])
class Slow:
    """Counts to `steps`, reporting progress and checking for cancellation between steps."""

    x = Input(INT, default=0)
    steps = Input(INT, default=5, min=1, max=1000)
    delay = Input(FLOAT, default=0.0, min=0.0)
    stop_signal_at = Input(INT, default=0, description="set STEP_REACHED[node] after this step")

    def run(self, ctx: RunContext) -> int:
        _ran(ctx)
        reached = STEP_REACHED.get(ctx.node_id)
        for step in range(1, self.steps + 1):
            ctx.check_cancelled()
            if self.delay:
                time.sleep(self.delay)
            with _lock:
                STEPS.append((ctx.node_id, step))
            ctx.progress(step, self.steps)
            if reached is not None and step == self.stop_signal_at:
                resume = RESUME.setdefault(ctx.node_id, threading.Event())
                reached.set()
                deadline = time.monotonic() + 5.0
                while not (ctx.cancelled or resume.is_set()) and time.monotonic() < deadline:
                    time.sleep(0.001)
        return self.x + self.steps


@node("test.fail", title="Test Fail", category="test", version="1.0.0",
      outputs=[Output("value", INT)])
class Fail:
    """Always fails with `message` (a RuntimeError), or a NodeInputError on `x` when asked."""

    x = Input(INT, default=0)
    message = Input(STRING, default="boom")
    bad_input = Input(BOOLEAN, default=False)

    def run(self, ctx: RunContext) -> int:
        _ran(ctx)
        if self.bad_input:
            raise NodeInputError("x", self.message)
        raise RuntimeError(self.message)


@node("test.random", title="Test Random", category="test", version="1.0.0",
      outputs=[Output("value", INT)], deterministic=False)
class RandomInt:
    """A fresh random integer on every run (not deterministic: never served from the cache)."""

    def run(self, ctx: RunContext) -> int:
        _ran(ctx)
        return random.randrange(1 << 62)


@node("test.blob", title="Test Blob", category="test", version="1.0.0",
      outputs=[Output("data", ANY)])
class Blob:
    """A bytearray of `size` bytes (cache size tests); `work` seconds of pretend compute."""

    size = Input(INT, default=1024, min=0)
    tag = Input(INT, default=0)
    work = Input(FLOAT, default=0.0, min=0.0)

    def run(self, ctx: RunContext) -> bytearray:
        _ran(ctx)
        if self.work:
            time.sleep(self.work)
        return bytearray(self.size)


@node("test.read_file", title="Test Read File", category="test", version="1.0.0",
      outputs=[Output("text", STRING)])
class ReadFile:
    """The text of a file (its identity is part of the cache key, so an edit re-runs it)."""

    path = Input(STRING, default="", path=True, widget="file")

    def run(self, ctx: RunContext) -> str:
        _ran(ctx)
        return resolve_path(self.path, ctx.options).read_text(encoding="utf-8")


def _rename_amount(inputs: dict) -> dict:
    """1.0.0 called the input `amount` and counted in tens; 2.0.0 calls it `count`, in ones."""
    out = dict(inputs)
    if "amount" in out:
        out["count"] = out.pop("amount") * 10
    return out


@node("test.versioned", title="Test Versioned", category="test", version="2.1.0",
      outputs=[Output("value", INT)],
      migrations={"1.0.0": ("2.0.0", _rename_amount)})
class Versioned:
    """Version 2.1.0, with a migration from 1.0.0 (renamed and rescaled input)."""

    count = Input(INT, default=1, min=0, max=1000)

    def run(self, ctx: RunContext) -> int:
        _ran(ctx)
        return self.count


@node("test.everything", title="Test Everything", category="test/meta", version="1.2.3",
      outputs=[Output("out", T_LEAF, description="a leaf"), Output("n", INT)])
class Everything:
    """Every kind of input declaration.

    A second line of description."""

    count = Input(INT, default=3, min=1, max=10, step=1, description="how many")
    scale = Input(FLOAT, default=0.5, min=0.0, max=1.0, widget="slider")
    mode = Input(STRING, default="fast", choices=("fast", "slow"))
    text = Input(STRING, default="", multiline=True)
    flag = Input(BOOLEAN, default=False, label="Flag it")
    extra = Input(T_BASE, optional=True)
    source = Input(T_BASE)
    hinted = Input(INT, default=7, connection_only=True)

    def run(self, ctx: RunContext) -> tuple[str, int]:
        _ran(ctx)
        return "leaf", self.count


@node("test.make_leaf", title="Make Leaf", category="test", version="1.0.0",
      outputs=[Output("out", T_LEAF)])
class MakeLeaf:
    def run(self, ctx: RunContext) -> str:
        _ran(ctx)
        return "leaf"


@node("test.make_base", title="Make Base", category="test", version="1.0.0",
      outputs=[Output("out", T_BASE)])
class MakeBase:
    def run(self, ctx: RunContext) -> str:
        _ran(ctx)
        return "base"


@node("test.make_other", title="Make Other", category="test", version="1.0.0",
      outputs=[Output("out", T_OTHER)])
class MakeOther:
    def run(self, ctx: RunContext) -> str:
        _ran(ctx)
        return "other"


@node("test.take_base", title="Take Base", category="test", version="1.0.0",
      outputs=[Output("out", STRING)])
class TakeBase:
    value = Input(T_BASE)

    def run(self, ctx: RunContext) -> str:
        _ran(ctx)
        return f"took {self.value}"


@node("test.take_leaf", title="Take Leaf", category="test", version="1.0.0",
      outputs=[Output("out", STRING)])
class TakeLeaf:
    value = Input(T_LEAF)

    def run(self, ctx: RunContext) -> str:
        _ran(ctx)
        return f"took {self.value}"


@node("test.take_int", title="Take Int", category="test", version="1.0.0",
      outputs=[Output("out", INT)])
class TakeInt:
    value = Input(INT, default=0)

    def run(self, ctx: RunContext) -> int:
        _ran(ctx)
        return self.value


def make_registry() -> Registry:
    """A fresh registry with these test nodes and Loom's pure-Python primitives."""
    import sys

    import nodes.primitives

    registry = Registry()
    registry.register_module(sys.modules[__name__])
    registry.register_module(nodes.primitives)
    return registry
