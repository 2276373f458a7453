"""The command line: `main.py run` and `main.py nodes`, run as a user would (a subprocess at the
repository root) with the pure-Python test nodes registered through LOOM_EXTRA_NODES."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def loom(*args: str, extra: str = "tests.support.pynodes") -> subprocess.CompletedProcess:
    env = dict(os.environ, LOOM_EXTRA_NODES=extra, PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def _workflow(tmp_path: Path, nodes: dict, name: str = "wf.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"schema_version": 1, "nodes": nodes}), encoding="utf-8")
    return path


def _link(node: str, output: str) -> dict:
    return {"node": node, "output": output}


VALUES_WF = {
    "i": {"type": "test.const", "inputs": {"value": 1}},
    "f": {"type": "primitive.float", "inputs": {"value": 0.5}},
    "b": {"type": "primitive.bool", "inputs": {"value": False}},
    "s": {"type": "primitive.string", "inputs": {"value": "hello"}},
    "wi": {"type": "test.write", "inputs": {"value": _link("i", "value"), "name": "i.txt"}},
    "wf": {"type": "test.write", "inputs": {"value": _link("f", "value"), "name": "f.txt"}},
    "wb": {"type": "test.write", "inputs": {"value": _link("b", "value"), "name": "b.txt"}},
    "ws": {"type": "test.write", "inputs": {"value": _link("s", "value"), "name": "s.txt"}},
}


def test_run_prints_each_written_file(tmp_path) -> None:
    wf = _workflow(tmp_path, VALUES_WF)
    out = tmp_path / "out"
    proc = loom("run", str(wf), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    expected = [str(out / n) for n in ("b.txt", "f.txt", "i.txt", "s.txt")]
    assert sorted(proc.stdout.splitlines()) == expected  # one path per line, nothing else
    assert [Path(p).read_text() for p in expected] == ["False\n", "0.5\n", "1\n", "hello\n"]
    assert "wi: done in" in proc.stderr  # progress goes to stderr


def test_set_parses_values_by_declared_type(tmp_path) -> None:
    wf = _workflow(tmp_path, VALUES_WF)
    out = tmp_path / "out"
    proc = loom("run", str(wf), "--out", str(out), "--set", "i.value=0x10",
                "--set", "f.value=2.5", "--set", "b.value=yes", "--set", "s.value=a=b, c ",
                "--set", "wi.name=int.txt")
    assert proc.returncode == 0, proc.stderr
    assert sorted(Path(p).name for p in proc.stdout.splitlines()) == [
        "b.txt", "f.txt", "int.txt", "s.txt"]
    assert (out / "int.txt").read_text() == "16\n"
    assert (out / "f.txt").read_text() == "2.5\n"
    assert (out / "b.txt").read_text() == "True\n"
    assert (out / "s.txt").read_text() == "a=b, c \n"


def test_a_failing_node_exits_1_and_the_other_branch_finishes(tmp_path) -> None:
    wf = _workflow(tmp_path, {
        "c": {"type": "test.const", "inputs": {"value": 5}},
        "bad": {"type": "test.fail", "inputs": {"x": _link("c", "value"), "message": "kaput"}},
        "w1": {"type": "test.write", "inputs": {"value": _link("bad", "value"), "name": "1.txt"}},
        "w2": {"type": "test.write", "inputs": {"value": _link("c", "value"), "name": "2.txt"}},
    })
    out = tmp_path / "out"
    proc = loom("run", str(wf), "--out", str(out))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [str(out / "2.txt")]
    assert "error: node 'bad' (test.fail) failed: RuntimeError: kaput" in proc.stderr
    assert "Traceback" not in proc.stderr
    verbose = loom("run", str(wf), "--out", str(out), "-v")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


def test_an_invalid_workflow_exits_2_naming_node_and_input(tmp_path) -> None:
    wf = _workflow(tmp_path, {
        "c": {"type": "test.const", "inputs": {"value": "three"}},
        "v": {"type": "test.versioned", "inputs": {"count": 5000}},
        "w": {"type": "test.write", "inputs": {"value": _link("c", "value")}},
        "w2": {"type": "test.write", "inputs": {"value": _link("v", "value")}},
    })
    proc = loom("run", str(wf), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "node 'c' (test.const) input 'value': expected an integer, got str 'three'" \
        in proc.stderr
    assert "node 'v' (test.versioned) input 'count': 5000 is above the maximum 1000" \
        in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "i.value=abc"],
     "node 'i' (test.const) input 'value': cannot read 'abc' as INT"),
    (["--set", "i.value=1.5"], "node 'i' (test.const) input 'value': cannot read '1.5' as INT"),
    (["--set", "f.value=nan"], "node 'f' (primitive.float) input 'value': expected a finite"),
    (["--set", "b.value=maybe"], "node 'b' (primitive.bool) input 'value': cannot read"),
    (["--set", "nope.value=1"], "node 'nope' input 'value': no node with id 'nope'"),
    (["--set", "i.nope=1"], "node 'i' (test.const) input 'nope': has no input 'nope'"),
    (["--set", "wi.value=1"], "node 'wi' (test.write) input 'value': takes a connection"),
    (["--set", "i.value"], "'i.value' must be ID.INPUT=VALUE"),
    (["--set", "value=1"], "'value' must be written NODE_ID.INPUT"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_arguments_and_set_targets_exit_2(tmp_path, args, message) -> None:
    wf = _workflow(tmp_path, VALUES_WF)
    proc = loom("run", str(wf), "--out", str(tmp_path / "out"), *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out").exists()


def test_every_bad_set_is_reported_at_once(tmp_path) -> None:
    wf = _workflow(tmp_path, VALUES_WF)
    proc = loom("run", str(wf), "--set", "i.value=x", "--set", "f.value=y")
    assert proc.returncode == 2
    assert "2 problem(s)" in proc.stderr and "'i'" in proc.stderr and "'f'" in proc.stderr


def test_unreadable_workflow_and_bad_node_module_exit_2(tmp_path) -> None:
    proc = loom("run", str(tmp_path / "missing.json"))
    assert proc.returncode == 2 and "missing.json: cannot read file" in proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  oops\n}", encoding="utf-8")
    proc = loom("run", str(bad))
    assert proc.returncode == 2 and "bad.json: line 2, column 3: invalid JSON" in proc.stderr
    proc = loom("nodes", extra="tests.support.no_such_module")
    assert proc.returncode == 2
    assert "cannot import node module 'tests.support.no_such_module'" in proc.stderr


def test_nodes_lists_the_catalogue() -> None:
    proc = loom("nodes")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    i = lines.index("test.versioned  (Test Versioned, v2.1.0) -- Version 2.1.0, with a "
                    "migration from 1.0.0 (renamed and rescaled input).")
    assert lines[i + 1] == "    in  count: INT  [default 1, range 0..1000]"
    assert lines[i + 2] == "    out value: INT"
    assert "    in  mode: STRING  [default 'fast', choices fast|slow]" in lines
    assert any(line.startswith("primitive.int  (Integer, v1.0.0)") for line in lines)


def test_nodes_json_lists_ports_and_defaults() -> None:
    proc = loom("nodes", "--json")
    assert proc.returncode == 0, proc.stderr
    catalogue = {n["type"]: n for n in json.loads(proc.stdout)}
    every = catalogue["test.everything"]
    assert (every["title"], every["category"], every["version"]) == (
        "Test Everything", "test/meta", "1.2.3")
    inputs = {i["name"]: i for i in every["inputs"]}
    assert list(inputs) == ["count", "scale", "mode", "text", "flag", "extra", "source", "hinted"]
    assert inputs["count"] == {"name": "count", "type": "INT", "default": 3, "min": 1,
                               "max": 10, "step": 1, "description": "how many"}
    assert inputs["mode"]["choices"] == ["fast", "slow"] and inputs["mode"]["default"] == "fast"
    assert inputs["source"]["connection_only"] is True and "default" not in inputs["source"]
    assert every["outputs"] == [{"name": "out", "type": "TEST_LEAF", "description": "a leaf"},
                                {"name": "n", "type": "INT"}]
    assert catalogue["test.random"]["deterministic"] is False
    assert catalogue["test.write"]["output_node"] is True
    assert catalogue["primitive.int"]["inputs"][0]["default"] == 0


def test_help_and_unknown_subcommand_arguments() -> None:
    proc = loom("run", "--help")
    assert proc.returncode == 0 and "--set ID.INPUT=VALUE" in proc.stdout
    proc = loom("nodes", "--bogus")
    assert proc.returncode == 2


def test_bypassed_and_muted_nodes_saved_by_the_editor_are_honoured_headless(tmp_path):
    """The editor saves bypass / mute as node ui entries; `main.py run` must run what the
    editor would: a bypassed Add passes its input through, a muted writer does not write."""
    nodes = {
        "c": {"type": "test.const", "inputs": {"value": 5}},
        "add": {"type": "test.add", "inputs": {"a": _link("c", "value"), "b": 100},
                "ui": {"mode": "bypass"}},
        "w": {"type": "test.write", "inputs": {"value": _link("add", "sum"), "name": "w.txt"}},
        "m": {"type": "test.write", "inputs": {"value": _link("c", "value"), "name": "m.txt"},
              "ui": {"mode": "mute"}},
    }
    out = tmp_path / "out"
    r = loom("run", str(_workflow(tmp_path, nodes)), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "w.txt").read_text().strip() == "5"  # not 105: the Add was bypassed
    assert not (out / "m.txt").exists()
    # all muted: nothing to run, said plainly (exit 2), nothing written
    nodes["w"]["ui"] = {"mode": "mute"}
    r = loom("run", str(_workflow(tmp_path, nodes, "all_muted.json")), "--out", str(out))
    assert r.returncode == 2 and "nothing to run" in r.stderr
