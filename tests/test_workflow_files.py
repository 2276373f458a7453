"""Workflow files: round trips, atomic saves, migrations, PNG-embedded workflows, and errors
that name the file and the place."""

from __future__ import annotations

import json
import os
import stat

import pytest

from engine import workflow as wf
from engine.errors import ValidationError, WorkflowError
from engine.graph import Graph
from engine.workflow import (
    SCHEMA_VERSION,
    dumps,
    graph_from_document,
    graph_to_document,
    load_workflow,
    parse_document,
    read_document,
    save_workflow,
)
from tests.support import png
from tests.support.engine_helpers import registry_fixture  # noqa: F401


def _rich_graph(registry) -> Graph:
    g = Graph(registry)
    g.add_node("test.everything", "every", {
        "count": 9, "scale": 0.125, "mode": "slow", "text": "line 1\nline 2 — «ünïcode» ✓",
        "flag": True, "extra": None}, ui={"pos": [12.5, -3], "collapsed": True,
                                          "color": "#ff0000", "notes": {"a": [1, {"b": None}]}})
    g.add_node("test.make_base", "base", ui={"pos": [0, 0]})
    g.connect("base", "out", "every", "source")
    g.add_node("test.const", "seed", {"value": 2**62 + 1})
    g.connect("seed", "value", "every", "hinted")
    g.add_node("test.addf", "f", {"a": -1e-300})
    g.connect("every", "n", "f", "b")
    g.add_node("test.show", "show")
    g.connect("f", "sum", "show", "value")
    g.ui.update({"viewport": {"zoom": 1.25, "center": [10, 20]},
                 "groups": [{"title": "Group", "nodes": ["every", "seed"]}], "empty": {}})
    return g


def _snapshot(g: Graph) -> tuple:
    nodes = {nid: (n.type, n.version, n.values, n.ui) for nid, n in g.nodes.items()}
    return nodes, dict(g.links), g.ui


