"""Validation collects every problem at once, each naming node id, node type and input."""

from __future__ import annotations

import pytest

from engine.errors import Problem, ValidationError
from engine.executor import Executor
from engine.graph import Graph
from engine.validate import find_cycle, problems, validate
from tests.support.engine_helpers import executor_fixture, registry_fixture  # noqa: F401


def _where(found: list[Problem]) -> list[tuple]:
    return [(p.code, p.node_id, p.node_type, p.input) for p in found]


def _broken_graph(registry) -> Graph:
    g = Graph(registry)
    g.add_node("test.nope", "ghost")                                   # unknown type
    g.add_node("test.take_base", "tb")                                 # missing required
    g.add_node("test.make_other", "other")
    g.add_node("test.take_leaf", "tl")
    g.connect("other", "out", "tl", "value", check=False)              # type mismatch
    g.add_node("test.versioned", "v", {"count": 5000})                 # above max
    g.add_node("test.everything", "e", {"mode": "medium", "count": 0})  # choices + below min
    g.connect("other", "out", "e", "source", check=False)              # mismatch, BASE input
    g.add_node("test.const", "c", {"value": "text"})                   # wrong value type
    g.add_node("test.add", "s1")
    g.add_node("test.add", "s2")
    g.connect("s1", "sum", "s2", "a", check=False)
    g.connect("s2", "sum", "s1", "a", check=False)                     # cycle
    g.add_node("test.show", "out")
    g.connect("missing", "value", "out", "value", check=False)         # edge from missing node
    g.add_node("test.add", "s3")
    g.connect("c", "nope", "s3", "a", check=False)                     # unknown output
    g.connect("c", "value", "s3", "nope", check=False)                 # unknown input
    g.add_node("test.const", "extra", {"bogus": 1})                    # unknown constant
    return g


EXPECTED = [
    ("unknown_node_type", "ghost", "test.nope", None),
    ("type_mismatch", "tl", "test.take_leaf", "value"),
    ("type_mismatch", "e", "test.everything", "source"),
    ("missing_input", "tb", "test.take_base", "value"),
    ("out_of_range", "v", "test.versioned", "count"),
    ("not_in_choices", "e", "test.everything", "mode"),
    ("out_of_range", "e", "test.everything", "count"),
    ("value_error", "c", "test.const", "value"),
    ("unknown_input", "extra", "test.const", "bogus"),
    ("dangling_edge", "out", "test.show", "value"),
    ("dangling_edge", "s3", "test.add", "a"),
    ("dangling_edge", "s3", "test.add", "nope"),
]


def test_every_problem_is_reported_at_once(registry) -> None:
    found = problems(_broken_graph(registry), registry)
    got = _where(found)
    cycle = [p for p in got if p[0] == "cycle"]
    assert len(cycle) == 1 and cycle[0][1] in ("s1", "s2") and cycle[0][2] == "test.add"
    assert sorted(p for p in got if p[0] != "cycle") == sorted(EXPECTED)
    assert len(found) == len(EXPECTED) + 1


def test_messages_name_node_type_and_input(registry) -> None:
    with pytest.raises(ValidationError) as info:
        validate(_broken_graph(registry), registry)
    text = str(info.value)
    assert f"the graph has {len(EXPECTED) + 1} problem(s)" in text
    for line in [
        "node 'ghost' (test.nope): unknown node type 'test.nope'",
        "node 'tb' (test.take_base) input 'value': required input must be connected",
        "node 'tl' (test.take_leaf) input 'value': takes TEST_LEAF but is connected to "
        "'other.out' of type TEST_OTHER",
        "node 'v' (test.versioned) input 'count': 5000 is above the maximum 1000",
        "node 'e' (test.everything) input 'mode': 'medium' is not one of the choices: 'fast', "
        "'slow'",
        "node 'e' (test.everything) input 'count': 0 is below the minimum 1",
        "node 'c' (test.const) input 'value': expected an integer, got str 'text'",
        "node 'out' (test.show) input 'value': connected to missing node 'missing'",
        "node 's3' (test.add) input 'a': connected to unknown output 'nope' of node 'c' "
        "(test.const)",
        "node 's3' (test.add) input 'nope': edge into unknown input 'nope'",
    ]:
        assert f"  - {line}" in text, line
    assert "the graph has a cycle: s1 -> s2 -> s1" in text


def test_missing_required_value_and_edge_into_missing_node(registry) -> None:
    g = Graph(registry)
    g.add_node("test.const", "c")
    g.clear_value("c", "value")  # has a default: still fine
    g.add_node("test.take_int", "t")
    g.connect("c", "value", "gone", "value", check=False)
    assert _where(problems(g, registry)) == [("dangling_edge", "gone", None, "value")]

    from engine.node import Input, node

    @node("test.needs_value", title="x", category="x", version="1.0.0")
    class NeedsValue:
        n = Input("INT")

        def run(self, ctx):
            return None

    registry.register(NeedsValue)
    h = Graph(registry)
    h.add_node("test.needs_value", "nv")
    found = problems(h, registry)
    assert _where(found) == [("missing_input", "nv", "test.needs_value", "n")]
    assert found[0].message == "required input needs a value"


def test_constant_on_an_optional_connection_is_reported(registry) -> None:
    g = Graph(registry)
    g.add_node("test.make_base", "b")
    g.add_node("test.everything", "e", {"hinted": 3})
    g.connect("b", "out", "e", "source")
    assert _where(problems(g, registry)) == [("value_error", "e", "test.everything", "hinted")]
    g.add_node("test.const", "c")
    g.connect("c", "value", "e", "hinted")  # wired: the stale constant no longer matters
    assert problems(g, registry) == []


def test_cycle_is_found_in_data_flow_order(registry) -> None:
    g = Graph(registry)
    for nid in ("a", "b", "c"):
        g.add_node("test.add", nid)
    g.connect("a", "sum", "b", "a")
    g.connect("b", "sum", "c", "a")
    assert find_cycle(g) is None
    g.connect("c", "sum", "a", "a", check=False)
    assert find_cycle(g) == ["a", "b", "c"]


def test_runs_refuse_invalid_graphs(registry, executor: Executor) -> None:
    g = _broken_graph(registry)
    with pytest.raises(ValidationError) as info:
        executor.run(g, ["out", "e", "tb"])
    codes = {(p.code, p.node_id, p.input) for p in info.value.problems}
    # only the nodes the run needs are checked, but a cycle anywhere refuses the run
    assert codes == {("dangling_edge", "out", "value"), ("type_mismatch", "e", "source"),
                     ("not_in_choices", "e", "mode"), ("out_of_range", "e", "count"),
                     ("missing_input", "tb", "value"), ("cycle", "s1", None)}
    with pytest.raises(ValidationError, match="node 'c' \\(test.const\\) input 'value'"):
        executor.submit(g, ["c"])
    from tests.support import pynodes
    assert pynodes.RUNS == []
