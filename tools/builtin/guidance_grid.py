"""The README's picture of guidance: one row per way of steering the built-in models, one
column per seed (the same seeds in every row), rendered through the shipped workflows.

    python -m tools.builtin.guidance_grid [--out resources/screenshots/guidance_grid.png]
                                          [--seeds 8] [--label "red star"]
                                          [--prompt "a red star on a white background"]

Rows, class-conditional model (resources/models/loom-classes, 32 px, shown at 64 px):
  unguided (the class label, CFG scale 1) / CFG / classifier guidance (the class label at CFG
  scale 1 plus the noise-aware classifier's gradient: the shipped workflow) / the classifier
  alone (the null class: the unconditional model, steered by the classifier only);
text-to-image model (resources/models/loom-shapes, 64 px):
  unguided (the prompt, CFG scale 1) / CFG (the default workflow's scale) / CLIP guidance
  (GLIDE: the prompt's CFG off, the noise-aware CLIP's gradient on) / colour guidance
  ("towards blue" on top of CFG).
Deterministic on the CPU.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BUILTIN = ROOT / "resources" / "workflows" / "builtin"
CELL = 64


@dataclass
class Row:
    title: str
    workflow: Path
    values: dict[str, object] = field(default_factory=dict)
    """node.input -> value, on top of the workflow's own (the label or prompt is added)."""
    label_inputs: tuple[str, ...] = ("prompt.text",)


def rows(label: str, prompt: str) -> list[Row]:
    cls = BUILTIN / "class_conditional.json"
    text = ROOT / "resources" / "workflows" / "default.json"
    return [
        Row("class model: unguided", cls, {"cfg.scale": 1.0}, ("label.label",)),
        Row("CFG (scale 2)", cls, {}, ("label.label",)),
        Row("classifier (scale 2)", BUILTIN / "classifier_guidance.json", {},
            ("label.label", "guide.label")),
        Row("classifier alone (null)", BUILTIN / "classifier_guidance.json",
            {"label.label": "10"}, ("guide.label",)),
        Row("text model: unguided", text, {"cfg.scale": 1.0}),
        Row("CFG (scale 5)", text, {}),
        Row("CLIP guidance (scale 3)", BUILTIN / "clip_guidance.json", {}),
        Row("colour guidance (blue)", BUILTIN / "colour_guidance.json", {}),
    ]


def image_node(graph) -> str:
    """The node whose image the workflow's Save Image node saves."""
    saves = {n.id for n in graph.nodes.values() if n.type == "image.save"}
    for edge in graph.edges:
        if edge.dst in saves and edge.input == "images":
            return edge.src
    raise ValueError("the workflow has no Save Image node with a connected image")


def render_row(row: Row, text: str, seeds: list[int]) -> list[np.ndarray]:
    from engine.api import Session
    from tools.builtin.evaluate import to_uint8

    s = Session()
    g = s.load(row.workflow)
    for target, value in {**row.values, **dict.fromkeys(row.label_inputs, text)}.items():
        s.set(g, target, value)
    s.set(g, "noise.batch", 1)
    out = image_node(g)
    cells = []
    for seed in seeds:
        s.set(g, "noise.seed", seed)
        result = s.run(g, outputs=[out], device="cpu")
        if not result.ok:
            raise RuntimeError(f"{row.title}: " + "; ".join(str(e) for e in
                                                           result.errors.values()))
        (image,) = to_uint8(result.outputs[out]["image"])
        if image.shape[0] != CELL:  # the 32 px class model, shown at the same size
            k = CELL // image.shape[0]
            image = image.repeat(k, axis=0).repeat(k, axis=1)
        cells.append(image)
    return cells


def compose(titled: list[tuple[str, list[np.ndarray]]], path: Path, header: str = "",
            scale: int = 2) -> None:
    """Rows of cells with their titles in a left margin under a one-line header, written to a
    temporary file first."""
    from PIL import Image, ImageDraw

    margin, pad, top = 170, 2, 22
    cols = max(len(cells) for _, cells in titled)
    width = margin + cols * (CELL * scale + pad)
    height = top + len(titled) * (CELL * scale + pad)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 5), header, fill=(20, 20, 20))
    for r, (title, cells) in enumerate(titled):
        y = top + r * (CELL * scale + pad)
        draw.text((6, y + CELL * scale // 2 - 6), title, fill=(20, 20, 20))
        for c, cell in enumerate(cells):
            tile = Image.fromarray(cell).resize((CELL * scale, CELL * scale),
                                                Image.Resampling.NEAREST)
            sheet.paste(tile, (margin + c * (CELL * scale + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    sheet.save(tmp)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "resources" / "screenshots" /
                   "guidance_grid.png")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--label", default="red star")
    p.add_argument("--prompt", default="a red star on a white background")
    a = p.parse_args(argv)
    seeds = [1000 + i for i in range(a.seeds)]
    titled = []
    for row in rows(a.label, a.prompt):
        text = a.prompt if row.label_inputs == ("prompt.text",) else a.label
        titled.append((row.title, render_row(row, text, seeds)))
        print(f"{row.title}: done", flush=True)
    compose(titled, a.out, f"class '{a.label}' (rows 1-4) and prompt '{a.prompt}' (rows "
                           f"5-8); seeds {seeds[0]}-{seeds[-1]}, one per column")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