def test_round_trip_keeps_every_value_and_the_ui_exactly(registry, tmp_path) -> None:
    g = _rich_graph(registry)
    path = tmp_path / "wf.json"
    save_workflow(g, path)
    loaded = load_workflow(path, registry)
    assert _snapshot(loaded) == _snapshot(g)
    assert loaded.nodes["seed"].values["value"] == 2**62 + 1
    assert loaded.nodes["every"].values["extra"] is None
    assert type(loaded.nodes["f"].values["a"]) is float
    # and saving again gives the same bytes
    save_workflow(loaded, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["nodes"]["every"]["inputs"]["source"] == {"node": "base", "output": "out"}
    assert doc["nodes"]["every"]["version"] == "1.2.3"
    assert "ui" not in doc["nodes"]["show"]  # empty node ui is not written
    assert "line 2 — «ünïcode» ✓" in path.read_text(encoding="utf-8")  # readable, not escaped


def test_a_linked_input_is_saved_as_its_link(registry) -> None:
    # A constant hidden behind a link is not part of the document: one entry per input name.
    g = Graph(registry)
    g.add_node("test.const", "c")
    g.add_node("test.addf", "f", {"a": 1.5, "b": 1e300})
    g.connect("c", "value", "f", "b")
    doc = graph_to_document(g)
    assert doc["nodes"]["f"]["inputs"] == {"a": 1.5, "b": {"node": "c", "output": "value"}}
    loaded = graph_from_document(doc, registry)
    assert loaded.nodes["f"].values == {"a": 1.5, "b": 0.0}  # back to the default


def test_runtime_ui_keys_are_not_saved(registry, tmp_path) -> None:
    g = _rich_graph(registry)
    g.ui["_source"] = "/somewhere/else.json"
    doc = graph_to_document(g)
    assert "_source" not in doc["ui"] and doc["ui"]["viewport"] == {"zoom": 1.25,
                                                                   "center": [10, 20]}
    assert g.ui["_source"] == "/somewhere/else.json"  # the graph itself keeps it


def test_a_file_missing_values_gets_the_defaults(registry) -> None:
    doc = {"schema_version": 1, "nodes": {"v": {"type": "test.versioned", "version": "2.1.0"}}}
    g = graph_from_document(doc, registry)
    assert g.nodes["v"].values == {"count": 1} and g.nodes["v"].ui == {} and g.ui == {}


def test_save_is_atomic_when_the_replace_fails(registry, tmp_path, monkeypatch) -> None:
    path = tmp_path / "wf.json"
    save_workflow(_rich_graph(registry), path)
    old = path.read_bytes()
    g = _rich_graph(registry)
    g.set_value("seed", "value", 5)

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wf.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        save_workflow(g, path)
    assert path.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["wf.json"]  # no temp file left behind


def test_save_is_atomic_when_writing_fails_midway(registry, tmp_path, monkeypatch) -> None:
    path = tmp_path / "wf.json"
    save_workflow(_rich_graph(registry), path)
    old = path.read_bytes()

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(wf.os, "fsync", broken_fsync)  # after the text went to the temp file
    with pytest.raises(OSError, match="Input/output"):
        save_workflow(_rich_graph(registry), path)
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["wf.json"]


def test_save_is_atomic_when_the_document_cannot_be_written(registry, tmp_path) -> None:
    path = tmp_path / "wf.json"
    save_workflow(_rich_graph(registry), path)
    old = path.read_bytes()
    g = _rich_graph(registry)
    g.ui["bad"] = {1, 2}  # not JSON
    with pytest.raises(TypeError):
        save_workflow(g, path)
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["wf.json"]


def test_save_keeps_the_file_mode(registry, tmp_path) -> None:
    path = tmp_path / "wf.json"
    save_workflow(_rich_graph(registry), path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # like a plain open()
    os.chmod(path, 0o640)
    save_workflow(_rich_graph(registry), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# migrations ---------------------------------------------------------------------------------

SCHEMA0 = {
    "schema_version": 0,
    "nodes": [
        {"id": "c", "type": "test.const", "inputs": {"value": 4}, "pos": [1, 2]},
        {"id": "s", "type": "test.add", "version": "1.0.0", "inputs": {"b": 3}},
        {"id": "out", "type": "test.show"},
    ],
    "links": [["c", "value", "s", "a"], ["s", "sum", "out", "value"]],
    "ui": {"zoom": 2},
}


def test_migration_from_schema_0(registry, tmp_path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps(SCHEMA0), encoding="utf-8")
    g = load_workflow(path, registry)
    assert {nid: (n.type, n.values, n.ui) for nid, n in g.nodes.items()} == {
        "c": ("test.const", {"value": 4}, {"pos": [1, 2]}),
        "s": ("test.add", {"a": 0, "b": 3}, {}),
        "out": ("test.show", {}, {}),
    }
    assert {(e.src, e.output, e.dst, e.input) for e in g.edges} == {
        ("c", "value", "s", "a"), ("s", "sum", "out", "value")}
    assert g.ui == {"zoom": 2}
    assert json.loads(dumps(g))["schema_version"] == 1
    # "version" is the schema 0 spelling of the schema version
    doc = dict(SCHEMA0)
    doc["version"] = doc.pop("schema_version")
    assert set(graph_from_document(doc, registry).nodes) == {"c", "s", "out"}


@pytest.mark.parametrize(("change", "where", "message"), [
    ({"nodes": {"a": 1}}, "nodes", "schema 0 expects 'nodes' to be a list"),
    ({"nodes": [{"type": "x"}]}, "nodes[0]", "each node needs a string 'id'"),
    ({"links": [["c", "value", "s"]]}, "links[0]", "a link must be [src, output, dst, input]"),
    ({"links": [["c", "value", "zz", "a"]]}, "links[0]", "link into unknown node 'zz'"),
])
def test_bad_schema_0_documents(registry, change, where, message) -> None:
    doc = {**SCHEMA0, **change}
    with pytest.raises(WorkflowError) as info:
        graph_from_document(doc, registry, "old.json")
    assert str(info.value) == f"old.json: {where}: {message}"


def test_node_version_migration(registry) -> None:
    doc = {"schema_version": 1, "nodes": {
        "v": {"type": "test.versioned", "version": "1.0.0", "inputs": {"amount": 7}},
        "w": {"type": "test.versioned", "version": "2.0.0", "inputs": {"count": 7}},
    }}
    g = graph_from_document(doc, registry)
    assert (g.nodes["v"].version, g.nodes["v"].values) == ("2.1.0", {"count": 70})
    assert (g.nodes["w"].version, g.nodes["w"].values) == ("2.1.0", {"count": 7})
    saved = json.loads(dumps(g))
    assert saved["nodes"]["v"] == {"type": "test.versioned", "version": "2.1.0",
                                   "inputs": {"count": 70}}


@pytest.mark.parametrize(("node", "where", "message"), [
    ({"type": "test.versioned", "version": "2.2.0"}, "nodes.v",
     "node type test.versioned version 2.2.0 is newer than this Loom's 2.1.0; update Loom"),
    ({"type": "test.versioned", "version": "3.0.0"}, "nodes.v",
     "node type test.versioned version 3.0.0 is newer than this Loom's 2.1.0; update Loom"),
    ({"type": "test.versioned", "version": "0.9.0"}, "nodes.v",
     "node type test.versioned version 0.9.0 cannot be read by version 2.1.0 (no migration)"),
    ({"type": "test.versioned", "version": "2.0"}, "nodes.v", "invalid node version '2.0'"),
    ({"type": "test.versioned", "version": 2}, "nodes.v.version",
     "'version' must be a string like \"1.0.0\""),
    ({"type": "test.versioned", "version": "1.0.0", "inputs": {"amount": None}}, "nodes.v",
     "cannot migrate test.versioned from 1.0.0: unsupported operand type(s) for *: 'NoneType' "
     "and 'int'"),
])
def test_node_versions_that_cannot_be_read(registry, node, where, message) -> None:
    doc = {"schema_version": 1, "nodes": {"v": node}}
    with pytest.raises(WorkflowError) as info:
        graph_from_document(doc, registry, "wf.json")
    assert str(info.value) == f"wf.json: {where}: {message}"


def test_newer_schema_is_refused(registry, tmp_path) -> None:
    path = tmp_path / "new.json"
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1, "nodes": {}}))
    with pytest.raises(WorkflowError) as info:
        load_workflow(path, registry)
    assert str(info.value) == (f"{path}: schema_version: schema_version {SCHEMA_VERSION + 1} "
                               f"is newer than this Loom understands ({SCHEMA_VERSION}); "
                               "update Loom")
    assert info.value.path == str(path) and info.value.where == "schema_version"


