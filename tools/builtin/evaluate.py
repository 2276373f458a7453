"""Scores the built-in model: renders a fixed list of prompts through the engine (the default
workflow, several seeds each) and reads every image back with the shapes analyser.

    python -m tools.builtin.evaluate [--model PATH] [--seeds 4] [--scales 1 5] [--json FILE]
                                     [--grid PNG]

Prints a table: per prompt set (held-in colour+shape pairs, held-out pairs that never appeared
in training) and guidance scale, how often the colour, shape, position and background of the
image match the prompt. Then the negative-prompt check (how often "a circle" comes out red with
and without the negative prompt "red"), the inpainting check (blend method), and what the
autoencoder alone gives back (drawn scenes encoded and decoded: the most the model can reach).
Deterministic on the CPU.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.builtin import shapes

ROOT = Path(__file__).resolve().parents[2]
MEASURES = ("colour", "shape", "position", "background")


def held_in_prompts(n: int = 24, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        scene = shapes.random_scene(rng)
        text = shapes.scene_caption(scene).text()
        if text not in out:
            out.append(text)
    return out


def held_out_prompts(per_pair: int = 3, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    out = []
    for colour, shape in sorted(shapes.HELD_OUT):
        for _ in range(per_pair):
            scene = shapes.random_scene(rng, shapes.Caption(colour=colour, shape=shape),
                                        allow_held_out=True)
            out.append(shapes.scene_caption(scene).text())
    return out


def colour_prompts(seed: int = 13) -> list[str]:
    """Every colour with every shape it is trained with (held-out pairs left out), each on a
    background drawn at random among those it may be drawn on: 36 prompts that ask for each
    colour 3-4 times, so a colour the model mixes up with another shows up per colour."""
    rng = random.Random(seed)
    out = []
    for colour in shapes.COLOURS:
        for shape in shapes.SHAPES:
            if (colour, shape) in shapes.HELD_OUT:
                continue
            scene = shapes.random_scene(rng, shapes.Caption(colour=colour, shape=shape))
            out.append(shapes.Caption(colour=colour, shape=shape,
                                      background=scene.background).text())
    return out


def colour_confusion(r: Renderer, prompts: list[str], seeds: list[int],
                     scale: float) -> dict[str, dict[str, int]]:
    """For each colour asked for, how often the analyser read each colour (None: no shape)."""
    table: dict[str, dict[str, int]] = {}
    for prompt in prompts:
        want = shapes.parse_caption(prompt).colour
        for seed in seeds:
            for image in r.images(prompt, seed, scale):
                got = str(shapes.analyse(image).colour)
                row = table.setdefault(want, {})
                row[got] = row.get(got, 0) + 1
    return table


def fmt_confusion(table: dict[str, dict[str, int]]) -> str:
    lines = ["| colour asked | right | read instead |", "|---|---:|---|"]
    total = right = 0
    for colour, row in table.items():
        n = sum(row.values())
        ok = row.get(colour, 0)
        total, right = total + n, right + ok
        wrong = ", ".join(f"{k} {v}" for k, v in sorted(row.items(), key=lambda kv: -kv[1])
                          if k != colour) or "-"
        lines.append(f"| {colour} | {ok}/{n} | {wrong} |")
    lines.append(f"| **all** | **{right}/{total} ({100 * right / max(1, total):.1f} %)** | |")
    return "\n".join(lines)


class Renderer:
    """A workflow (the default one unless named) in one engine session (models and prompt
    encodings are cached), with the model and any `--set` overrides applied."""

    def __init__(self, model: str | None = None, device: str = "cpu",
                 overrides: list[str] | None = None, workflow: Path | None = None):
        from engine.api import DEFAULT_WORKFLOW, Session, apply_overrides
        self.session = Session()
        self.graph = self.session.load(workflow or DEFAULT_WORKFLOW)
        self.device = device
        if model:
            self.session.set(self.graph, "checkpoint.path", str(model))
        apply_overrides(self.graph, self.session.registry, overrides or [])

    def run(self, outputs: list[str]) -> dict:
        """The named nodes' outputs; a failed run raises, naming the nodes' errors."""
        result = self.session.run(self.graph, outputs=outputs, device=self.device)
        if not result.ok:
            raise RuntimeError("; ".join(str(e) for e in result.errors.values()))
        return result.outputs

    def images(self, prompt: str, seed: int, scale: float = 5.0, negative: str = "",
               batch: int = 1, **overrides) -> list[np.ndarray]:
        """uint8 H×W×3 images for one prompt and seed."""
        s, g = self.session, self.graph
        s.set(g, "prompt.text", prompt)
        s.set(g, "negative.text", negative)
        s.set(g, "noise.seed", seed)
        s.set(g, "noise.batch", batch)
        s.set(g, "cfg.scale", scale)
        for target, value in overrides.items():
            s.set(g, target.replace("__", "."), value)
        return to_uint8(self.run(["decode"])["decode"]["image"])


def to_uint8(image) -> list[np.ndarray]:
    a = image.detach().float().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy()
    return list(a)


@dataclass
class Tally:
    right: dict[str, int]
    asked: dict[str, int]

    @classmethod
    def empty(cls) -> Tally:
        return cls({m: 0 for m in MEASURES}, {m: 0 for m in MEASURES})

    def add(self, prompt: str, image: np.ndarray) -> dict[str, bool | None]:
        verdict = shapes.score(shapes.parse_caption(prompt), shapes.analyse(image))
        for m, ok in verdict.items():
            if ok is not None:
                self.asked[m] += 1
                self.right[m] += int(ok)
        return verdict

    def rates(self) -> dict[str, float]:
        return {m: self.right[m] / self.asked[m] if self.asked[m] else float("nan")
                for m in MEASURES}


def score_prompts(r: Renderer, prompts: list[str], seeds: list[int], scale: float,
                  keep: list | None = None) -> dict[str, float]:
    tally = Tally.empty()
    for prompt in prompts:
        for seed in seeds:
            for image in r.images(prompt, seed, scale):
                tally.add(prompt, image)
                if keep is not None:
                    keep.append(image)
    return tally.rates()


EXAMPLES = ROOT / "resources" / "workflows" / "builtin"


def red_rate(model: str | None, seeds: list[int], negative: str, device: str = "cpu",
             overrides: list[str] | None = None) -> float:
    """The negative-prompt example ("a circle", 4 images per seed) with `negative` as its
    negative prompt: how often red appears (the shape or the background is red), over
    len(seeds) × 4 images. "a circle" leaves both colours open, so without a negative prompt
    about one image in five has red somewhere."""
    r = Renderer(model, device, overrides, EXAMPLES / "negative_prompt.json")
    r.session.set(r.graph, "negative.text", negative)
    hits = total = 0
    for seed in seeds:
        r.session.set(r.graph, "noise.seed", seed)
        for image in to_uint8(r.run(["decode"])["decode"]["image"]):
            total += 1
            a = shapes.analyse(image)
            hits += a.colour == "red" or a.background == "red"
    return hits / total


def inpaint_check(model: str | None, seeds: list[int], device: str = "cpu",
                  overrides: list[str] | None = None) -> dict[str, float]:
    """The inpaint example (blend method): the picture holds a large red circle in the center on
    white; the mask covers the middle 48×48 pixels; the prompt asks for "a yellow star on a
    white background". Returns how often the picture then holds a yellow object, a star, and
    still a red one, and the mean absolute change (0..255) of the unmasked border pixels:
    straight from the VAE decoder (`raw`) and after the workflow's composite step."""
    from PIL import Image

    r = Renderer(model, device, overrides, EXAMPLES / "inpaint.json")
    s, g = r.session, r.graph
    # the picture and mask the workflow itself loads (paths relative to the project root)
    original = np.asarray(Image.open(ROOT / g.node("image").values["image"]).convert("RGB"),
                          np.float32)
    keep = np.asarray(Image.open(ROOT / g.node("mask").values["image"]).convert("L")) < 128
    yellow = star = red = 0
    changes, raw = [], []
    for seed in seeds:
        s.set(g, "noise.seed", seed)
        out = r.run(["decode", "composite"])
        img = to_uint8(out["composite"]["image"])[0]
        dec = to_uint8(out["decode"]["image"])[0]
        changes.append(float(np.abs(img[keep].astype(np.float32) - original[keep]).mean()))
        raw.append(float(np.abs(dec[keep].astype(np.float32) - original[keep]).mean()))
        a = shapes.analyse(img)
        yellow += a.colour == "yellow"
        star += a.shape == "star"
        red += a.colour == "red"
    n = len(seeds)
    return {"yellow_in_mask": yellow / n, "star_in_mask": star / n, "red_left": red / n,
            "unmasked_change": float(np.mean(changes)),
            "unmasked_change_raw": float(np.mean(raw))}


