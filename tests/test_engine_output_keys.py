"""Cache keys beyond a node's inputs: outputs that depend on some inputs only (Output.inputs),
and files a node reads by name (the `cache_identity` hook). Pure Python nodes, exact run
counts."""

from __future__ import annotations

import pytest

from engine.executor import Executor
from engine.graph import Graph
from engine.node import Input, Output, RunContext, node
from engine.registry import Registry
from engine.types import INT, STRING

CALLS: dict[str, int] = {}


def count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1


@node("test.pair", title="Pair", category="test", version="1.0.0",
      outputs=[Output("a", INT, inputs=("x", "shared")), Output("b", INT, inputs=("y",
                                                                                    "shared")),
               Output("both", INT)])
class Pair:
    x = Input(INT, default=1)
    y = Input(INT, default=2)
    shared = Input(INT, default=0)

    def run(self, ctx: RunContext):
        count("pair")
        return self.x + self.shared, self.y + self.shared, self.x + self.y


@node("test.use", title="Use", category="test", version="1.0.0", outputs=[Output("v", INT)],
      output_node=True)
class Use:
    v = Input(INT)
    tag = Input(STRING, default="")

    def run(self, ctx: RunContext):
        count(f"use:{self.tag}")
        return self.v


@node("test.reads", title="Reads", category="test", version="1.0.0",
      outputs=[Output("text", STRING)], output_node=True)
class Reads:
    """Reads the file a name points to (as a prompt names an embedding)."""

    name = Input(STRING, default="f")

    @classmethod
    def cache_identity(cls, values, ctx):
        from engine.paths import file_identity

        if values["name"] == "raise":
            raise RuntimeError("cannot tell")
        return file_identity(ctx.resolve(values["name"]))

    def run(self, ctx: RunContext):
        count("reads")
        path = ctx.options["base_dir"] + "/" + self.name
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return ""


@pytest.fixture
def ex():
    reg = Registry()
    for cls in (Pair, Use, Reads):
        reg.register(cls)
    CALLS.clear()
    return Executor(reg), reg


def pair_graph(reg) -> Graph:
    g = Graph(reg)
    g.add_node("test.pair", "p")
    for out in ("a", "b", "both"):
        g.add_node("test.use", f"u{out}", values={"tag": out})
        g.connect("p", out, f"u{out}", "v")
    return g


def test_an_output_is_keyed_by_the_inputs_it_depends_on(ex):
    executor, reg = ex
    g = pair_graph(reg)
    r = executor.run(g)
    assert r.ok and r.outputs["ua"]["v"] == 1 and r.outputs["ub"]["v"] == 2
    g.set_value("p", "x", 5)
    r = executor.run(g)
    assert sorted(r.ran) == ["p", "ua", "uboth"]  # "b" does not depend on x: ub stays cached
    assert r.outputs["ua"]["v"] == 5 and r.outputs["ub"]["v"] == 2
    g.set_value("p", "y", 7)
    assert sorted(executor.run(g).ran) == ["p", "ub", "uboth"]
    g.set_value("p", "shared", 1)  # both depend on it
    r = executor.run(g)
    assert sorted(r.ran) == ["p", "ua", "ub", "uboth"]
    assert (r.outputs["ua"]["v"], r.outputs["ub"]["v"]) == (6, 8)
    assert executor.run(g).ran == []
    g.set_value("p", "x", 1)  # back to values seen before: "a" and "b" hit, "both" is new
    g.set_value("p", "shared", 0)
    assert sorted(executor.run(g).ran) == ["p", "uboth"]


def test_outputs_must_name_inputs_the_node_has():
    with pytest.raises(ValueError, match="unknown inputs"):
        @node("test.bad", title="Bad", category="test", version="1.0.0",
              outputs=[Output("a", INT, inputs=("nope",))])
        class Bad:
            x = Input(INT, default=1)

            def run(self, ctx):
                return 1


def test_cache_identity_folds_named_files_into_the_key(ex, tmp_path):
    executor, reg = ex
    (tmp_path / "f").write_text("one")
    g = Graph(reg)
    g.add_node("test.reads", "r")
    opts = {"base_dir": str(tmp_path)}
    assert executor.run(g, options=opts).outputs["r"]["text"] == "one"
    assert executor.run(g, options=opts).ran == []
    (tmp_path / "f").write_text("two!")  # another size: another identity
    r = executor.run(g, options=opts)
    assert r.ran == ["r"] and r.outputs["r"]["text"] == "two!"
    g.set_value("r", "name", "raise")  # a hook that fails: the node runs every time
    assert executor.run(g, options=opts).ran == ["r"]
    assert executor.run(g, options=opts).ran == ["r"]


def test_cache_identity_must_be_a_classmethod():
    with pytest.raises(TypeError, match="cache_identity must be a classmethod"):
        @node("test.bad2", title="Bad", category="test", version="1.0.0")
        class Bad:
            def cache_identity(self, values, ctx):
                return ()

            def run(self, ctx):
                return None