# PNG ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [png.text, png.ztext, png.itext,
                                  lambda k, v: png.itext(k, v, compressed=False)])
def test_png_with_an_embedded_workflow_loads(registry, tmp_path, make) -> None:
    g = _rich_graph(registry)
    text = dumps(g)
    if make is png.text or make is png.ztext:
        text = json.dumps(graph_to_document(g))  # tEXt / zTXt hold latin-1: keep it ASCII
    path = tmp_path / "image.png"
    path.write_bytes(png.png_bytes([png.text("parameters", "other tool"), make("workflow", text)]))
    assert _snapshot(load_workflow(path, registry)) == _snapshot(g)


def test_png_written_by_pillow_loads(registry, tmp_path) -> None:
    Image = pytest.importorskip("PIL.Image")
    PngImagePlugin = pytest.importorskip("PIL.PngImagePlugin")
    info = PngImagePlugin.PngInfo()
    info.add_text("workflow", dumps(_rich_graph(registry)), zip=True)
    path = tmp_path / "pil.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    assert _snapshot(load_workflow(path, registry)) == _snapshot(_rich_graph(registry))


def test_png_without_workflow_or_truncated(registry, tmp_path) -> None:
    path = tmp_path / "plain.png"
    path.write_bytes(png.png_bytes([png.text("comment", "hello")]))
    with pytest.raises(WorkflowError, match="plain.png: this PNG carries no Loom workflow"):
        load_workflow(path, registry)
    data = png.png_bytes([png.text("workflow", "{}")])
    path.write_bytes(data[:40])
    with pytest.raises(WorkflowError, match="plain.png: truncated PNG chunk"):
        load_workflow(path, registry)
    path.write_bytes(png.png_bytes([(b"zTXt", b"workflow\0\0not zlib")]))
    with pytest.raises(WorkflowError, match="unreadable PNG text chunk"):
        load_workflow(path, registry)
    path.write_bytes(png.png_bytes([png.text("workflow", "{broken")]))
    with pytest.raises(WorkflowError, match="plain.png: line 1, column 2: invalid JSON"):
        load_workflow(path, registry)


# malformed files ------------------------------------------------------------------------------

def test_invalid_json_names_file_line_and_column(registry, tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "schema_version": 1,\n  "nodes": {,}\n}\n', encoding="utf-8")
    with pytest.raises(WorkflowError) as info:
        load_workflow(path, registry)
    assert str(info.value) == (f"{path}: line 3, column 13: invalid JSON: Expecting property "
                               "name enclosed in double quotes")
    assert info.value.where == "line 3, column 13"


