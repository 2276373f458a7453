"""Batch rendering in one process (engine/batch.py, `main.py batch`): sweep specs, items and
their order, file names, the manifest, failing items, resume, Ctrl-C, and the sharing of
prompt encodings and model loads across a sweep of the default workflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.api import DEFAULT_WORKFLOW, OverrideError, Session, apply_overrides
from engine.batch import (
    Batch,
    BatchError,
    BatchPlan,
    BatchProgress,
    Item,
    ItemResult,
    Manifest,
    StopSignal,
    Sweep,
    plan_batch,
    render_item,
    sweep_values,
)
from engine.graph import Graph
from engine.types import FLOAT, INT, STRING
from engine.workflow import read_document
from tests.support import pynodes

ROOT = Path(__file__).resolve().parent.parent


def _link(node: str, output: str) -> dict:
    return {"node": node, "output": output}


# a = const -> s = add(a, b) -> save = Save Text(prefix "v"); slow feeds a Save Text of its own
DOC = {"schema_version": 1, "nodes": {
    "a": {"type": "test.const", "inputs": {"value": 1}},
    "s": {"type": "test.add", "inputs": {"a": _link("a", "value"), "b": 0}},
    "save": {"type": "text.save", "inputs": {"value": _link("s", "sum"), "prefix": "v"}},
}}


@pytest.fixture
def session():
    pynodes.reset()
    s = Session(pynodes.make_registry())
    yield s
    s.executor.shutdown()


@pytest.fixture
def graph(session, tmp_path) -> Graph:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(DOC), encoding="utf-8")
    return session.load(path)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


# --- sweeps and items ---------------------------------------------------------------------------


def test_sweep_specs(tmp_path) -> None:
    assert sweep_values("1..5", INT) == ["1", "2", "3", "4", "5"]
    assert sweep_values("3..1", INT) == ["3", "2", "1"]
    assert sweep_values("0..10:5", INT) == ["0", "5", "10"]
    assert sweep_values("3..7:1.5", FLOAT) == ["3.0", "4.5", "6.0"]
    assert sweep_values("-1..1", INT) == ["-1", "0", "1"]
    assert sweep_values("3, 5,7", FLOAT) == ["3", "5", "7"]
    assert sweep_values("euler,ddim", STRING) == ["euler", "ddim"]
    assert sweep_values("1..5", STRING) == ["1..5"]  # a range only for numbers
    assert sweep_values('["a red circle, small", "b"]', STRING) == ["a red circle, small", "b"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle, small\n\n  a blue star \r\n", encoding="utf-8")
    assert sweep_values(f"@{prompts}", STRING) == ["a red circle, small", "a blue star"]
    with pytest.raises(BatchError, match="integer input needs an integer range"):
        sweep_values("1..2.5", INT)
    with pytest.raises(BatchError, match="step must be positive"):
        sweep_values("1..5:0", INT)
    with pytest.raises(BatchError, match="more than 100000"):
        sweep_values("1..1000000", INT)
    with pytest.raises(BatchError, match="cannot read the values file"):
        sweep_values(f"@{tmp_path / 'missing.txt'}", STRING)
    (tmp_path / "blank.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(BatchError, match="no non-blank line"):
        sweep_values(f"@{tmp_path / 'blank.txt'}", STRING)
    with pytest.raises(BatchError, match="not a JSON list"):
        sweep_values("[1, 2", INT)


def test_items_are_the_cross_product_and_zips_vary_together(graph) -> None:
    plan = plan_batch(graph, ["a.value=1..3", "s.b=10,20", "save.prefix=p,q"])
    assert plan.count == 12
    items = plan.items()
    assert [it.index for it in items] == list(range(12))
    assert items[0].values == {"a.value": "1", "s.b": "10", "save.prefix": "p"}
    assert items[5].values == {"a.value": "2", "s.b": "10", "save.prefix": "q"}
    assert items[11].values == {"a.value": "3", "s.b": "20", "save.prefix": "q"}

    zipped = plan_batch(graph, {"a.value": [1, 2, 3], "s.b": "10,20,30", "save.prefix": "p,q"},
                        zip=["a.value,s.b"])
    assert zipped.count == 6
    assert [(it.values["a.value"], it.values["s.b"]) for it in zipped.items()[:3:2]] == \
        [(1, "10"), (2, "20")]
    assert zipped.items()[5].values == {"a.value": 3, "s.b": "30", "save.prefix": "q"}
    assert graph.nodes["a"].values["value"] == 1  # the graph itself is left alone


@pytest.mark.parametrize(("sweeps", "zips", "message"), [
    (["nope.value=1"], [], "no node with id 'nope'"),
    (["save.value=1,2"], [], "takes a connection"),
    (["a.value"], [], "must be ID.INPUT=VALUES"),
    (["a.value=1,2", "a.value=3"], [], "'a.value' is swept twice"),
    (["a.value=1,2"], ["a.value,s.b"], "--zip names 's.b', which is not swept"),
    (["a.value=1,2", "s.b=1,2,3"], ["a.value,s.b"], "a.value has 2, s.b has 3"),
    (["a.value=1,2", "s.b=1,2"], ["a.value,s.b", "s.b,a.value"], "in two --zip groups"),
])
def test_bad_sweeps_are_refused(graph, sweeps, zips, message) -> None:
    with pytest.raises((BatchError, OverrideError), match=message):
        plan_batch(graph, sweeps, zips)


def test_order_puts_equal_upstream_values_together() -> None:
    session = Session()
    graph = session.load(DEFAULT_WORKFLOW)
    # given in the "wrong" order: seeds first, checkpoints last
    plan = BatchPlan(graph, [Sweep("noise.seed", (1, 2, 3)), Sweep("cfg.scale", (3.0, 5.0)),
                             Sweep("prompt.text", ("a", "b")),
                             Sweep("checkpoint.path", ("m1", "m2"))])
    weights = {axis[0]: plan.weight(axis) for axis in plan.axes}
    assert weights["checkpoint.path"] == 10  # every node re-runs for another checkpoint
    assert weights["prompt.text"] == 5  # prompt, cfg, sampler, decode, save
    assert weights["noise.seed"] == weights["cfg.scale"] == 4
    order = plan.ordered()
    assert len(order) == plan.count == 24
    key = [(it.values["checkpoint.path"], it.values["prompt.text"]) for it in order]
    # each checkpoint in one run, each prompt in one run within it
    assert key == [(m, p) for m in ("m1", "m2") for p in ("a", "b") for _ in range(6)]
    # equal weights keep the order given: seeds outside scales
    assert [(it.values["noise.seed"], it.values["cfg.scale"]) for it in order[:6]] == \
        [(s, c) for s in (1, 2, 3) for c in (3.0, 5.0)]


# --- running: files, manifest, failures, resume ------------------------------------------------


def test_batch_writes_named_files_and_a_manifest_and_goes_on_after_failures(graph,
                                                                             tmp_path) -> None:
    out = tmp_path / "out"
    plan = plan_batch(graph, {"a.value": [1, 2], "s.b": ["10", "x", "30"]})
    batch = Batch(plan, out)
    assert (batch.total, batch.done_before, len(batch.todo)) == (6, 0, 6)
    results = list(batch)
    assert [r.index for r in results] == [0, 1, 2, 3, 4, 5]
    assert [r.status for r in results] == ["ok", "error", "ok"] * 2
    assert "node 's' (test.add) input 'b': cannot read 'x' as INT" in results[1].error
    recs = records(out)
    assert [r.record() for r in results] == recs  # written as each item finished
    assert recs[2]["values"] == {"a.value": 1, "s.b": 30}  # parsed by the input's type
    assert recs[2]["files"] == ["v_item00002_00001.txt"]
    assert (out / "v_item00002_00001.txt").read_text() == "31\n"
    assert (out / "v_item00005_00001.txt").read_text() == "32\n"
    assert recs[1]["files"] == [] and recs[1]["status"] == "error"
    assert set(recs[0]) == {"index", "values", "status", "files", "time", "error", "worker",
                            "finished"}
    plan_file = json.loads((out / "batch.json").read_text())
    assert plan_file["items"] == 6 and plan_file["sweeps"] == {"a.value": [1, 2],
                                                                "s.b": ["10", "x", "30"]}


def test_resume_skips_finished_items_and_survives_a_partial_line(graph, tmp_path) -> None:
    out = tmp_path / "out"
    plan = plan_batch(graph, {"a.value": "1..4", "s.b": "0,x"})
    first = Batch(plan, out)
    done = []
    for r in first:
        done.append(r)
        if len(done) == 3:
            first.stop.request()  # Ctrl-C: stop after this item
    assert [r.index for r in done] == [0, 1, 2]
    with open(out / "manifest.jsonl", "ab") as f:
        f.write(b'{"index": 4, "values": {"a.val')  # a writer killed mid-line
    with pytest.raises(BatchError, match="already holds a batch.*--resume"):
        Batch(plan, out)
    pynodes.reset()
    again = Batch(plan_batch(graph, {"a.value": "1..4", "s.b": "0,x"}), out, resume=True)
    assert (again.done_before, len(again.todo)) == (2, 6)  # 0 and 2 ok; 1 failed: again
    rest = list(again)
    assert [r.index for r in rest] == [1, 3, 4, 5, 6, 7]
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # the partial line was cut off
    latest = Manifest(out).latest()
    assert sorted(latest) == list(range(8))
    assert [latest[i]["status"] for i in range(8)] == ["ok", "error"] * 4
    assert sorted(p.name for p in out.glob("v_item*")) == [
        f"v_item0000{i}_00001.txt" for i in (0, 2, 4, 6)]  # nothing written twice
    third = Batch(plan_batch(graph, {"a.value": "1..4", "s.b": "0,x"}), out, resume=True)
    assert [it.index for it in third.todo] == [1, 3, 5, 7]  # only the failed ones
    with pytest.raises(BatchError, match="holds a different batch"):
        Batch(plan_batch(graph, {"a.value": "1..5", "s.b": "0,x"}), out, resume=True)


def test_a_hard_stop_drops_the_item_being_rendered(session, tmp_path) -> None:
    g = Graph(session.registry)
    g.add_node("test.slow", "slow", {"steps": 200, "delay": 0.01})
    g.add_node("test.write", "w", {"name": "x.txt"})
    g.connect("slow", "value", "w", "value")
    stop = StopSignal()
    assert stop.request() == "after" and stop.soft.is_set() and not stop.hard.is_set()
    assert stop.request() == "now" and stop.hard.is_set()
    t0 = time.monotonic()
    assert render_item(session, g, Item(0, {"slow.x": 1}), tmp_path, stop=stop) is None
    assert time.monotonic() - t0 < 1.5  # cancelled, not run to the end (2 s)
    assert not (tmp_path / "x.txt").exists()


def test_progress_line() -> None:
    now = [100.0]
    p = BatchProgress(10, done_before=2, clock=lambda: now[0])
    assert p.line() == "batch: 2/10 items, 0 failed, 0.00 items/s, ? left"
    now[0] = 104.0
    p.add(ItemResult(0, {}, "ok"))
    p.add(ItemResult(1, {}, "error"))
    assert p.remaining == 6 and p.rate == 0.5
    assert p.line() == "batch: 4/10 items, 1 failed, 0.50 items/s, 12s left"


# --- the default workflow: sharing, embedded values -----------------------------------------


def test_a_sweep_encodes_each_prompt_once_and_loads_the_model_once(tmp_path) -> None:
    session = Session()
    graph = session.load(DEFAULT_WORKFLOW)
    apply_overrides(graph, session.registry, ["noise.batch=1", "scheduler.steps=2"])
    out = tmp_path / "out"
    results = list(session.batch(graph, {"noise.seed": [1, 2, 3],
                                         "prompt.text": ["a red circle", "a blue star"]}, out))
    assert all(r.ok for r in results), [r.error for r in results]
    ran = [n for r in results for n in r.ran]
    assert (ran.count("checkpoint"), ran.count("prompt"), ran.count("negative")) == (1, 2, 1)
    assert ran.count("sampler") == 6
    # prompts outermost (they re-run more of the graph), seeds inside
    assert [r.index for r in results] == [0, 2, 4, 1, 3, 5]
    png = out / "loom_item00003_00001.png"
    assert [f for r in results if r.index == 3 for f in r.files] == [png.name]
    doc = read_document(png)
    assert doc["ui"]["batch_item"] == {"index": 3,
                                       "values": {"noise.seed": 2, "prompt.text": "a blue star"}}
    assert doc["nodes"]["noise"]["inputs"]["seed"] == 2
    assert doc["nodes"]["prompt"]["inputs"]["text"] == "a blue star"
    assert doc["nodes"]["save"]["inputs"]["prefix"] == "loom"  # the workflow as it was
    assert doc["nodes"]["scheduler"]["inputs"]["steps"] == 2


# --- the command line ---------------------------------------------------------------------------


def loom(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, LOOM_EXTRA_NODES="tests.support.pynodes", PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture
def wf(tmp_path) -> Path:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(DOC), encoding="utf-8")
    return path


def test_cli_batch_exit_status(tmp_path, wf) -> None:
    out = tmp_path / "ok"
    proc = loom("batch", str(wf), "--sweep", "a.value=1..3", "--set", "s.b=100", "--out",
                str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(out / f"v_item0000{i}_00001.txt") for i in range(3)]
    assert [(out / f"v_item0000{i}_00001.txt").read_text() for i in range(3)] == \
        ["101\n", "102\n", "103\n"]
    assert "batch: 3 ok, 0 failed, 0 not run (of 3; 0 done before)" in proc.stderr

    bad = tmp_path / "bad"
    proc = loom("batch", str(wf), "--sweep", "a.value=1,oops", "--out", str(bad))
    assert proc.returncode == 1
    assert "error: item 1 (a.value='oops'): node 'a' (test.const) input 'value': cannot read " \
           "'oops' as INT" in proc.stderr
    assert [r["status"] for r in records(bad)] == ["ok", "error"]


@pytest.mark.parametrize(("args", "message"), [
    (["--sweep", "nope.value=1"], "no node with id 'nope'"),
    (["--sweep", "a.value=1,2", "--set", "a.value=3"], "a.value: both --set and --sweep"),
    (["--sweep", "a.value=1,2", "--workers", "2"], "more than one worker needs Ray (--ray)"),
    (["--sweep", "a.value=1,2", "--zip", "a.value,s.b"], "'s.b', which is not swept"),
    (["--sweep", "a.value=1,2", "--ray-env", "{oops", "--ray"], "--ray-env: cannot read"),
])
def test_cli_batch_bad_arguments_exit_2(tmp_path, wf, args, message) -> None:
    proc = loom("batch", str(wf), "--out", str(tmp_path / "out"), *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_cli_batch_refuses_a_broken_workflow_before_any_item(tmp_path) -> None:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps({"schema_version": 1, "nodes": {
        "save": {"type": "text.save", "inputs": {"prefix": "p"}}}}))
    proc = loom("batch", str(path), "--sweep", "save.prefix=a,b", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "node 'save' (text.save) input 'value'" in proc.stderr
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_cli_ctrl_c_stops_after_the_current_item_and_resume_finishes(tmp_path) -> None:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps({"schema_version": 1, "nodes": {
        "slow": {"type": "test.slow", "inputs": {"steps": 10, "delay": 0.05}},
        "save": {"type": "text.save", "inputs": {"value": _link("slow", "value"),
                                                  "prefix": "s"}}}}))
    out = tmp_path / "out"
    args = ["main.py", "batch", str(path), "--sweep", "slow.x=1..8", "--out", str(out)]
    env = dict(os.environ, LOOM_EXTRA_NODES="tests.support.pynodes")
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (manifest.exists() and manifest.read_text()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    assert "stopping after the items being rendered" in stderr
    first = records(out)
    assert 1 <= len(first) < 8 and all(r["status"] == "ok" for r in first)
    assert "Traceback" not in stderr

    resumed = loom("batch", str(path), "--sweep", "slow.x=1..8", "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {len(first)} of 8 items already done" in resumed.stderr
    recs = records(out)
    assert sorted(r["index"] for r in recs) == list(range(8))  # each item once
    assert sorted(p.name for p in out.glob("s_item*")) == [
        f"s_item0000{i}_00001.txt" for i in range(8)]


def test_validation_error_is_an_item_error(graph, tmp_path) -> None:
    # a prefix that Save Text's pre-run check refuses fails that item only
    results = list(Batch(plan_batch(graph, {"save.prefix": ["ok", "a/b"]}), tmp_path / "o"))
    assert [r.status for r in results] == ["ok", "error"]
    assert "node 'save' (text.save) input 'prefix'" in results[1].error


def test_batch_modules_load_neither_torch_nor_ray() -> None:
    # the engine layer stays light; Ray is imported only when a Ray batch starts
    code = ("import sys, engine.batch, engine.batch_ray; "
            "print(sorted(m for m in ('torch', 'ray', 'PySide6') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_api_batch_from_a_workflow_file(session, wf, tmp_path) -> None:
    from engine.api import batch

    out = tmp_path / "out"
    results = list(batch(wf, {"a.value": "1..2"}, out, sets=["s.b=5"], session=session))
    assert [(r.index, r.values, r.files) for r in results] == [
        (0, {"a.value": 1}, ["v_item00000_00001.txt"]),
        (1, {"a.value": 2}, ["v_item00001_00001.txt"])]
    assert (out / "v_item00001_00001.txt").read_text() == "7\n"
    with pytest.raises(BatchError, match="more than one worker needs Ray"):
        batch(wf, {"a.value": "1..2"}, tmp_path / "o2", session=session, workers=2)
