"""The pieces of the reliability report (tools/reliability/report.py) at smoke size: a short
soak, a few concurrent runs, two absurd values, a full disk, and the section they make.
Behaviour only (exit codes, files, messages), never timing."""

from __future__ import annotations

import argparse
import os

import pytest

from tools.reliability import report

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"),
                                reason="the report reads /proc (Linux)")


def test_soak_runs_every_time_and_reports_memory():
    res = report.check_soak(4, warmup=2)
    assert res["errors"] == [] and res["files"] == res["on_disk"] == 4
    assert len(res["rss_kb"]) == 4 and all(kb > 0 for kb in res["rss_kb"])
    assert res["rss_warm"] == res["rss_kb"][1] and res["rss_end"] == res["rss_kb"][-1]
    stats = res["stats"]
    assert stats["models"]["count"] >= 1 and stats["results"]["count"] >= 1
    assert stats["budget"]["bytes"] > 0
    table = report.soak_table(res)
    assert "4 PNGs written, 0 failed runs" in table and "RSS after run 2" in table


def test_concurrent_runs_each_print_their_own_file():
    res = report.check_runs(3)
    assert res["wrong"] == [] and res["ok_runs"] == 3
    assert res["printed"] == res["distinct"] == res["on_disk"] == 3 and res["temps"] == 0
    assert res["ok"]


def test_absurd_values_are_refused_with_exit_2_naming_the_input():
    cases = ["100,000,000 steps (scheduler.steps)", "symlink loop as output folder"]
    res = report.check_absurd(repeat=1, only=cases)
    assert [r["case"] for r in res["rows"]] == cases
    for r in res["rows"]:
        assert r["codes"] == [2] and r["names_input"], r
        assert not r["traceback"] and not r["stdout"] and not r["written"], r
    steps, loop = res["rows"]
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
        "runs": {"runs": 2, "ok_runs": 2, "printed": 2, "distinct": 2, "on_disk": 1,
                 "wrong": [], "temps": 0, "seconds": 3.0, "save_window": 0.5, "ok": False},
    }
    args = argparse.Namespace(quick=True)
    text = report.section(results, args, 10.0)
    assert text.startswith("## Reliability\n")
    assert "Overall: **FAIL**" in text and "**PASS**" in text
    assert "a\\|b" in text  # a | inside a cell is escaped
    assert "| 2 concurrent `main.py run` into one folder |" in text
