"""The graph model: edits, the events they emit, and the connections it refuses."""

from __future__ import annotations

import pytest

from engine.graph import Edge, Graph, GraphError, Link
from tests.support.engine_helpers import registry_fixture  # noqa: F401


def _events(g: Graph) -> list[tuple]:
    seen: list[tuple] = []
    g.subscribe(lambda e: seen.append((e.kind, e.node_id, e.input, e.edge, e.value)))
    return seen


def test_add_node_fills_defaults_and_emits(registry) -> None:
    g = Graph(registry)
    seen = _events(g)
    nid = g.add_node("test.add", values={"b": 5}, ui={"pos": [1, 2]})
    assert nid == "add"
    assert g.add_node("test.add") == "add_2" and g.add_node("test.add") == "add_3"
    n = g.node("add")
    assert (n.type, n.version, n.values, n.ui) == ("test.add", "1.0.0", {"a": 0, "b": 5},
                                                   {"pos": [1, 2]})
    # connection-only inputs get no constant, even when declared with a default
    assert "hinted" not in g.nodes[g.add_node("test.everything", "e")].values
    assert [s[:2] for s in seen] == [("node_added", "add"), ("node_added", "add_2"),
                                     ("node_added", "add_3"), ("node_added", "e")]


@pytest.mark.parametrize("bad_id", ["", "1abc", "a b", "a.b", "x\n", "é"])
def test_bad_and_duplicate_node_ids_are_refused(registry, bad_id) -> None:
    g = Graph(registry)
    with pytest.raises(GraphError, match="must be letters"):
        g.add_node("test.const", bad_id)
    g.add_node("test.const", "c")
    with pytest.raises(GraphError, match="already exists"):
        g.add_node("test.const", "c")
    with pytest.raises(GraphError, match="no node with id 'zz'"):
        g.node("zz")


def test_value_and_ui_events(registry) -> None:
    g = Graph(registry)
    g.add_node("test.const", "c")
    seen = _events(g)
    g.set_value("c", "value", 7)
    g.clear_value("c", "value")
    g.clear_value("c", "value")  # nothing to clear: no event
    g.set_ui("c", pos=[3, 4])
    assert seen == [("value_changed", "c", "value", None, 7),
                    ("value_changed", "c", "value", None, None),
                    ("ui_changed", "c", None, None, {"pos": [3, 4]})]
    assert g.nodes["c"].values == {} and g.nodes["c"].ui == {"pos": [3, 4]}


def test_edge_events_and_replacing_a_link(registry) -> None:
    g = Graph(registry)
    for nid in ("a", "b"):
        g.add_node("test.const", nid)
    g.add_node("test.add", "s")
    seen = _events(g)
    e1 = g.connect("a", "value", "s", "a")
    assert e1 == Edge("a", "value", "s", "a") and g.link("s", "a") == Link("a", "value")
    g.connect("b", "value", "s", "a")  # an input takes one link: the old one goes first
    assert [(k, edge) for k, _, _, edge, _ in seen] == [
        ("edge_added", Edge("a", "value", "s", "a")),
        ("edge_removed", Edge("a", "value", "s", "a")),
        ("edge_added", Edge("b", "value", "s", "a"))]
    assert g.disconnect("s", "a") == Edge("b", "value", "s", "a")
    assert g.disconnect("s", "a") is None
    assert g.edges == []


def test_removing_a_node_removes_its_edges_first(registry) -> None:
    g = Graph(registry)
    g.add_node("test.const", "a")
    g.add_node("test.add", "s")
    g.add_node("test.show", "out")
    g.connect("a", "value", "s", "a")
    g.connect("a", "value", "s", "b")
    g.connect("s", "sum", "out", "value")
    seen = _events(g)
    g.remove_node("s")
    kinds = [(k, n) for k, n, *_ in seen]
    assert kinds[-1] == ("node_removed", "s")
    assert sorted(kinds[:-1]) == [("edge_removed", "out"), ("edge_removed", "s"),
                                  ("edge_removed", "s")]
    assert {e for *_, e, _ in seen if e} == {Edge("a", "value", "s", "a"),
                                             Edge("a", "value", "s", "b"),
                                             Edge("s", "sum", "out", "value")}
    assert g.links == {} and set(g.nodes) == {"a", "out"}
    with pytest.raises(GraphError):
        g.remove_node("s")


def test_unsubscribe(registry) -> None:
    g = Graph(registry)
    seen: list = []
    unsubscribe = g.subscribe(seen.append)
    g.add_node("test.const", "a")
    unsubscribe()
    unsubscribe()  # twice is harmless
    g.add_node("test.const", "b")
    assert [e.node_id for e in seen] == ["a"]


def test_connect_refusals(registry) -> None:
    g = Graph(registry)
    g.add_node("test.const", "c")
    g.add_node("test.add", "a1")
    g.add_node("test.add", "a2")
    g.add_node("test.add", "a3")
    g.connect("c", "value", "a1", "a")
    g.connect("a1", "sum", "a2", "a")
    g.connect("a2", "sum", "a3", "a")
    seen = _events(g)
    cases = [
        (("a3", "sum", "a1", "b"), "would make a cycle"),
        (("a1", "sum", "a1", "b"), "cannot feed itself"),
        (("zz", "sum", "a1", "b"), "no node with id 'zz'"),
        (("c", "value", "zz", "a"), "no node with id 'zz'"),
        (("c", "nope", "a1", "b"), "has no output 'nope'"),
        (("c", "value", "a1", "nope"), "has no input 'nope'"),
    ]
    for args, message in cases:
        assert message in g.can_connect(*args)
        with pytest.raises(GraphError, match=message):
            g.connect(*args)
    assert seen == [] and len(g.links) == 3


def test_inputs_by_node_matches_inputs_of(registry) -> None:
    g = Graph(registry)
    g.add_node("test.const", "c")
    g.add_node("test.add", "s")
    g.add_node("test.show", "o")
    g.connect("c", "value", "s", "a")
    g.connect("c", "value", "s", "b")
    g.connect("s", "sum", "o", "value")
    by_node = g.inputs_by_node()
    for nid in g.nodes:
        assert by_node.get(nid, {}) == g.inputs_of(nid)
    assert [e.dst for e in g.dependants("c")] == ["s", "s"]


def test_copy_is_independent(registry) -> None:
    g = Graph(registry)
    g.add_node("test.const", "c", ui={"pos": [0, 0]})
    g.ui["viewport"] = {"zoom": 1}
    h = g.copy()
    h.set_value("c", "value", 9)
    h.nodes["c"].ui["pos"][0] = 5
    h.ui["viewport"]["zoom"] = 2
    h.add_node("test.const", "d")
    assert g.nodes["c"].values == {"value": 0} and g.nodes["c"].ui == {"pos": [0, 0]}
    assert g.ui == {"viewport": {"zoom": 1}} and "d" not in g.nodes


def test_copy_value_copies_json_like_data_deeply() -> None:
    from engine.graph import copy_value

    class Box:
        def __init__(self, items):
            self.items = items

    original = {"a": [1, {"b": [2.5, None, True, "s"]}], "t": (1, [2]), "box": Box([1])}
    clone = copy_value(original)
    assert clone["a"] == original["a"] and clone["a"] is not original["a"]
    assert clone["a"][1]["b"] is not original["a"][1]["b"]
    assert clone["t"] == (1, [2]) and clone["t"][1] is not original["t"][1]
    assert clone["box"] is not original["box"] and clone["box"].items == [1]

