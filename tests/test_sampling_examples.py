"""The example workflows under resources/workflows/examples use Loom's sampling nodes with
valid input names and values, and validate completely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.registry import default_registry
from engine.workflow import load_workflow

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "resources" / "workflows"
                   / "examples").glob("*.json"))
EXPECTED = {"sd15_txt2img.json", "sd15_img2img.json", "sd15_inpaint.json",
            "sdxl_base_refiner.json", "sd_x4_upscale.json", "sd15_controlnet.json"}


def test_expected_examples_exist():
    assert EXPECTED <= {p.name for p in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_inputs_fit_node_specs(path):
    reg = default_registry()
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == 1
    outputs = {}
    missing = sorted({n["type"] for n in doc["nodes"].values() if reg.get(n["type"]) is None})
    assert not missing, f"{path.name}: unknown node types {missing}"
    for nid, n in doc["nodes"].items():
        outputs[nid] = {o.name for o in reg.get(n["type"]).outputs}
    for nid, n in doc["nodes"].items():
        spec = reg.get(n["type"])
        for name, value in n["inputs"].items():
            assert name in spec.inputs, f"{path.name}: {nid}.{name}"
            if isinstance(value, dict):
                assert value["node"] in outputs, f"{path.name}: {nid}.{name} links to nothing"
                assert value["output"] in outputs[value["node"]], f"{path.name}: {nid}.{name}"
            else:
                assert spec.inputs[name].check(value) is None, f"{path.name}: {nid}.{name}"
        for name, inp in spec.inputs.items():
            if inp.required:
                assert name in n["inputs"], f"{path.name}: {nid} lacks {name}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path):
    """Every node type exists now (this once skipped until the loaders did): the example must
    load and validate completely, into the graph its file describes."""
    reg = default_registry()
    doc = json.loads(path.read_text())
    g = load_workflow(path, reg)  # raises ValidationError listing every problem
    assert set(g.nodes) == set(doc["nodes"])
    assert len(g.links) == sum(isinstance(v, dict) for n in doc["nodes"].values()
                               for v in n["inputs"].values())