def autoencoder_ceiling(model: str | None, n: int = 300, seed: int = 5) -> dict[str, float]:
    """What the model's autoencoder alone can draw: n random scenes drawn exactly, encoded and
    decoded (no diffusion), scored by the analyser. The shape rate here bounds what the whole
    model can reach; returned per measure and, for shape, per shape and per size."""
    import torch
    from diffusers import AutoencoderKL

    from tools.builtin.train import to_tensor
    folder = Path(model) if model else ROOT / "resources" / "models" / "loom-shapes"
    vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32).eval()
    rng = random.Random(seed)
    scenes = [shapes.random_scene(rng) for _ in range(n)]
    x = to_tensor(np.stack([shapes.render(sc)[0] for sc in scenes]))
    with torch.no_grad():
        decoded = torch.cat([vae.decode(vae.encode(x[i:i + 100]).latent_dist.mean).sample
                             for i in range(0, n, 100)])
    tally = Tally.empty()
    by_kind: dict[str, list[int]] = {}          # "shape star" -> [right, asked]
    for sc, image in zip(scenes, to_uint8(decoded.add(1.0).div(2.0))):
        right = tally.add(shapes.scene_caption(sc).text(), image)["shape"]
        for kind in (sc.shape, sc.size):
            counts = by_kind.setdefault(f"shape {kind}", [0, 0])
            counts[0] += int(bool(right))
            counts[1] += 1
    return {**tally.rates(), **{k: r / a for k, (r, a) in by_kind.items()}}


