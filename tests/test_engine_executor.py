"""The executor: ordering, what runs, the content-addressed cache, cancellation, failures,
events and the async API. Counts are exact: `pynodes.RUNS` lists every run() call."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from engine.cache import ResultCache
from engine.errors import LoomError, NodeError
from engine.executor import (
    CACHED,
    CANCELLED,
    DONE,
    ERROR,
    QUEUED,
    RUNNING,
    SKIPPED,
    Executor,
    NodeStatus,
    RunFinished,
    RunStarted,
)
from engine.graph import Graph
from tests.support import pynodes
from tests.support.engine_helpers import (  # noqa: F401
    Recorder,
    chain,
    executor_fixture,
    registry_fixture,
)

RUNS = pynodes.RUNS


def _diamond(registry) -> Graph:
    """c1, c2 -> s (a + b) -> show; plus an unrelated branch u1 -> u2 -> ushow."""
    g = Graph(registry)
    g.add_node("test.const", "c1", {"value": 2})
    g.add_node("test.const", "c2", {"value": 3})
    g.add_node("test.add", "s")
    g.connect("c1", "value", "s", "a")
    g.connect("c2", "value", "s", "b")
    g.add_node("test.show", "show")
    g.connect("s", "sum", "show", "value")
    g.add_node("test.const", "u1", {"value": 10})
    g.add_node("test.add", "u2", {"b": 1})
    g.connect("u1", "value", "u2", "a")
    g.add_node("test.show", "ushow")
    g.connect("u2", "sum", "ushow", "value")
    return g


def test_topological_order_and_results(registry, executor) -> None:
    g = chain(registry, 6, start=1)
    result = executor.run(g)
    assert RUNS == ["n0", "n1", "n2", "n3", "n4", "n5"]
    assert result.ok and result.output("n4") == 5 and result.output("n4", "sum") == 5
    assert result.ui == {"n5": {"text": "5"}}
    assert result.ran == ["n0", "n1", "n2", "n3", "n4", "n5"] and result.cached == []


def test_every_node_runs_after_its_inputs(registry, executor) -> None:
    # a wide, criss-crossed graph whose ids sort against the data flow
    g = Graph(registry)
    g.add_node("test.const", "z_src", {"value": 1})
    prev = ["z_src"]
    for level in range(4):
        cur = []
        for j in range(3):
            nid = f"{chr(ord('y') - level)}{j}"
            g.add_node("test.add", nid)
            g.connect(prev[j % len(prev)], "value" if prev == ["z_src"] else "sum", nid, "a")
            g.connect(prev[(j + 1) % len(prev)], "value" if prev == ["z_src"] else "sum",
                      nid, "b")
            cur.append(nid)
        prev = cur
    g.add_node("test.show", "a_out")
    g.connect(prev[0], "sum", "a_out", "value")
    result = executor.run(g)
    # v0 needs w0 and w1, which need all of x and y; v1 and v2 are not needed
    assert result.ok and len(RUNS) == 11 and "v1" not in RUNS
    pos = {nid: i for i, nid in enumerate(RUNS)}
    checked = 0
    for e in g.edges:
        if e.dst in pos:
            assert pos[e.src] < pos[e.dst], e
            checked += 1
    assert checked == 19
    assert result.output("v0") == 16  # each level doubles the value


def test_only_what_the_requested_outputs_need_runs(registry, executor) -> None:
    g = _diamond(registry)
    result = executor.run(g, ["show"])
    assert sorted(RUNS) == ["c1", "c2", "s", "show"]
    assert set(result.status) == {"c1", "c2", "s", "show"}
    RUNS.clear()
    executor.run(g, ["u2"])  # a target need not be an output node
    assert RUNS == ["u1", "u2"]
    RUNS.clear()
    result = executor.run(g)  # default: every output node
    assert RUNS == ["ushow"] and sorted(result.cached) == ["c1", "c2", "s", "show", "u1", "u2"]


def test_a_graph_without_output_nodes_is_refused(registry, executor) -> None:
    g = Graph(registry)
    g.add_node("test.const", "c")
    with pytest.raises(LoomError, match="no output node"):
        executor.run(g)
    with pytest.raises(LoomError, match="no node with id 'zz'"):
        executor.run(g, ["zz"])


def test_cache_hits_and_misses_after_each_kind_of_change(registry, executor) -> None:
    cache = executor.cache
    g = chain(registry, 5)  # n0 const -> n1 -> n2 -> n3 add -> n4 show
    result = executor.run(g)
    assert len(RUNS) == 5 and (cache.hits, cache.misses) == (0, 5) and len(cache) == 5
    assert result.output("n3") == 4

    RUNS.clear()  # nothing changed: the target is a hit, nothing below it is even looked up
    result = executor.run(g)
    assert RUNS == [] and (cache.hits, cache.misses) == (1, 5)
    assert result.status == dict.fromkeys(["n0", "n1", "n2", "n3", "n4"], CACHED)
    assert result.ui == {"n4": {"text": "4"}}  # ui results come back from the cache

    RUNS.clear()  # one value changed: that node and its dependants, nothing upstream
    g.set_value("n2", "b", 10)
    result = executor.run(g)
    assert RUNS == ["n2", "n3", "n4"] and (cache.hits, cache.misses) == (2, 8)
    assert result.status == {"n0": CACHED, "n1": CACHED, "n2": DONE, "n3": DONE, "n4": DONE}
    assert result.output("n3") == 13

    RUNS.clear()  # set to the same value: no change
    g.set_value("n2", "b", 10)
    executor.run(g)
    assert RUNS == [] and (cache.hits, cache.misses) == (3, 8)

    RUNS.clear()  # back to an earlier value: served from the cache, no run at all
    g.set_value("n2", "b", 1)
    result = executor.run(g)
    assert RUNS == [] and result.ui["n4"] == {"text": "4"} and (cache.hits, cache.misses) == (4, 8)
    assert "n3" not in result.outputs  # cached and not needed: not even fetched

    RUNS.clear()  # a change at the root re-runs the whole chain
    g.set_value("n0", "value", 100)
    result = executor.run(g)
    assert RUNS == ["n0", "n1", "n2", "n3", "n4"] and result.output("n3") == 103


def test_equal_int_and_float_values_and_node_version_are_part_of_the_key(registry) -> None:
    ex = Executor(registry)
    try:
        g = Graph(registry)
        g.add_node("test.addf", "a", {"a": 1, "b": 0})
        first = ex.run(g, ["a"]).keys["a"]
        g.set_value("a", "a", 1.0)  # 1 == 1.0, but a different value for the node to see
        assert ex.run(g, ["a"]).keys["a"] != first
        assert RUNS == ["a", "a"]
        # run options that change results (device, output folder) are in every key
        other = ex.run(g, ["a"], options={"device": "cpu"}).keys["a"]
        assert RUNS == ["a", "a", "a"] and other != first
    finally:
        ex.shutdown()


def test_output_folder_is_part_of_output_node_keys_only(registry, executor, tmp_path) -> None:
    g = Graph(registry)
    g.add_node("test.const", "c", {"value": 3})
    g.add_node("test.write", "w")
    g.connect("c", "value", "w", "value")
    first = executor.run(g, options={"output_dir": str(tmp_path / "a")})
    second = executor.run(g, options={"output_dir": str(tmp_path / "b")})
    assert RUNS == ["c", "w", "w"]
    assert first.keys["c"] == second.keys["c"] and first.keys["w"] != second.keys["w"]
    assert (tmp_path / "b" / "out.txt").read_text() == "3\n"
    third = executor.run(g, options={"output_dir": str(tmp_path / "b"), "device": "cpu"})
    assert RUNS == ["c", "w", "w", "c", "w"] and third.keys["c"] != first.keys["c"]


def test_node_ids_do_not_matter_two_workflows_share_a_subgraph(registry, executor) -> None:
    w1 = chain(registry, 4, start=7, prefix="first")
    executor.run(w1)
    assert len(RUNS) == 4
    RUNS.clear()
    # another workflow: the same chain under other ids, plus its own extra node on top
    w2 = chain(registry, 4, start=7, prefix="other")
    w2.remove_node("other3")
    w2.add_node("test.add", "extra", {"b": 100})
    w2.connect("other2", "sum", "extra", "a")
    w2.add_node("test.show", "show")
    w2.connect("extra", "sum", "show", "value")
    result = executor.run(w2)
    assert RUNS == ["extra", "show"]
    assert result.status["other2"] == CACHED and result.output("extra") == 109
    RUNS.clear()
    assert executor.run(w1).status["first3"] == CACHED and RUNS == []


def test_non_deterministic_node_always_reruns_with_its_dependants(registry, executor) -> None:
    g = Graph(registry)
    g.add_node("test.random", "r")
    g.add_node("test.add", "plus", {"b": 1})
    g.connect("r", "value", "plus", "a")
    g.add_node("test.const", "c", {"value": 5})
    g.add_node("test.add", "det", {"b": 1})
    g.connect("c", "value", "det", "a")
    g.add_node("test.add", "mix")
    g.connect("plus", "sum", "mix", "a")
    g.connect("det", "sum", "mix", "b")
    g.add_node("test.show", "out")
    g.connect("mix", "sum", "out", "value")
    values = []
    for i in range(3):
        RUNS.clear()
        result = executor.run(g)
        values.append(result.output("r"))
        expected = ["r", "plus", "mix", "out"] if i else ["c", "det", "r", "plus", "mix", "out"]
        assert sorted(RUNS) == sorted(expected)
        assert result.output("plus") == values[-1] + 1
    assert len(set(values)) == 3
    # only the deterministic nodes' results are kept: volatile ones could never be hit again
    assert len(executor.cache) == 2


def test_editing_a_file_reruns_the_node_that_reads_it(registry, executor, tmp_path) -> None:
    f = tmp_path / "prompt.txt"
    f.write_text("one", encoding="utf-8")
    g = Graph(registry)
    g.add_node("test.read_file", "read", {"path": "prompt.txt"})
    g.add_node("test.show", "out")
    g.connect("read", "text", "out", "value")
    options = {"base_dir": str(tmp_path)}  # a relative path resolves against the workflow
    assert executor.run(g, options=options).output("read") == "one"
    RUNS.clear()
    executor.run(g, options=options)
    assert RUNS == []
    f.write_text("three", encoding="utf-8")  # new size
    assert executor.run(g, options=options).output("read") == "three"
    assert RUNS == ["read", "out"]
    RUNS.clear()
    f.write_text("threE", encoding="utf-8")  # same size, new modification time
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert executor.run(g, options=options).output("read") == "threE"
    assert RUNS == ["read", "out"]
    RUNS.clear()
    f.unlink()  # a missing file is part of the identity too: the node runs and fails
    result = executor.run(g, options=options)
    assert RUNS == ["read"] and result.status == {"read": ERROR, "out": SKIPPED}
    assert "FileNotFoundError" in result.errors["read"].message


def test_a_file_path_that_arrives_through_a_link_is_watched_too(registry, executor,
                                                                 tmp_path) -> None:
    (tmp_path / "index.txt").write_text("prompt.txt", encoding="utf-8")
    target = tmp_path / "prompt.txt"
    target.write_text("one", encoding="utf-8")
    g = Graph(registry)
    g.add_node("test.read_file", "index", {"path": "index.txt"})
    g.add_node("test.read_file", "read", {})
    g.connect("index", "text", "read", "path")  # the path is computed upstream
    g.add_node("test.show", "out")
    g.connect("read", "text", "out", "value")
    options = {"base_dir": str(tmp_path)}
    assert executor.run(g, options=options).output("read") == "one"
    # the file behind the path was unknown when the keys were made: nothing keyed on a guess
    executor.run(g, options=options)
    RUNS.clear()
    assert executor.run(g, options=options).status["out"] == CACHED
    assert RUNS == []
    target.write_text("changed", encoding="utf-8")
    assert executor.run(g, options=options).output("read") == "changed"
    assert RUNS == ["read", "out"]


def test_memory_budget_evicts_cheapest_first(registry) -> None:
    mb = 1_000_000
    cache = ResultCache(budget_bytes=int(3.5 * mb))
    ex = Executor(registry, cache)
    try:
        g = Graph(registry)
        # expensive per byte: 100 ms for 1 MB; cheap: ~0 s for 1 MB
        g.add_node("test.blob", "costly", {"size": mb, "tag": 1, "work": 0.1})
        for i in range(4):
            g.add_node("test.blob", f"cheap{i}", {"size": mb, "tag": 10 + i})
        result = ex.run(g, ["costly", "cheap0", "cheap1", "cheap2", "cheap3"])
        assert result.ok and len(result.outputs["cheap3"]["data"]) == mb
        assert cache.total_bytes <= cache.budget_bytes
        assert len(cache) == 3 and cache.evictions == 2
        assert result.keys["costly"] in cache  # the costly result survives
        RUNS.clear()
        ex.run(g, ["costly"])
        assert RUNS == []
        cache.set_budget(int(1.5 * mb))
        assert len(cache) == 1 and result.keys["costly"] in cache
        assert cache.total_bytes <= 1.5 * mb
        cache.clear()
        assert (len(cache), cache.total_bytes) == (0, 0)
        RUNS.clear()
        ex.run(g, ["costly"])
        assert RUNS == ["costly"]
        # a result bigger than the whole budget is used by the run but never kept
        g.add_node("test.blob", "huge", {"size": 2 * mb})
        RUNS.clear()
        assert len(ex.run(g, ["huge"]).output("huge")) == 2 * mb
        assert result.keys["costly"] in cache and len(cache) == 1
    finally:
        ex.shutdown()


def _slow_graph(registry, steps: int = 6, stop_at: int = 2) -> Graph:
    g = Graph(registry)
    g.add_node("test.const", "c", {"value": 1})
    g.add_node("test.slow", "slow", {"steps": steps, "stop_signal_at": stop_at})
    g.connect("c", "value", "slow", "x")
    g.add_node("test.add", "after", {"b": 1})
    g.connect("slow", "value", "after", "a")
    g.add_node("test.show", "out")
    g.connect("after", "sum", "out", "value")
    return g


def test_cancel_mid_node(registry, executor) -> None:
    g = _slow_graph(registry, steps=6, stop_at=2)
    reached = pynodes.STEP_REACHED["slow"] = threading.Event()
    rec = Recorder()
    handle = executor.submit(g, on_event=rec)
    assert reached.wait(5)
    handle.cancel()  # from this thread, while the node waits between steps 2 and 3
    result = handle.result(timeout=5)
    assert result.cancelled and not result.ok and handle.cancel_requested
    assert pynodes.STEPS == [("slow", 1), ("slow", 2)]  # no step after the cancel
    assert result.status == {"c": DONE, "slow": CANCELLED, "after": CANCELLED, "out": CANCELLED}
    assert RUNS == ["c", "slow"] and result.errors == {}
    assert rec.statuses("slow") == [QUEUED, RUNNING, CANCELLED]
    assert rec.statuses("after") == [QUEUED, CANCELLED]
    assert rec.progress("slow") == [(1, 6), (2, 6)]
    # the cancelled node left nothing in the cache: the next run runs it in full
    pynodes.reset()
    result = executor.run(g)
    assert result.ok and RUNS == ["slow", "after", "out"] and result.output("after") == 8
    assert [s for _, s in pynodes.STEPS] == [1, 2, 3, 4, 5, 6]


def test_cancel_before_the_run_starts(registry, executor) -> None:
    g = _slow_graph(registry, steps=3, stop_at=1)
    gate = pynodes.STEP_REACHED["slow"] = threading.Event()
    first = executor.submit(g)
    assert gate.wait(5)
    g2 = chain(registry, 3, start=999, prefix="q")
    second = executor.submit(g2)  # queued behind the first run
    second.cancel()
    first.cancel()
    assert first.result(5).cancelled
    r2 = second.result(5)
    assert r2.cancelled and set(r2.status.values()) == {CANCELLED}
    assert not any(n.startswith("q") for n in RUNS)


def test_failure_is_isolated_to_dependants(registry, executor) -> None:
    g = Graph(registry)
    g.add_node("test.const", "c", {"value": 1})
    g.add_node("test.fail", "bad", {"message": "no luck"})
    g.connect("c", "value", "bad", "x")
    g.add_node("test.add", "dep1")
    g.connect("bad", "value", "dep1", "a")
    g.add_node("test.add", "dep2")
    g.connect("dep1", "sum", "dep2", "a")
    g.connect("c", "value", "dep2", "b")
    g.add_node("test.show", "out1")
    g.connect("dep2", "sum", "out1", "value")
    g.add_node("test.add", "ok1", {"b": 41})
    g.connect("c", "value", "ok1", "a")
    g.add_node("test.show", "out2")
    g.connect("ok1", "sum", "out2", "value")
    rec = Recorder()
    result = executor.run(g, on_event=rec)
    assert result.status == {"c": DONE, "bad": ERROR, "dep1": SKIPPED, "dep2": SKIPPED,
                             "out1": SKIPPED, "ok1": DONE, "out2": DONE}
    assert sorted(RUNS) == ["bad", "c", "ok1", "out2"]
    assert result.output("ok1") == 42 and result.ui["out2"] == {"text": "42"}
    assert not result.ok and list(result.errors) == ["bad"]
    err = result.errors["bad"]
    assert isinstance(err, NodeError) and (err.node_id, err.node_type) == ("bad", "test.fail")
    assert err.message == "RuntimeError: no luck"
    assert str(err) == "node 'bad' (test.fail) failed: RuntimeError: no luck"
    assert "Traceback" in err.traceback and "raise RuntimeError(self.message)" in err.traceback
    assert err.input is None
    assert rec.statuses("bad") == [QUEUED, RUNNING, ERROR]
    assert rec.statuses("dep1") == [QUEUED, SKIPPED]
    skipped = [e for e in rec.events if isinstance(e, NodeStatus) and e.node_id == "dep1"][-1]
    assert skipped.reason == "input from 'bad' is not available"
    error_event = [e for e in rec.events if isinstance(e, NodeStatus) and e.status == ERROR][0]
    assert error_event.error is err
    # a failure is not cached: the next run tries again, the good branch stays cached
    RUNS.clear()
    executor.run(g)
    assert RUNS == ["bad"]


def test_node_input_error_names_the_input(registry, executor) -> None:
    g = Graph(registry)
    g.add_node("test.fail", "bad", {"message": "must be even", "bad_input": True})
    result = executor.run(g, ["bad"])
    err = result.errors["bad"]
    assert err.input == "x" and err.message == "input 'x': must be even"


def test_status_and_progress_events(registry, executor) -> None:
    g = Graph(registry)
    g.add_node("test.const", "c")
    g.add_node("test.slow", "slow", {"steps": 3})
    g.connect("c", "value", "slow", "x")
    g.add_node("test.show", "out")
    g.connect("slow", "value", "out", "value")
    rec = Recorder()
    result = executor.run(g, on_event=rec)
    assert isinstance(rec.events[0], RunStarted) and rec.events[0].nodes == ("c", "slow", "out")
    assert isinstance(rec.events[-1], RunFinished) and rec.events[-1].result is result
    assert rec.statuses() == [
        ("c", QUEUED), ("slow", QUEUED), ("out", QUEUED),
        ("c", RUNNING), ("c", DONE), ("slow", RUNNING), ("slow", DONE),
        ("out", RUNNING), ("out", DONE)]
    assert rec.progress("slow") == [(1, 3), (2, 3), (3, 3)]
    # progress comes between the node's running and done events
    kinds = [(type(e).__name__, getattr(e, "status", None)) for e in rec.events
             if getattr(e, "node_id", None) == "slow"]
    assert kinds == [("NodeStatus", QUEUED), ("NodeStatus", RUNNING), ("Progress", None),
                     ("Progress", None), ("Progress", None), ("NodeStatus", DONE)]
    done = [e for e in rec.events if isinstance(e, NodeStatus) and e.status == DONE]
    assert all(e.elapsed >= 0 and e.run_id == result.run_id for e in done)
    assert set(result.timings) == {"c", "slow", "out"} and result.elapsed > 0

    g.set_value("slow", "steps", 4)
    rec2 = Recorder()
    executor.run(g, on_event=rec2)
    assert rec2.statuses() == [("slow", QUEUED), ("out", QUEUED), ("c", CACHED),
                               ("slow", RUNNING), ("slow", DONE), ("out", RUNNING),
                               ("out", DONE)]
    rec3 = Recorder()
    executor.run(g, on_event=rec3)
    assert rec3.statuses() == [("c", CACHED), ("slow", CACHED), ("out", CACHED)]
    reasons = {e.node_id: e.reason for e in rec3.events if isinstance(e, NodeStatus)}
    assert reasons == {"c": "not needed", "slow": "not needed", "out": ""}


def test_async_api(registry, executor) -> None:
    g = chain(registry, 4, start=3)

    async def main():
        # with deadlines: a run that never finishes fails the test instead of hanging it
        first = await asyncio.wait_for(executor.run_async(g), 10)
        handle = executor.submit(g)
        second = await asyncio.wait_for(handle, 10)
        return first, second

    first, second = asyncio.run(main())
    assert first.output("n2") == 5 and first.run_id + 1 == second.run_id
    assert second.status["n3"] == CACHED and RUNS == ["n0", "n1", "n2", "n3"]


def test_blocking_run_and_handle(registry, executor) -> None:
    g = chain(registry, 3, start=1)
    handle = executor.submit(g)
    result = handle.result(timeout=5)
    assert handle.done() and result.ok and result.output("n1") == 2
    # the run used a snapshot: editing the graph after submit does not change it
    g2 = _slow_graph(registry, steps=2, stop_at=1)
    gate = pynodes.STEP_REACHED["slow"] = threading.Event()
    h = executor.submit(g2)
    assert gate.wait(5)
    g2.set_value("c", "value", 1000)
    g2.remove_node("out")
    pynodes.RESUME["slow"].set()
    r = h.result(5)
    assert r.ok and r.output("after") == 4 and "out" in r.status


def test_a_failing_event_listener_does_not_abort_the_run(registry, executor, capsys) -> None:
    g = _slow_graph(registry, steps=3, stop_at=99)
    calls = []

    def broken(event) -> None:
        calls.append(event)
        raise RuntimeError("listener bug")

    result = executor.run(g, on_event=broken)
    assert result.ok and result.status["out"] == DONE
    assert len(calls) > 5  # it was still called for every event
    err = capsys.readouterr().err
    assert err.count("RuntimeError: listener bug") == 1 and "the run goes on" in err
