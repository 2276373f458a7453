"""Batch rendering on Ray (engine/batch_ray.py), on a local Ray instance this module starts
(2 CPUs) with the built-in model: the same images as in one process, no item lost when a worker
is killed mid-batch, nothing repeated on resume, the command line on a running cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from PIL import Image

from engine.api import DEFAULT_WORKFLOW, Session, apply_overrides
from engine.batch import Batch, BatchError, Manifest, plan_batch
from engine.batch_ray import RayBackend, import_ray

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=128 * 2**20)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def backend(cluster):
    b = RayBackend(workers=2)  # one CPU each; warm across the tests of this module
    yield b
    b.close()


@pytest.fixture(scope="module")
def graph():
    session = Session()
    g = session.load(DEFAULT_WORKFLOW)
    apply_overrides(g, session.registry, ["noise.batch=1", "scheduler.steps=3"])
    return g


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_a_sweep_on_ray_gives_the_in_process_images(backend, graph, tmp_path) -> None:
    sweeps = {"prompt.text": ["a red circle", "a blue star"], "noise.seed": [1, 2, 3],
              "cfg.scale": [3.0, 7.0]}
    here = tmp_path / "here"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each one-CPU worker runs (float sums in the same order)
    try:
        local = list(Batch(plan_batch(graph, sweeps), here))
    finally:
        torch.set_num_threads(threads)
    there = tmp_path / "ray"
    remote = list(Batch(plan_batch(graph, sweeps), there, backend=backend))
    assert len(local) == len(remote) == 12
    assert all(r.ok for r in remote), [r.error for r in remote]
    assert sorted(r.index for r in remote) == list(range(12))
    by_index = {r.index: r for r in remote}
    for r in local:
        assert by_index[r.index].files == r.files == [f"loom_item{r.index:05d}_00001.png"]
        assert by_index[r.index].values == r.values
        assert np.array_equal(pixels(here / r.files[0]), pixels(there / r.files[0])), r.index
    # each worker loaded the model at most once (once each, when these are the first items)
    loads = Counter(r.worker for r in remote if "checkpoint" in r.ran)
    assert set(Counter(r.worker for r in remote)) == {"ray-0", "ray-1"}
    assert all(n <= 1 for n in loads.values()), loads
    # prompts go in one run per worker: 2 prompts on 2 workers, at most one extra encoding
    # each if a worker took items from the other's run
    encodes = sum("prompt" in r.ran for r in remote)
    assert 2 <= encodes <= 4
    assert Manifest(there).latest().keys() == set(range(12))


def test_a_killed_worker_loses_no_item(backend, graph, tmp_path) -> None:
    sweeps = {"noise.seed": [11, 12, 13, 14, 15, 16], "cfg.scale": [3.0, 7.0]}
    out = tmp_path / "out"
    batch = Batch(plan_batch(graph, sweeps), out, backend=backend)
    batch.prepare()
    before = backend.pids()
    results = []
    for r in batch:
        results.append(r)
        if len(results) == 1:
            os.kill(before[0], signal.SIGKILL)  # mid-batch: worker 0 has items in flight
    assert sorted(r.index for r in results) == list(range(12))
    assert all(r.ok for r in results), [r.error for r in results]
    after = backend.pids()
    assert after[0] != before[0] and after[1] == before[1]  # Ray restarted worker 0
    latest = Manifest(out).latest()
    assert sorted(latest) == list(range(12))
    assert all((out / rec["files"][0]).is_file() for rec in latest.values())


def test_resume_after_an_interrupted_ray_batch_repeats_nothing(backend, graph,
                                                                 tmp_path) -> None:
    sweeps = {"noise.seed": [21, 22, 23, 24, 25, 26], "cfg.scale": [3.0, 7.0]}
    out = tmp_path / "out"
    first = Batch(plan_batch(graph, sweeps), out, backend=backend)
    done = []
    for r in first:
        done.append(r.index)
        if len(done) == 3:
            first.stop.request()  # Ctrl-C: the items in flight finish, no new ones start
    assert 3 <= len(done) < 12
    second = Batch(plan_batch(graph, sweeps), out, backend=backend, resume=True)
    assert second.done_before == len(done)
    rest = [r.index for r in second]
    assert not set(rest) & set(done) and sorted(done + rest) == list(range(12))
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["index"] for line in lines) == list(range(12))
    assert len(list(out.glob("loom_item*.png"))) == 12


def test_the_command_line_renders_on_a_running_cluster(cluster, tmp_path) -> None:
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"schema_version": 1, "nodes": {
        "a": {"type": "test.const", "inputs": {"value": 1}},
        "save": {"type": "text.save", "inputs": {"value": {"node": "a", "output": "value"},
                                                  "prefix": "v"}}}}), encoding="utf-8")
    out = tmp_path / "out"
    env = dict(os.environ, LOOM_EXTRA_NODES="tests.support.pynodes")
    # --worker-cpus 0: the module's two workers hold both CPUs of this test cluster
    args = [sys.executable, "main.py", "batch", str(wf), "--sweep", "a.value=1,2,oops,4",
            "--out", str(out), "--ray", cluster, "--workers", "2", "--worker-cpus", "0"]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    # item 2's value fails that item on its worker; the batch goes on, the exit status says so
    assert proc.returncode == 1, proc.stderr
    assert "error: item 2 (a.value='oops'): node 'a' (test.const) input 'value': cannot read " \
           "'oops' as INT" in proc.stderr
    latest = Manifest(out).latest()
    assert sorted(latest) == [0, 1, 2, 3]
    assert [latest[i]["status"] for i in range(4)] == ["ok", "ok", "error", "ok"]
    assert {rec["worker"] for rec in latest.values()} <= {"ray-0", "ray-1"}
    assert [latest[i]["files"] for i in (0, 1, 3)] == [[f"v_item0000{i}_00001.txt"]
                                                       for i in (0, 1, 3)]
    assert [(out / f"v_item0000{i}_00001.txt").read_text() for i in (0, 1, 3)] == \
        ["1\n", "2\n", "4\n"]  # written by the driver from what the workers returned
    assert sorted(proc.stdout.splitlines()) == [str(out / f"v_item0000{i}_00001.txt")
                                                for i in (0, 1, 3)]


def test_without_ray_the_message_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(BatchError, match=r"pip install 'ray>=2.9'"):
        import_ray()
    with pytest.raises(BatchError, match="Ray is not installed"):
        RayBackend().start([])