@pytest.mark.parametrize(("text", "where", "message"), [
    ("[]", None, "a workflow must be a JSON object"),
    ('{"nodes": {}}', "schema_version", "missing or non-integer 'schema_version'"),
    ('{"schema_version": true, "nodes": {}}', "schema_version",
     "missing or non-integer 'schema_version'"),
    ('{"schema_version": -1, "nodes": {}}', "schema_version", "invalid schema_version -1"),
    ('{"schema_version": 1, "nodes": []}', "nodes", "'nodes' must be an object keyed by node id"),
    ('{"schema_version": 1, "nodes": {}, "ui": 3}', "ui", "'ui' must be an object"),
    ('{"schema_version": 1, "nodes": {"a": 1}}', "nodes.a", "a node must be an object"),
    ('{"schema_version": 1, "nodes": {"a": {}}}', "nodes.a.type", "node needs a string 'type'"),
    ('{"schema_version": 1, "nodes": {"a": {"type": "test.const", "inputs": []}}}',
     "nodes.a.inputs", "'inputs' must be an object keyed by input name"),
    ('{"schema_version": 1, "nodes": {"a": {"type": "test.const", "ui": []}}}',
     "nodes.a.ui", "'ui' must be an object"),
    ('{"schema_version": 1, "nodes": {"a": {"type": "test.const", "inputs": {"value": [1]}}}}',
     "nodes.a.inputs.value", "unsupported value of type list"),
    ('{"schema_version": 1, "nodes": {"a": {"type": "test.show", "inputs": '
     '{"value": {"node": "b"}}}}}', "nodes.a.inputs.value",
     'a link must be {"node": id, "output": name}'),
    ('{"schema_version": 1, "nodes": {"a b": {"type": "test.const"}}}', "nodes.a b",
     "node id 'a b' must be letters, digits, '_' or '-'"),
    ('{"schema_version": 1, "nodes": {}, "ui": ' + '[' * 150 + ']' * 150 + '}', "ui",
     "'ui' must be an object"),
    ('{"schema_version": 1, "nodes": {}, "ui": {"x":' + '[' * 150 + ']' * 150 + '}}', "ui",
     "nested more than 100 levels deep"),
    ('[' * 100000 + ']' * 100000, None, "invalid JSON: RecursionError"),
    ('{"schema_version": 1, "nodes": {"a": {"type": "test.const", "inputs": {"value": '
     + '9' * 5000 + '}}}}', None, "invalid JSON: ValueError"),
])
def test_malformed_documents(registry, text, where, message) -> None:
    with pytest.raises(WorkflowError) as info:
        graph_from_document(parse_document(text, "wf.json"), registry, "wf.json")
    assert info.value.where == where
    assert str(info.value) == ": ".join(p for p in ("wf.json", where, message) if p)


def test_invalid_graph_in_a_file_names_node_and_input(registry, tmp_path) -> None:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps({"schema_version": 1, "nodes": {
        "c": {"type": "test.const", "inputs": {"value": 1.5}},
        "x": {"type": "test.take_leaf", "inputs": {"value": {"node": "c", "output": "value"}}},
    }}))
    with pytest.raises(ValidationError) as info:
        load_workflow(path, registry)
    assert [(p.code, p.node_id, p.input) for p in info.value.problems] == [
        ("type_mismatch", "x", "value"), ("value_error", "c", "value")]
    g = load_workflow(path, registry, check=False)  # the editor opens it to let you fix it
    assert g.nodes["c"].values["value"] == 1.5


def test_unreadable_files(registry, tmp_path) -> None:
    with pytest.raises(WorkflowError, match="missing.json: cannot read file"):
        read_document(tmp_path / "missing.json")
    with pytest.raises(WorkflowError, match="cannot read file"):
        read_document(tmp_path)
    bad = tmp_path / "latin.json"
    bad.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(WorkflowError, match=r"latin.json: not UTF-8 text \(byte 7\)"):
        read_document(bad)
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(SCHEMA0).encode())
    assert read_document(bom)["schema_version"] == 0


def test_too_large_file(registry, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(wf, "MAX_FILE_BYTES", 10)
    path = tmp_path / "big.json"
    path.write_text(json.dumps(SCHEMA0))
    with pytest.raises(WorkflowError, match=r"big.json: file is too large \(\d+ bytes\)"):
        load_workflow(path, registry)


def test_bundled_example_workflows_parse(registry) -> None:
    from engine.paths import PROJECT_ROOT

    files = sorted((PROJECT_ROOT / "resources" / "workflows").rglob("*.json"))
    for f in files:
        doc = read_document(f)
        assert doc["schema_version"] == SCHEMA_VERSION, f
        # structure only: the diffusion node types are not in the test registry
        g = graph_from_document(doc, registry, str(f), check=False)
        assert len(g.nodes) == len(doc["nodes"])
