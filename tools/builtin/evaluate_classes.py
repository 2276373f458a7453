"""Scores the class-conditional built-in model (resources/models/loom-classes) with the
project's analyser: for every class, images from several seeds through the shipped workflow
(resources/workflows/builtin/class_conditional.json), and the share whose colour and shape both
match the class name, with guidance and without (scale 1: the conditional prediction alone).

    python -m tools.builtin.evaluate_classes                 # the README's table
    python -m tools.builtin.evaluate_classes --scales 1 2 3 5 --seeds 8
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from tools.builtin import shapes
from tools.builtin.evaluate import save_grid, to_uint8

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "resources" / "workflows" / "builtin" / "class_conditional.json"


class ClassRenderer:
    """The class-conditional workflow in one engine session (the model loads once)."""

    def __init__(self, model: str | None = None, overrides: list[str] | None = None):
        from engine.api import Session, apply_overrides
        self.session = Session()
        self.graph = self.session.load(WORKFLOW)
        if model:
            self.session.set(self.graph, "loader.path", str(model))
        apply_overrides(self.graph, self.session.registry, overrides or [])

    def class_names(self) -> list[str]:
        folder = Path(self.graph.node("loader").values["path"])
        if not folder.is_absolute():
            folder = ROOT / folder
        return json.loads((folder / "class_names.json").read_text())

    def images(self, label: str, seed: int, scale: float, batch: int = 1) -> list[np.ndarray]:
        s, g = self.session, self.graph
        s.set(g, "label.label", label)
        s.set(g, "noise.seed", seed)
        s.set(g, "noise.batch", batch)
        s.set(g, "cfg.scale", scale)
        result = s.run(g, outputs=["decode"], device="cpu")
        if not result.ok:
            raise RuntimeError("; ".join(str(e) for e in result.errors.values()))
        return to_uint8(result.outputs["decode"]["image"])


def is_right(name: str, image: np.ndarray) -> dict[str, bool]:
    colour, shape = name.split()
    a = shapes.analyse(image)        # resizes the 32 px image to the analyser's 64 px
    return {"colour": a.colour == colour, "shape": a.shape == shape,
            "class": a.colour == colour and a.shape == shape}


def score(r: ClassRenderer, seeds: list[int], scale: float,
          keep: list | None = None) -> dict[str, float]:
    counts = {"colour": 0, "shape": 0, "class": 0}
    n = 0
    for name in r.class_names():
        for seed in seeds:
            for image in r.images(name, seed, scale):
                n += 1
                for k, ok in is_right(name, image).items():
                    counts[k] += int(ok)
                if keep is not None:
                    keep.append(image)
    return {k: v / n for k, v in counts.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the built-in one)")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.0])
    p.add_argument("--grid", type=Path, default=None,
                   help="PNG: one row per class at the workflow's own guidance")
    p.add_argument("--set", action="append", default=[], metavar="ID.INPUT=VALUE")
    a = p.parse_args(argv)
    t0 = time.time()
    r = ClassRenderer(a.model, a.set)
    seeds = list(range(1, a.seeds + 1))
    default = float(r.graph.node("cfg").values["scale"])
    print(f"{len(r.class_names())} classes x {len(seeds)} seeds; "
          f"workflow guidance {default:g}")
    print("| guidance | class | colour | shape |\n|---:|---:|---:|---:|")
    for scale in a.scales:
        keep: list | None = [] if (a.grid and scale == default) else None
        got = score(r, seeds, scale, keep)
        mark = " (default)" if scale == default else ""
        print(f"| {scale:g}{mark} | {got['class'] * 100:.1f} % | {got['colour'] * 100:.1f} % "
              f"| {got['shape'] * 100:.1f} % |")
        if keep:
            save_grid(keep, a.grid, cols=len(seeds), scale=2)
    print(f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
