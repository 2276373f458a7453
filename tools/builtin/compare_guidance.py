"""GLIDE's comparison at toy scale: CLIP guidance against classifier-free guidance on the
built-in text model, the same prompts and seeds for every row.

    python -m tools.builtin.compare_guidance [--prompts 24] [--seeds 4] [--clip-scales 1 3 10 30]
                                             [--json FILE] [--grid PNG]

Renders resources/workflows/builtin/clip_guidance.json through evaluate.py's Renderer (one
engine session: models and prompt encodings cached) and reads every image back with the
shapes analyser (evaluate.Tally). Rows:
  no guidance      the conditional model alone (CFG scale 1, CLIP scale 0)
  CFG              the default workflow's guidance (scale, rescale and interval as there)
  CLIP s           CLIP guidance at scale s on the conditional model (CFG 1), as GLIDE does
  CFG + CLIP s     both
Columns: how often the colour, shape, position and background the prompt names are what the
analyser reads (held-in prompts: evaluate.held_in_prompts, full captions), the mean RMS pixel
distance (0..255) of each image to the nearest of a bank of freshly drawn training images (how
far from anything the data set holds: smears, artefacts and off-palette colours raise it; it is
a measure of "looks like the data", not of following), and CPU seconds per image (process
time, so other work on the machine does not inflate it; one torch thread unless --threads says
otherwise; batch 1, 20 steps).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from tools.builtin import shapes
from tools.builtin.evaluate import MEASURES, Renderer, Tally, held_in_prompts, save_grid

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "resources" / "workflows" / "builtin" / "clip_guidance.json"
DEFAULT_WORKFLOW = ROOT / "resources" / "workflows" / "default.json"


class Bank:
    """n freshly drawn training images (shapes.random_scene, rendered exactly), for the
    distance of a generated image to the nearest of them."""

    def __init__(self, n: int, seed: int = 2024):
        import torch

        rng = random.Random(seed)
        images = np.stack([shapes.render(shapes.random_scene(rng))[0] for _ in range(n)])
        self.x = torch.from_numpy(images.reshape(n, -1).astype(np.float32))
        self.sq = (self.x ** 2).sum(1)

    def nearest_rms(self, image: np.ndarray) -> float:
        """RMS difference (0..255 per value) to the nearest bank image."""
        import torch

        q = torch.from_numpy(image.reshape(1, -1).astype(np.float32))
        d2 = self.sq + (q ** 2).sum() - 2 * (self.x @ q[0])
        return float(d2.clamp(min=0).min().div(q.shape[1]).sqrt())


def cfg_settings() -> dict[str, float]:
    """The default workflow's CFG Combine inputs (scale, rescale, start, end)."""
    doc = json.loads(DEFAULT_WORKFLOW.read_text())
    inputs = doc["nodes"]["cfg"]["inputs"]
    return {k: float(inputs[k]) for k in ("scale", "rescale", "start", "end")}


def rows_for(clip_scales: list[float], both: list[float]) -> list[tuple[str, dict]]:
    """(name, overrides) per row; overrides as Renderer.images takes them."""
    cfg = cfg_settings()
    plain = {"scale": 1.0, "cfg__rescale": 0.0, "cfg__start": 0.0, "cfg__end": 1.0}
    default = {"scale": cfg["scale"], "cfg__rescale": cfg["rescale"],
               "cfg__start": cfg["start"], "cfg__end": cfg["end"]}
    rows = [("no guidance", {**plain, "guide__scale": 0.0}),
            (f"CFG {cfg['scale']:g}", {**default, "guide__scale": 0.0})]
    rows += [(f"CLIP {s:g}", {**plain, "guide__scale": s}) for s in clip_scales]
    rows += [(f"CFG {cfg['scale']:g} + CLIP {s:g}", {**default, "guide__scale": s})
             for s in both]
    return rows


def measure(r: Renderer, prompts: list[str], seeds: list[int], overrides: dict, bank: Bank,
            keep: list | None = None) -> dict[str, float]:
    tally = Tally.empty()
    dists, n = [], 0
    t0 = time.process_time()
    for prompt in prompts:
        for seed in seeds:
            for image in r.images(prompt, seed, **overrides):
                tally.add(prompt, image)
                dists.append(bank.nearest_rms(image))
                n += 1
                if keep is not None:
                    keep.append(image)
    seconds = (time.process_time() - t0) / n   # CPU time: other processes do not inflate it
    return {**tally.rates(), "distance": float(np.mean(dists)), "seconds": seconds}


def fmt(rows: list[tuple[str, dict[str, float]]]) -> str:
    lines = ["| guidance | " + " | ".join(MEASURES) + " | distance to data | CPU s / image |",
             "|---|" + "---:|" * (len(MEASURES) + 2)]
    for name, m in rows:
        lines.append(f"| {name} | " + " | ".join(f"{m[k] * 100:.1f} %" for k in MEASURES)
                     + f" | {m['distance']:.1f} | {m['seconds']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prompts", type=int, default=24)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--clip-scales", type=float, nargs="+", default=[1.0, 3.0, 10.0, 30.0])
    p.add_argument("--both", type=float, nargs="*", default=[3.0, 10.0],
                   help="CLIP scales also tried on top of the default CFG")
    p.add_argument("--bank", type=int, default=4000, help="training images to measure against")
    p.add_argument("--workflow", type=Path, default=WORKFLOW)
    p.add_argument("--set", action="append", default=[], metavar="ID.INPUT=VALUE",
                   help="change an input of the workflow, e.g. clip.path=build/clip/out")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--grid", type=Path, default=None,
                   help="PNG: the first 8 images of each row, one row each")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    t0 = time.time()
    bank = Bank(a.bank)
    prompts = held_in_prompts(a.prompts)
    seeds = list(range(1, a.seeds + 1))
    r = Renderer(workflow=a.workflow, overrides=a.set)
    rows = rows_for(a.clip_scales, a.both)
    r.images(prompts[0], 0, **rows[-1][1])   # loads the models: not part of any row's time
    results, grid = [], []
    for name, overrides in rows:
        keep: list = []
        results.append((name, measure(r, prompts, seeds, overrides, bank, keep)))
        grid += keep[:8 * a.seeds:a.seeds]   # the first seed of the first 8 prompts
        print(fmt(results[-1:]).splitlines()[-1], flush=True)
    print(f"\n{len(prompts)} held-in prompts x {len(seeds)} seeds per row; distance: RMS "
          f"(0..255) to the nearest of {a.bank} drawn training images")
    print(fmt(results))
    print(f"({time.time() - t0:.0f} s)")
    if a.grid:
        save_grid(grid, a.grid)
    if a.json:
        a.json.write_text(json.dumps({"prompts": prompts, "seeds": seeds,
                                      "rows": dict(results)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