def fmt_table(rows: list[tuple[str, float, dict[str, float]]]) -> str:
    lines = [f"{'prompts':<10} {'guidance':>8} " + " ".join(f"{m:>10}" for m in MEASURES)]
    for name, scale, rates in rows:
        lines.append(f"{name:<10} {scale:>8g} " + " ".join(f"{rates[m] * 100:>9.1f}%"
                                                        for m in MEASURES))
    return "\n".join(lines)


def save_grid(images: list[np.ndarray], path: Path, cols: int = 8, scale: int = 2) -> None:
    from PIL import Image
    rows = [np.concatenate(images[i:i + cols], axis=1) for i in range(0, len(images) - cols + 1,
                                                                      cols)]
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST).save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the built-in model)")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 5.0])
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--grid", type=Path, default=None, help="PNG of the held-in samples")
    p.add_argument("--set", action="append", default=[], metavar="ID.INPUT=VALUE",
                   help="change an input of the workflows rendered, e.g. cfg.rescale=0.7")
    a = p.parse_args(argv)
    t0 = time.time()
    r = Renderer(a.model, overrides=a.set)
    seeds = list(range(1, a.seeds + 1))
    default_scale = float(r.graph.node("cfg").values["scale"])
    # the grid shows the workflow's own guidance when it is among the scales measured
    grid_scale = default_scale if default_scale in a.scales else max(a.scales)
    sets = {"held-in": held_in_prompts(), "held-out": held_out_prompts()}
    rows, report = [], {"seeds": seeds, "prompts": sets, "scores": {}}
    for name, prompts in sets.items():
        for scale in a.scales:
            keep: list | None = [] if (a.grid and name == "held-in" and scale == grid_scale) \
                else None
            rates = score_prompts(r, prompts, seeds, scale, keep)
            rows.append((name, scale, rates))
            report["scores"][f"{name}@{scale:g}"] = rates
            if keep:
                save_grid(keep[:64], a.grid)
    print(f"{len(seeds)} seeds per prompt; {len(sets['held-in'])} held-in and "
          f"{len(sets['held-out'])} held-out prompts (pairs never trained: "
          f"{', '.join(' '.join(p) for p in sorted(shapes.HELD_OUT))})")
    print(fmt_table(rows))
    confusion = colour_confusion(r, colour_prompts(), seeds, default_scale)
    print(f"\nEvery colour with every trained shape ({len(colour_prompts())} prompts, "
          f"guidance {default_scale:g}):")
    print(fmt_confusion(confusion))
    report["colour_confusion"] = confusion
    neg_seeds = list(range(1, 4 * a.seeds + 1))
    red_plain = red_rate(a.model, neg_seeds, "", overrides=a.set)
    red_neg = red_rate(a.model, neg_seeds, "red", overrides=a.set)
    print(f'\n"a circle": red (shape or background) in {red_plain * 100:.0f}% of '
          f'{4 * len(neg_seeds)} images; with negative prompt "red": {red_neg * 100:.0f}%')
    inp = inpaint_check(a.model, list(range(1, 2 * a.seeds + 1)), overrides=a.set)
    print(f"inpaint (blend), a red circle masked and \"a yellow star\" asked for: yellow "
          f"{inp['yellow_in_mask'] * 100:.0f}%, star {inp['star_in_mask'] * 100:.0f}%, still red "
          f"{inp['red_left'] * 100:.0f}%; "
          f"unmasked pixels changed by {inp['unmasked_change_raw']:.1f}/255 on average as "
          f"decoded, {inp['unmasked_change']:.1f}/255 after the composite step")
    ceiling = autoencoder_ceiling(a.model)
    print("autoencoder alone (300 drawn scenes encoded and decoded): " + ", ".join(
        f"{k} {v * 100:.0f}%" for k, v in ceiling.items()))
    report.update(red_without_negative=red_plain, red_with_negative=red_neg, inpaint=inp,
                  autoencoder=ceiling)
    print(f"({time.time() - t0:.0f} s)")
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
