"""The class-conditional built-in model's training script (tools/builtin/train_classes.py) at
toy size: it trains, exports a DDPM folder with its class names and the workflow that loads it,
the workflow renders through the engine, and an interrupted run resumes to the same weights."""
from __future__ import annotations

import json
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch")

from tools.builtin import evaluate_classes, train_classes  # noqa: E402


def test_training_script_runs_exports_and_resumes(tmp_path, monkeypatch):
    from safetensors.torch import load_file
    args = ["--work", str(tmp_path / "w"), "--out", str(tmp_path / "m"), "--steps", "4",
            "--batch", "4", "--examples", "40", "--save-every", "2", "--threads", "1"]
    args += ["--workflow", str(tmp_path / "class_conditional.json")]
    assert train_classes.main(args) == 0
    assert json.loads((tmp_path / "m" / "class_names.json").read_text()) == \
        train_classes.CLASS_NAMES
    doc = json.loads((tmp_path / "class_conditional.json").read_text())
    assert {"label", "noise", "cfg"} <= set(doc["nodes"])
    assert [n for n in doc["nodes"].values() if n["type"] == "image.save"]
    # the workflow renders the toy model by class name, 32 px, through the engine
    monkeypatch.setattr(evaluate_classes, "WORKFLOW", tmp_path / "class_conditional.json")
    r = evaluate_classes.ClassRenderer(str(tmp_path / "m"))
    images = r.images("blue star", seed=1, scale=3.0, batch=2)
    assert len(images) == 2 and images[0].shape == (32, 32, 3)
    whole = load_file(str(tmp_path / "w" / "unet.safetensors"))
    (tmp_path / "w" / "unet.safetensors").unlink()
    train_classes.train(tmp_path / "w", 4, 4, 40, 4321, 1e-3, save_every=2, stop_after=2)
    assert (tmp_path / "w" / "resume.pt").is_file()
    train_classes.train(tmp_path / "w", 4, 4, 40, 4321, 1e-3, save_every=2)
    resumed = load_file(str(tmp_path / "w" / "unet.safetensors"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
