"""Paste reads the clipboard as a workflow file is read: schema and node-version migrations,
structural checks, links from outside the fragment dropped, unknown types named, garbage refused
with a reason in the status bar (offscreen Qt)."""

from __future__ import annotations

import json
import sys

import pytest
from PySide6.QtCore import QPointF
from PySide6.QtWidgets import QApplication

from editor import commands
from engine.node import Input, Output, RunContext, node
from engine.registry import Registry
from engine.types import FLOAT
from engine.validate import problems as find_problems
from engine.workflow import SCHEMA_VERSION, graph_from_document, read_fragment
from tests.test_editor_support import add, make_registry, snapshot, wire

pytest_plugins = ["tests.test_editor_support"]  # fixtures: window, make_window, ...


def _rename_factor(inputs: dict) -> dict:
    """1.0.0 called the input `factor`; 1.1.0 calls it `gain`."""
    out = dict(inputs)
    if "factor" in out:
        out["gain"] = out.pop("factor")
    return out


@node("edpaste.gain", title="Gain", category="edpaste", version="1.1.0",
      outputs=[Output("value", FLOAT)],
      migrations={"1.0.0": ("1.1.0", _rename_factor)})
class Gain:
    """value * gain; version 1.0.0 named `gain` `factor`."""

    value = Input(FLOAT, default=0.0)
    gain = Input(FLOAT, default=1.0)

    def run(self, ctx: RunContext) -> float:
        return self.value * self.gain


@pytest.fixture
def registry() -> Registry:
    """The editor tests' registry plus the versioned node above (overrides the shared one)."""
    r = make_registry()
    r.register_module(sys.modules[__name__])
    return r


def clipboard(nodes: dict, schema_version: int = SCHEMA_VERSION) -> str:
    return json.dumps({"schema_version": schema_version, "nodes": nodes, "loom_clipboard": 1})


def paste(window, text: str) -> list[str]:
    QApplication.clipboard().setText(text)
    return window.paste()


def test_paste_migrates_a_node_saved_by_an_older_version(window):
    text = clipboard({"g": {"type": "edpaste.gain", "version": "1.0.0",
                            "inputs": {"factor": 2.5, "value": 4.0},
                            "ui": {"pos": [10, 20]}}})
    add(window, "edpaste.gain", 0, 0)  # takes id "gain"; "g" is free, so it keeps its id
    start = window.doc.undo.count()
    ids = paste(window, text)
    assert ids == ["g"]
    n = window.doc.graph.nodes["g"]
    assert n.version == "1.1.0"
    assert n.values == {"value": 4.0, "gain": 2.5}  # the old name is gone, its value moved
    assert window.node_item("g").value("gain") == 2.5
    assert window.status_label.text() == "Pasted 1 node"
    assert window.doc.undo.count() == start + 1
    assert window.scene.selected_node_ids() == ["g"]
    # the same clipboard again: a new id, the same migrated values, offset like the first
    again = paste(window, text)
    assert again == ["g_2"]
    assert window.doc.graph.nodes["g_2"].values == {"value": 4.0, "gain": 2.5}
    assert window.scene.selected_node_ids() == ["g_2"]
    # saved, the pasted node is written in the current version under the new input name
    saved = json.loads(window.doc.to_text())["nodes"]["g"]
    assert saved["version"] == "1.1.0" and saved["inputs"] == {"value": 4.0, "gain": 2.5}


def test_paste_of_a_schema_0_fragment_is_migrated_too(window):
    text = json.dumps({"schema_version": 0, "nodes": [
        {"id": "a", "type": "primitive.float", "inputs": {"value": 3.0}, "pos": [0, 0]},
        {"id": "g", "type": "edpaste.gain", "version": "1.0.0", "inputs": {"factor": 5.0},
         "pos": [200, 50]},
    ], "links": [["a", "value", "g", "value"]]})
    ids = window.scene.paste_text(text, QPointF(1000, 1000))
    g = window.doc.graph
    assert sorted(ids) == ["a", "g"]
    assert g.nodes["g"].values["gain"] == 5.0 and g.nodes["g"].version == "1.1.0"
    assert g.link("g", "value").node == "a"
    assert g.nodes["a"].ui["pos"] == [1000, 1000] and g.nodes["g"].ui["pos"] == [1200, 1050]


@pytest.mark.parametrize(("text", "reason"), [
    ("not a workflow {", "invalid JSON"),
    ("[1, 2, 3]", "a workflow must be a JSON object"),
    ('{"nodes": {}}', "missing or non-integer 'schema_version'"),
    (clipboard({"x": {"type": "primitive.int"}}, SCHEMA_VERSION + 1),
     f"schema_version {SCHEMA_VERSION + 1} is newer than this Loom understands"),
    (clipboard({}), "the clipboard holds no nodes"),
    (clipboard({"x": 5}), "nodes.x: a node must be an object"),
    (clipboard({"bad id!": {"type": "primitive.int"}}), "must be letters, digits"),
    (clipboard({"g": {"type": "edpaste.gain", "version": "2.0.0"}}),
     "node type edpaste.gain version 2.0.0 is newer than this Loom's 1.1.0; update Loom"),
    (clipboard({"g": {"type": "edpaste.gain", "inputs": {"value": [1, 2]}}}),
     "nodes.g.inputs.value: unsupported value of type list"),
    (clipboard({"g": {"type": "primitive.int", "ui": {"pos": [0, 0]}, "inputs": {
        "value": {"node": "x"}}}}), 'a link must be {"node": id, "output": name}'),
])
def test_garbage_pastes_nothing_and_says_why(window, text, reason):
    add(window, "primitive.int", 0, 0)
    before, count = snapshot(window), window.doc.undo.count()
    assert paste(window, text) == []
    assert snapshot(window) == before and window.doc.undo.count() == count
    said = window.status_label.text()
    assert said.startswith("Nothing pasted: ") and reason in said, said


