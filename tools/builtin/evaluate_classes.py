"""Scores the class-conditional built-in model (resources/models/loom-classes) with the
project's analyser: for every class, images from several seeds through the shipped workflow
(resources/workflows/builtin/class_conditional.json), and the share whose colour and shape both
match the class name, with guidance and without (scale 1: the conditional prediction alone).

    python -m tools.builtin.evaluate_classes                 # the README's table
    python -m tools.builtin.evaluate_classes --scales 1 2 3 5 --seeds 8

With --classifier-scales, classifier guidance too (the noise-aware classifier of
resources/models/loom-classifier, through resources/workflows/builtin/classifier_guidance.json,
CFG scale 1): on the unconditional model (the null label, the class from the classifier alone)
and on top of the class label, at each scale; --timing adds the cost of a guided step.

    python -m tools.builtin.evaluate_classes --seeds 8 --scales 1 2 --classifier-scales 2 4 8
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
CG_WORKFLOW = ROOT / "resources" / "workflows" / "builtin" / "classifier_guidance.json"


class ClassRenderer:
    """The class-conditional workflow in one engine session (the model loads once); the
    classifier guidance workflow beside it, loaded when first asked for."""

    def __init__(self, model: str | None = None, overrides: list[str] | None = None,
                 classifier: str | None = None):
        from engine.api import Session, apply_overrides
        self.session = Session()
        self.graph = self.session.load(WORKFLOW)
        self.model, self.classifier, self.overrides = model, classifier, overrides or []
        if model:
            self.session.set(self.graph, "loader.path", str(model))
        apply_overrides(self.graph, self.session.registry, self.overrides)
        self._guided = None

    def guided_graph(self):
        """The classifier guidance workflow (with the same model and overrides)."""
        if self._guided is None:
            from engine.api import apply_overrides
            g = self.session.load(CG_WORKFLOW)
            if self.model:
                self.session.set(g, "loader.path", str(self.model))
            if self.classifier:
                self.session.set(g, "classifier.path", str(self.classifier))
            apply_overrides(g, self.session.registry, self.overrides)
            self._guided = g
        return self._guided

    def class_names(self) -> list[str]:
        folder = Path(self.graph.node("loader").values["path"])
        if not folder.is_absolute():
            folder = ROOT / folder
        return json.loads((folder / "class_names.json").read_text())

    def images(self, label: str, seed: int, scale: float, batch: int = 1,
               guide: float | None = None, pure: bool = False) -> list[np.ndarray]:
        """Images of the class `label` at CFG `scale`; with `guide`, classifier guidance at
        that scale too, the CFG's positive the null class if `pure` else the label."""
        s, g = self.session, self.graph
        if guide is not None:
            g = self.guided_graph()
            s.set(g, "guide.label", label)
            s.set(g, "guide.scale", guide)
            g.connect("label", "null" if pure else "conditioning", "cfg", "positive")
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
          keep: list | None = None, guide: float | None = None,
          pure: bool = False) -> dict[str, float]:
    counts = {"colour": 0, "shape": 0, "class": 0}
    n = 0
    for name in r.class_names():
        for seed in seeds:
            for image in r.images(name, seed, scale, guide=guide, pure=pure):
                n += 1
                for k, ok in is_right(name, image).items():
                    counts[k] += int(ok)
                if keep is not None:
                    keep.append(image)
    return {k: v / n for k, v in counts.items()}


def step_cost(r: ClassRenderer, batch: int = 8, repeats: int = 2) -> dict[str, float]:
    """Seconds per sampling step of a batch: CFG scale 1 (one UNet row per image), CFG 2
    (two), and classifier guidance at CFG 1 (one row + the classifier forward and backward);
    the best of `repeats` runs of the whole workflow, divided by its steps."""
    steps = int(r.graph.node("scheduler").values["steps"])
    name = r.class_names()[0]
    out = {}
    for key, scale, guide in (("plain (CFG 1)", 1.0, None), ("CFG 2", 2.0, None),
                              ("classifier (CFG 1)", 1.0, 4.0)):
        best = float("inf")
        for rep in range(repeats):
            t0 = time.perf_counter()
            r.images(name, 100 + rep, scale, batch=batch, guide=guide)
            best = min(best, time.perf_counter() - t0)
        out[key] = best / steps
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the built-in one)")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--scales", type=float, nargs="*", default=[1.0, 3.0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--grid", type=Path, default=None,
                   help="PNG: one row per class at the workflow's own guidance")
    p.add_argument("--set", action="append", default=[], metavar="ID.INPUT=VALUE")
    p.add_argument("--classifier-scales", type=float, nargs="*", default=[],
                   help="classifier guidance scales to score (CFG scale 1)")
    p.add_argument("--on", nargs="+", default=["null", "label"], choices=["null", "label"],
                   help="classifier guidance on the null label (the unconditional model) "
                        "and/or on the class label")
    p.add_argument("--classifier", default=None,
                   help="noise-aware classifier folder (default: the built-in one)")
    p.add_argument("--timing", action="store_true",
                   help="also time a plain, a CFG and a classifier-guided step")
    a = p.parse_args(argv)
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    t0 = time.time()
    r = ClassRenderer(a.model, a.set, a.classifier)
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
    for guide in a.classifier_scales:
        for on in a.on:
            got = score(r, seeds, 1.0, guide=guide, pure=on == "null")
            what = "null label" if on == "null" else "class label"
            print(f"| 1 + classifier {guide:g} ({what}) | {got['class'] * 100:.1f} % "
                  f"| {got['colour'] * 100:.1f} % | {got['shape'] * 100:.1f} % |", flush=True)
    if a.timing:
        for key, sec in step_cost(r).items():
            print(f"step of 8 images, {key}: {sec * 1000:.0f} ms")
    print(f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
