"""Colour guidance on the built-in model: how much bluer "towards blue" makes the images, whether
the analyser still reads the prompt's shape, and what a guided step costs.

    python benchmarks/bench_colour_guidance.py [--prompts 16] [--scales 0 1 1.5] [--end 0.8]

Runs resources/workflows/builtin/colour_guidance.json on the CPU for the first `--prompts`
held-in prompts of tools.builtin.evaluate (seed 100 + i, 4 images each) at each scale (0 = the
unguided image), and prints per scale the mean blue share of the images (mean of B/(R+G+B))
and how many of them the analyser (tools.builtin.shapes) reads as the prompt's shape. Then
times one plain denoiser call (CFG Combine) and one guided call (Colour Guidance on every step)
on a batch of 4 latents.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

WORKFLOW = ROOT / "resources" / "workflows" / "builtin" / "colour_guidance.json"


def blue_share(image: torch.Tensor) -> torch.Tensor:
    rgb = image.clamp(0, 1)
    return (rgb[:, 2] / (rgb.sum(1) + 1e-6)).mean(dim=(1, 2))


def main(argv: list[str] | None = None) -> int:
    from engine.api import Session
    from tools.builtin import shapes
    from tools.builtin.evaluate import held_in_prompts, to_uint8

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 1.5])
    ap.add_argument("--end", type=float, default=None, help="guide.end (default: the workflow's)")
    args = ap.parse_args(argv)

    s = Session()
    g = s.load(WORKFLOW)
    if args.end is not None:
        s.set(g, "guide.end", args.end)
    prompts = held_in_prompts(args.prompts)
    for scale in args.scales:
        s.set(g, "guide.scale", scale)
        shares, read, asked = [], 0, 0
        for i, prompt in enumerate(prompts):
            s.set(g, "prompt.text", prompt)
            s.set(g, "noise.seed", 100 + i)
            s.set(g, "noise.batch", 4)
            result = s.run(g, outputs=["decode"], device="cpu")
            assert result.ok, result.errors
            image = result.output("decode", "image")
            shares += blue_share(image).tolist()
            for picture in to_uint8(image):
                verdict = shapes.score(shapes.parse_caption(prompt), shapes.analyse(picture))
                if verdict["shape"] is not None:
                    asked += 1
                    read += int(verdict["shape"])
        print(f"scale {scale:g}: mean blue share {sum(shares) / len(shares):.4f}, shape read "
              f"{read}/{asked} ({len(shares)} images)", flush=True)

    s.set(g, "guide.end", 1.0)
    s.set(g, "guide.scale", 1.0)
    result = s.run(g, outputs=["guide", "cfg"], device="cpu")
    assert result.ok, result.errors
    guided, plain = result.output("guide", "denoiser"), result.output("cfg", "denoiser")
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500.0)
    times = {}
    for name, denoiser in (("plain", plain), ("guided", guided)) * 2:
        with torch.no_grad():
            denoiser(x, t)
            start = time.perf_counter()
            for _ in range(10):
                denoiser(x, t)
            times[name] = (time.perf_counter() - start) / 10
    print(f"one step, batch 4: plain (CFG) {times['plain'] * 1000:.1f} ms, guided "
          f"{times['guided'] * 1000:.1f} ms ({times['guided'] / times['plain']:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
