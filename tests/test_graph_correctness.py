"""The graph and the cache must not lie: unknown node types named first, values through links
checked like typed-in ones, cached values never changed by a downstream node, explicit random
streams, one list of choices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.api import Session
from engine.cache import ResultCache
from engine.errors import ValidationError
from engine.executor import Executor
from engine.graph import Graph
from engine.node import Input, Output, RunContext, node
from engine.registry import Registry
from engine.types import ANY, FLOAT, INT
from tests.support import pynodes

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "resources" / "workflows" / "default.json"


# ---- test node types: a tensor source, a well-behaved reader and a node that writes in place


@node("tcheck.source", title="Tensor Source", category="test", version="1.0.0",
      outputs=[Output("t", ANY), Output("items", ANY)])
class TensorSource:
    n = Input(INT, default=3)

    def run(self, ctx: RunContext):
        pynodes.RUNS.append(ctx.node_id)
        return torch.arange(float(self.n)), [1, 2]


@node("tcheck.scale", title="Scale (clones)", category="test", version="1.0.0",
      outputs=[Output("t", ANY)])
class ScaleClone:
    t = Input(ANY)

    def run(self, ctx: RunContext):
        pynodes.RUNS.append(ctx.node_id)
        return self.t * 2


@node("tcheck.scale_inplace", title="Scale (in place)", category="test", version="1.0.0",
      outputs=[Output("t", ANY)])
class ScaleInPlace:
    t = Input(ANY)

    def run(self, ctx: RunContext):
        pynodes.RUNS.append(ctx.node_id)
        return self.t.mul_(2)


@node("tcheck.append", title="Append (in place)", category="test", version="1.0.0",
      outputs=[Output("items", ANY)])
class AppendInPlace:
    items = Input(ANY)

    def run(self, ctx: RunContext):
        self.items.append(3)
        return self.items


@node("tcheck.out", title="Out", category="test", version="1.0.0", output_node=True)
class Out:
    value = Input(ANY)

    def run(self, ctx: RunContext):
        ctx.set_ui(value=repr(self.value))


@node("tcheck.ranged", title="Ranged", category="test", version="1.0.0", output_node=True)
class Ranged:
    scale = Input(FLOAT, default=1.0, min=0.0, max=30.0)
    steps = Input(INT, default=20, min=1, max=1000)

    def run(self, ctx: RunContext):
        pynodes.RUNS.append(ctx.node_id)


@pytest.fixture
def reg() -> Registry:
    pynodes.reset()
    r = pynodes.make_registry()
    for cls in (TensorSource, ScaleClone, ScaleInPlace, AppendInPlace, Out, Ranged):
        r.register(cls)
    return r


@pytest.fixture
def ex(reg):
    e = Executor(reg, ResultCache())
    yield e
    e.shutdown()


def _pipe(reg: Registry, middle: str) -> Graph:
    g = Graph(reg)
    g.add_node("tcheck.source", "src")
    g.add_node(middle, "mid")
    g.connect("src", "t", "mid", "t")
    g.add_node("tcheck.out", "out")
    g.connect("mid", "t", "out", "value")
    return g


# ---- cached values are read-only ------------------------------------------------------------


def test_the_check_is_on_in_the_tests():
    assert os.environ.get("LOOM_CHECK_MUTATIONS") == "1"


def test_a_node_that_changes_its_input_in_place_is_named(reg, ex):
    g = _pipe(reg, "tcheck.scale_inplace")
    result = ex.run(g)
    err = result.errors["mid"]
    assert (err.node_id, err.node_type, err.input) == ("mid", "tcheck.scale_inplace", "t")
    assert "changed its input" in err.message and "'src.t'" in err.message
    assert result.status["out"] == "skipped"
    # the corrupted source result is not served from the cache again
    pynodes.RUNS.clear()
    g2 = _pipe(reg, "tcheck.scale")
    result = ex.run(g2)
    assert result.ok and pynodes.RUNS == ["src", "mid"]
    assert torch.equal(result.output("mid"), torch.tensor([0.0, 2.0, 4.0]))


def test_a_well_behaved_reader_passes_and_the_source_stays_cached(reg, ex):
    g = _pipe(reg, "tcheck.scale")
    assert ex.run(g).ok
    pynodes.RUNS.clear()
    g2 = _pipe(reg, "tcheck.scale")
    r = ex.run(g2)
    assert r.ok and pynodes.RUNS == []  # all cached: nothing was changed


def test_containers_are_checked_too(reg, ex):
    g = Graph(reg)
    g.add_node("tcheck.source", "src")
    g.add_node("tcheck.append", "app")
    g.connect("src", "items", "app", "items")
    g.add_node("tcheck.out", "out")
    g.connect("app", "items", "out", "value")
    result = ex.run(g)
    assert result.errors["app"].input == "items"


def test_the_check_can_be_switched_off_per_run(reg, ex):
    g = _pipe(reg, "tcheck.scale_inplace")
    result = ex.run(g, options={"check_mutations": False})
    assert result.ok  # unchecked, the bug goes unnoticed: that is why the tests turn it on


def test_every_node_of_the_default_workflow_treats_its_inputs_as_read_only(tmp_path):
    """With the check on (as in every test), the built-in default workflow runs clean twice
    (the second time from the cache, with a new seed)."""
    s = Session()
    g = s.load(DEFAULT)
    s.set(g, "noise.batch", 1)
    assert s.run(g, output_dir=tmp_path, device="cpu", options={"check_mutations": True}).ok
    s.set(g, "noise.seed", 5)
    r = s.run(g, output_dir=tmp_path, device="cpu", options={"check_mutations": True})
    assert r.ok and "checkpoint" in r.cached and "noise" in r.ran


# ---- values through links get the checks of typed-in values --------------------------------


@pytest.mark.parametrize("src,dst_input,words", [
    (("math.arithmetic", {"a": 1e308, "b": 10.0, "op": "multiply"}, "result"), "scale",
     "finite"),
    (("primitive.float", {"value": 31.0}, "value"), "scale", "above the maximum"),
    (("primitive.int", {"value": 100_000_000}, "value"), "steps", "above the maximum"),
    (("primitive.int", {"value": -5}, "value"), "steps", "below the minimum"),
])
def test_linked_values_are_checked_like_constants(src, dst_input, words):
    from engine.registry import default_registry

    reg = Registry()
    for spec in default_registry():
        reg.register(spec.cls)
    reg.register(Ranged)
    pynodes.reset()
    src_type, values, output = src
    g = Graph(reg)
    g.add_node(src_type, "src", values)
    g.add_node("tcheck.ranged", "dst")
    g.connect("src", output, "dst", dst_input)
    ex = Executor(reg, ResultCache())
    try:
        result = ex.run(g, options={})
    finally:
        ex.shutdown()
    err = result.errors["dst"]
    assert err.input == dst_input and words in err.message, err.message
    assert f"'src.{output}'" in err.message
    assert "dst" not in pynodes.RUNS  # refused before run()


def test_arithmetic_overflow_into_cfg_scale_is_refused_not_rendered_black(tmp_path):
    """1e308 * 10 = inf from an Arithmetic node into CFG Combine's scale: today an all-black
    image with exit 0; now the CFG node fails naming its input, and the CLI exits 1."""
    s = Session()
    g = s.load(DEFAULT)
    g.add_node("math.arithmetic", "arith", {"a": 1e308, "b": 10.0, "op": "multiply"})
    g.connect("arith", "result", "cfg", "scale")
    result = s.run(g, output_dir=tmp_path, device="cpu")
    err = result.errors["cfg"]
    assert err.input == "scale" and "finite" in err.message and "'arith.result'" in err.message
    assert not list(tmp_path.glob("*.png"))


# ---- unknown node types come first ----------------------------------------------------------


def _workflow_with_unknown(tmp_path: Path) -> Path:
    doc = json.loads(DEFAULT.read_text())
    doc["nodes"]["save"]["type"] = "image.sav"  # a typo: now the graph has no output node
    doc["nodes"]["extra"] = {"type": "someplugin.magic", "inputs": {}}
    p = tmp_path / "wf.json"
    p.write_text(json.dumps(doc))
    return p


def test_unknown_node_types_are_reported_first_by_id_and_type(tmp_path):
    s = Session()
    g = s.load(_workflow_with_unknown(tmp_path), check=False)
    with pytest.raises(ValidationError) as info:
        s.run(g, output_dir=tmp_path)
    probs = info.value.problems
    assert [(p.code, p.node_id, p.node_type) for p in probs[:2]] == [
        ("unknown_node_type", "save", "image.sav"), ("unknown_node_type", "extra",
                                                     "someplugin.magic")]
    assert all(p.code != "unknown_node_type" for p in probs[2:])


def test_cli_names_unknown_node_types_before_anything_else(tmp_path):
    wf = _workflow_with_unknown(tmp_path)
    r = subprocess.run([sys.executable, "main.py", "run", str(wf), "--set", "noise.seed=3",
                        "--set", "save.prefix=x", "--out", str(tmp_path / "out")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln.strip() for ln in r.stderr.splitlines() if ln.strip().startswith("- ")]
    assert lines[0].startswith("- node 'save' (image.sav)") and "unknown node type" in lines[0]
    assert lines[1].startswith("- node 'extra' (someplugin.magic)")
    assert "no output node" not in r.stderr


# ---- one list of choices --------------------------------------------------------------------


def test_loader_and_scheduler_choices_come_from_one_list():
    from nodes.lib import families, schedules
    from nodes.loaders import LoadCheckpoint
    from nodes.sampling import SchedulerNode

    inputs = LoadCheckpoint.__loom_spec__.inputs
    assert inputs["family"].choices == ("auto", *families.FAMILIES)
    assert inputs["prediction"].choices == ("auto", *families.PREDICTIONS)
    assert inputs["dtype"].choices == families.DTYPES
    assert SchedulerNode.__loom_spec__.inputs["name"].choices == schedules.SCHEDULER_NAMES
    assert set(families.FAMILIES) == set(families.FAMILY_TABLE)
    for name in families.FAMILIES:
        assert families.default_prediction(name) in families.PREDICTIONS
    assert set(families.SINGLE_FILE_FAMILIES) <= set(families.FAMILIES)


def test_cli_check_inputs_flag_turns_the_check_on(tmp_path):
    doc = {"schema_version": 1, "nodes": {
        "src": {"type": "tcheck.source", "inputs": {}},
        "mid": {"type": "tcheck.scale_inplace", "inputs": {"t": {"node": "src", "output": "t"}}},
        "out": {"type": "tcheck.out", "inputs": {"value": {"node": "mid", "output": "t"}}}}}
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(doc))
    env = dict(os.environ, LOOM_EXTRA_NODES="tests.test_graph_correctness",
               LOOM_CHECK_MUTATIONS="0", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "main.py", "run", str(wf), "--out", str(tmp_path / "out")]
    plain = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    checked = subprocess.run(cmd + ["--check-inputs"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
    assert checked.returncode == 1
    assert "node 'mid' (tcheck.scale_inplace) failed" in checked.stderr
    assert "changed its input (the value of 'src.t') in place" in checked.stderr


@pytest.mark.parametrize("target,value,words", [
    ("scheduler.steps", 100_000_000, "above the maximum 1000"),
    ("noise.seed", -5, "below the minimum 0"),
])
def test_an_integer_node_cannot_smuggle_an_absurd_value_into_the_default_workflow(
        target, value, words, tmp_path):
    s = Session()
    g = s.load(DEFAULT)
    node_id, inp = target.split(".")
    g.add_node("primitive.int", "number", {"value": value})
    g.connect("number", "value", node_id, inp)
    result = s.run(g, output_dir=tmp_path, device="cpu")
    err = result.errors[node_id]
    assert err.input == inp and words in err.message and "'number.value'" in err.message
    assert "sampler" not in result.ran and not list(tmp_path.glob("*.png"))
