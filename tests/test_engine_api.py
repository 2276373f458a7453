"""The Python API for scripts: engine.api.Session (load, set, run, results, save)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.api import OverrideError, Session, apply_overrides, set_value
from engine.executor import CACHED, DONE
from engine.graph import Graph
from tests.support import pynodes
from tests.support.engine_helpers import registry_fixture  # noqa: F401


def _doc() -> dict:
    return {"schema_version": 1, "nodes": {
        "c": {"type": "test.const", "inputs": {"value": 2}},
        "s": {"type": "test.add", "inputs": {"a": {"node": "c", "output": "value"}, "b": 3}},
        "read": {"type": "test.read_file", "inputs": {"path": "data/prompt.txt"}},
        "w": {"type": "test.write", "inputs": {"value": {"node": "s", "output": "sum"},
                                               "name": "sum.txt"}},
        "show": {"type": "test.show", "inputs": {"value": {"node": "read", "output": "text"}}},
    }, "ui": {"viewport": {"zoom": 2}}}


@pytest.fixture
def session(registry):
    s = Session(registry)
    yield s
    s.executor.shutdown()


def test_load_set_run_results(session, tmp_path) -> None:
    wf_dir = tmp_path / "project"
    (wf_dir / "data").mkdir(parents=True)
    (wf_dir / "data" / "prompt.txt").write_text("a red circle", encoding="utf-8")
    path = wf_dir / "wf.json"
    path.write_text(json.dumps(_doc()), encoding="utf-8")

    g = session.load(path)
    assert g.ui["_source"] == str(path.resolve())
    out = tmp_path / "out"
    result = session.run(g, output_dir=out)
    assert result.ok and result.output("s") == 5
    # relative paths in a workflow resolve against the workflow's folder
    assert result.output("read") == "a red circle"
    assert result.files == [str(out.resolve() / "sum.txt")]
    assert (out / "sum.txt").read_text() == "5\n"
    assert result.ui["show"] == {"text": "'a red circle'"}

    pynodes.RUNS.clear()
    session.set(g, "s.b", 10)
    result = session.run(g, output_dir=out)
    assert sorted(pynodes.RUNS) == ["s", "w"]
    assert result.status == {"c": CACHED, "s": DONE, "w": DONE, "read": CACHED, "show": CACHED}
    assert (out / "sum.txt").read_text() == "12\n"

    pynodes.RUNS.clear()
    result = session.run(g, outputs=["s"], output_dir=out)
    assert pynodes.RUNS == [] and result.status == {"c": CACHED, "s": CACHED}

    # a different output folder is a different result for nodes that write files
    pynodes.RUNS.clear()
    session.run(g, outputs=["w"], output_dir=tmp_path / "elsewhere")
    assert pynodes.RUNS == ["w"] and (tmp_path / "elsewhere" / "sum.txt").exists()


def test_run_options_carry_the_workflow_without_private_ui(session, tmp_path) -> None:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(_doc()), encoding="utf-8")
    g = session.load(path, check=False)
    opts = session.options(g, tmp_path / "o", "cpu", {"seed_offset": 1})
    assert opts["device"] == "cpu" and opts["seed_offset"] == 1
    assert opts["output_dir"] == str((tmp_path / "o").resolve())
    assert opts["base_dir"] == str(tmp_path.resolve())
    doc = json.loads(opts["workflow_json"])
    assert doc["ui"] == {"viewport": {"zoom": 2}} and set(doc["nodes"]) == set(_doc()["nodes"])


def test_save_and_load_elsewhere_resolves_against_the_new_folder(session, tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, text in ((a, "from a"), (b, "from b")):
        (folder / "data").mkdir(parents=True)
        (folder / "data" / "prompt.txt").write_text(text, encoding="utf-8")
    (a / "wf.json").write_text(json.dumps(_doc()), encoding="utf-8")
    g = session.load(a / "wf.json")
    session.save(g, b / "wf.json")
    assert "_source" not in json.loads((b / "wf.json").read_text())["ui"]
    g2 = session.load(b / "wf.json")
    assert g2.ui["_source"] == str((b / "wf.json").resolve())
    assert session.run(g2, ["read"], output_dir=tmp_path / "o").output("read") == "from b"


def test_set_value_checks_and_parses(registry) -> None:
    g = Graph(registry)
    g.add_node("test.const", "c")
    g.add_node("test.add", "s")
    g.connect("c", "value", "s", "a")
    set_value(g, registry, "s.a", "41", parse=True)  # replaces the link with a constant
    assert g.link("s", "a") is None and g.nodes["s"].values["a"] == 41
    with pytest.raises(OverrideError) as info:
        set_value(g, registry, "s.a", "41")  # not parsed: a str is not an INT
    assert [(p.node_id, p.node_type, p.input) for p in info.value.problems] == [
        ("s", "test.add", "a")]
    with pytest.raises(OverrideError, match="above the maximum"):
        g.add_node("test.versioned", "v")
        set_value(g, registry, "v.count", 1001)
    with pytest.raises(OverrideError) as info:
        apply_overrides(g, registry, ["s.a=1", "s.zz=2", "q.a=3", "bad"])
    assert [(p.code, p.node_id, p.input) for p in info.value.problems] == [
        ("bad_override", "s", "zz"), ("bad_override", "q", "a"), ("bad_override", None, None)]
    assert g.nodes["s"].values["a"] == 1  # the good one was applied


def test_default_session_uses_loom_nodes() -> None:
    s = Session()
    try:
        assert "primitive.int" in s.registry and "test.const" not in s.registry
        # a session's cache shares the process's one memory budget (with the loaded models)
        from engine.memory import default_budget, default_budget_bytes

        assert s.cache.memory is default_budget()
        assert s.cache.budget_bytes == default_budget_bytes() > 0
        small = Session(cache_budget=1000)
        assert small.cache.budget_bytes == 1000 and small.cache.memory is not default_budget()
        small.executor.shutdown()
    finally:
        s.executor.shutdown()


def test_default_workflow_constant_points_into_resources() -> None:
    from engine.api import DEFAULT_WORKFLOW
    assert DEFAULT_WORKFLOW == Path(__file__).resolve().parent.parent / "resources" / \
        "workflows" / "default.json"
