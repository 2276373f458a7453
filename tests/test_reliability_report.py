"""The pieces of the reliability report (tools/reliability/report.py) at smoke size: a short
soak, a few concurrent runs, two absurd values, a full disk, and the section they make.
Behaviour only (exit codes, files, messages), never timing."""

from __future__ import annotations

import json
import os

import pytest

from tools.reliability import report

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"),
                                reason="the report reads /proc (Linux)")


def test_soak_runs_every_time_and_reports_memory():
    res = report.check_soak(3, warmup=2)
    assert res["errors"] == [] and res["files"] == res["on_disk"] == 3
    assert len(res["rss_kb"]) == 3 and all(kb > 0 for kb in res["rss_kb"])
    assert res["rss_warm"] == res["rss_kb"][1] and res["rss_end"] == res["rss_kb"][-1]
    stats = res["stats"]
    assert stats["models"]["count"] >= 1 and stats["results"]["count"] >= 1
    assert stats["budget"]["bytes"] > 0
    table = report.soak_table(res)
    assert "3 PNGs written, 0 failed runs" in table and "RSS after run 2" in table


def test_concurrent_runs_each_print_their_own_file():
    res = report.check_runs(3)
    assert res["wrong"] == [] and res["ok_runs"] == 3
    assert res["printed"] == res["distinct"] == res["on_disk"] == 3 and res["temps"] == 0
    assert res["ok"]


def test_absurd_values_are_refused_with_exit_2_naming_the_input():
    cases = ["symlink loop as output folder", "100,000,000 steps (scheduler.steps)"]
    res = report.check_absurd(repeat=1, only=cases)
    assert [r["case"] for r in res["rows"]] == cases
    for r in res["rows"]:
        assert r["codes"] == [2] and r["names_input"], r
        assert not r["traceback"] and not r["stdout"] and not r["written"], r
    loop, steps = res["rows"]
    assert "above the maximum 1000" in steps["message"]
    assert "symlink loop" in loop["message"]
    table = report.absurd_table(res)
    assert "python main.py nodes" in table


def test_a_full_disk_is_a_clear_error_with_nothing_partial():
    # a file-size limit: needs no mount, so it works for any user
    res = report.check_disk(force_rlimit=True)
    assert res["returncode"] == 1 and res["names_node"] and res["names_file"], res
    assert "file-size limit" in res["error"] and not res["traceback"]
    assert res["partial"] == [] and res["temps"] == 0 and res["printed_match"]
    assert res["ok"]


def test_the_section_has_a_table_per_check_and_a_verdict():
    results = {
        "absurd": {"rows": [{"case": "c", "codes": [2], "median": 0.2, "max": 0.3,
                             "message": "node 'x' (t) input 'y': a|b", "ok": True}],
                   "nodes_median": 0.1, "repeat": 1, "ok": True},
        "disk": {"ok": False, "crashed": "OSError: boom"},
        "runs": {"runs": 2, "ok_runs": 2, "printed": 2, "distinct": 2, "on_disk": 1,
                 "wrong": [], "temps": 0, "seconds": 3.0, "save_window": 0.5, "ok": False},
    }
    text = report.section(results, quick=True)
    assert text.startswith("## Reliability\n")
    assert "Overall: **FAIL**" in text and "**PASS**" in text
    assert "a\\|b" in text  # a | inside a cell is escaped
    assert "| 2 concurrent `main.py run` into one folder |" in text
    assert "the check itself failed: `OSError: boom`" in text


def test_images_saved_before_a_write_fails_are_still_reported(tmp_path, monkeypatch):
    """A full disk on the third image of four: the run fails naming the file, and the two PNGs
    already written are in result.files (main.py prints them), complete."""
    import errno

    import torch

    import nodes.image
    from engine import files
    from engine.executor import Executor
    from engine.graph import Graph
    from engine.node import Output, node
    from engine.registry import Registry
    from nodes._types import IMAGE

    @node("test.four_images", title="Four images", category="test", version="1.0.0",
          outputs=[Output("image", IMAGE)])
    class FourImages:
        def run(self, ctx):
            return torch.rand(4, 3, 8, 8)

    registry = Registry()
    registry.register(FourImages)
    registry.register(nodes.image.SaveImageNode)
    g = Graph(registry)
    g.add_node("test.four_images", "src")
    g.add_node("image.save", "save", {"prefix": "full"})
    g.connect("src", "image", "save", "images")

    real, calls = files.write_numbered, []

    def fills_up(folder, prefix, suffix, data):
        calls.append(prefix)
        if len(calls) == 3:
            raise files.FileWriteError(f"{folder}/{prefix}_00003{suffix}",
                                       OSError(errno.ENOSPC, "No space left on device"))
        return real(folder, prefix, suffix, data)

    monkeypatch.setattr(files, "write_numbered", fills_up)
    workflow = json.dumps({"schema_version": 1, "nodes": {}})
    result = Executor(registry).run(g, None, {"output_dir": str(tmp_path),
                                              "workflow_json": workflow})
    assert not result.ok and "disk is full" in str(result.errors["save"])
    assert "full_00003.png" in str(result.errors["save"])
    written = sorted(str(p) for p in tmp_path.glob("full_*.png"))
    assert len(written) == 2 and sorted(result.files) == written
    assert all(report.png_problem(p) is None for p in tmp_path.glob("full_*.png"))


def test_a_device_or_fifo_as_model_path_is_refused_not_read(tmp_path):
    """Saving a workflow records a content hash of each model file; /dev/zero was read whole
    (until the OOM killer came) before the pre-run checks could refuse it. Under a memory limit
    here, so that a regression fails instead of eating the machine."""
    import resource
    import subprocess
    import sys

    from engine.library import content_hash

    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        with pytest.raises(OSError, match="not a regular file"):
            content_hash(path)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    for path in ("/dev/zero", str(fifo)):
        proc = subprocess.run([sys.executable, "main.py", "run", "--set",
                               f"checkpoint.path={path}", "--out", str(tmp_path / "out")],
                              cwd=report.ROOT, env=report._env(), capture_output=True,
                              text=True, timeout=120, preexec_fn=limit)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
        assert "node 'checkpoint' (loaders.checkpoint) input 'path'" in proc.stderr
