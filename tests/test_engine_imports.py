"""The engine is headless and light: importing it loads neither torch nor Qt."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HEAVY = ("torch", "PySide6", "diffusers", "transformers")


def _modules_after(code: str) -> dict[str, bool]:
    script = (
        "import sys, json\n"
        f"{code}\n"
        f"print(json.dumps({{m: m in sys.modules for m in {list(HEAVY)!r}}}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_engine_modules_load_neither_torch_nor_qt() -> None:
    loaded = _modules_after(
        "import engine, engine.api, engine.executor, engine.workflow, engine.validate, "
        "engine.cache, engine.graph, engine.registry, engine.paths, engine.plugins, "
        "engine.comfy")
    assert loaded == dict.fromkeys(HEAVY, False)


def test_test_nodes_and_primitives_load_neither_torch_nor_qt() -> None:
    loaded = _modules_after(
        "from tests.support import pynodes\n"
        "r = pynodes.make_registry()\n"
        "assert len(r) > 20, len(r)")
    assert loaded["torch"] is False and loaded["PySide6"] is False


def test_default_registry_discovery_loads_neither_torch_nor_qt() -> None:
    # Listing Loom's node catalogue must stay fast: node modules import torch lazily.
    loaded = _modules_after(
        "from engine.registry import default_registry\n"
        "r = default_registry()\n"
        "assert 'primitive.int' in r")
    assert loaded["torch"] is False and loaded["PySide6"] is False