def test_a_link_from_outside_the_fragment_is_dropped_and_the_value_stays_default(window):
    text = clipboard({
        "g": {"type": "edpaste.gain", "inputs": {"value": {"node": "elsewhere",
                                                           "output": "value"}, "gain": 3.0}},
        "f": {"type": "primitive.float", "inputs": {"value": 2.0}},
        "h": {"type": "edpaste.gain", "inputs": {"value": {"node": "f", "output": "value"}}},
    })
    # a node called "elsewhere" in this window must not be linked to either
    window.doc.undo.push(commands.AddNode(window.doc.graph, "primitive.float", "elsewhere"))
    ids = paste(window, text)
    g = window.doc.graph
    assert sorted(ids) == ["f", "g", "h"]
    assert g.link("g", "value") is None
    assert g.nodes["g"].values == {"value": 0.0, "gain": 3.0}
    assert g.link("h", "value").node == "f"  # a link inside the fragment is kept
    assert set(g.links) == {("h", "value")}
    assert window.status_label.text() == "Pasted 3 nodes"


def test_unknown_node_types_are_pasted_as_placeholders_and_named(window):
    text = clipboard({
        "a": {"type": "primitive.float", "inputs": {"value": 1.5}},
        "m": {"type": "custompack.magic", "version": "3.0.0",
              "inputs": {"strength": 0.7, "src": {"node": "a", "output": "value"}}},
        "n": {"type": "custompack.other", "inputs": {}},
        "o": {"type": "custompack.magic", "inputs": {}},
    })
    ids = paste(window, text)
    g = window.doc.graph
    assert sorted(ids) == ["a", "m", "n", "o"]
    # kept as written (values, version, links), as opening a file keeps them
    assert (g.nodes["m"].type, g.nodes["m"].version) == ("custompack.magic", "3.0.0")
    assert g.nodes["m"].values == {"strength": 0.7}
    assert g.link("m", "src").node == "a"
    assert window.node_item("m").title == "custompack.magic (unknown)"
    said = window.status_label.text()
    assert said == ("Pasted 4 nodes; unknown node types custompack.magic, custompack.other "
                    "kept as placeholders (they cannot run here)")
    # validation lists them, as for an opened file
    assert {p.node_id for p in find_problems(g, window.session.registry)
            if p.code == "unknown_node_type"} == {"m", "n", "o"}
    # and one undo removes the whole paste
    window.doc.undo.undo()
    assert not g.nodes


def test_copy_paste_round_trip_keeps_links_values_and_is_one_undo_step(make_window):
    w1, w2 = make_window(), make_window()
    a = add(w1, "primitive.float", 0, 0)
    b = add(w1, "edpaste.gain", 300, 40)
    wire(w1, a, "value", b, "value")
    w1.scene.set_value(b, "gain", 4.0)
    w1.select_all()
    assert w1.copy()
    ids = w2.paste()
    g = w2.doc.graph
    assert sorted(ids) == sorted([a, b])
    assert g.link(b, "value").node == a and g.nodes[b].values["gain"] == 4.0
    # relative positions survive the paste
    p_a, p_b = g.nodes[a].ui["pos"], g.nodes[b].ui["pos"]
    assert (p_b[0] - p_a[0], p_b[1] - p_a[1]) == (300, 40)
    assert w2.doc.undo.count() == 1
    # duplicating says so, and puts the copies beside the originals, clear of them
    w1.select_all()
    dup = w1.scene.duplicate_selected()
    assert len(dup) == 2 and w1.status_label.text() == "Duplicated 2 nodes"
    new_a = next(i for i in dup if w1.doc.graph.nodes[i].type == "primitive.float")
    right = max(i.x() + i.width for n, i in w1.scene.node_items.items() if n in (a, b))
    assert w1.doc.graph.nodes[new_a].ui["pos"] == [right + 40, 0]
    originals = [w1.scene.node_items[n].sceneBoundingRect() for n in (a, b)]
    assert not any(w1.scene.node_items[n].sceneBoundingRect().adjusted(12, 22, -12, -6)
                   .intersects(r) for n in dup for r in originals)


def test_read_fragment_matches_opening_the_same_document(registry):
    """The engine helper reads a fragment as a file is read, minus validation."""
    doc = {"schema_version": 1, "nodes": {
        "g": {"type": "edpaste.gain", "version": "1.0.0", "inputs": {"factor": 2.0}},
        "h": {"type": "edpaste.gain", "inputs": {"value": {"node": "g", "output": "value"}}}}}
    frag = read_fragment(json.dumps(doc), registry)
    full = graph_from_document(doc, registry, check=False)
    assert {k: (n.version, n.values) for k, n in frag.nodes.items()} == \
        {k: (n.version, n.values) for k, n in full.nodes.items()}
    assert frag.links == full.links
