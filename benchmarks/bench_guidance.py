"""What one guided step costs against a plain (CFG) step, for every guidance Loom ships.

    python benchmarks/bench_guidance.py [--repeats 10] [--batch 4] [--threads 0]

For each shipped guidance workflow (resources/workflows/builtin/: colour_guidance.json,
classifier_guidance.json, clip_guidance.json) it builds the graph up to its guidance node
`guide` and the CFG Combine `cfg` underneath it, then times one call of each denoiser on the
same random sample at a mid timestep (t = 500, guidance on), alternating plain and guided
rounds so drift of the machine's speed hits both alike. Prints ms per step and the ratio
guided / plain. CPU, fp32.
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

BUILTIN = ROOT / "resources" / "workflows" / "builtin"
WORKFLOWS = {
    "colour guidance (Loss Guidance through the VAE)": "colour_guidance.json",
    "classifier guidance (noise-aware classifier)": "classifier_guidance.json",
    "CLIP guidance (noise-aware CLIP)": "clip_guidance.json",
}


def step_times(workflow: Path, batch: int, repeats: int) -> tuple[float, float, tuple]:
    """(plain s, guided s, sample shape) for one denoiser call at t = 500."""
    from engine.api import Session

    s = Session()
    g = s.load(workflow)
    s.set(g, "guide.start", 0.0)
    s.set(g, "guide.end", 1.0)
    result = s.run(g, outputs=["guide", "cfg", "noise"], device="cpu")
    if not result.ok:
        raise RuntimeError("; ".join(str(e) for e in result.errors.values()))
    guided = result.output("guide", "denoiser")
    plain = result.output("cfg", "denoiser")
    noise = result.output("noise", "noise")
    sample = noise.samples
    shape = (batch, *tuple(sample.shape[1:]))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500.0)
    totals = {"plain": 0.0, "guided": 0.0}
    with torch.no_grad():
        plain(x, t), guided(x, t)  # warm up
        for _ in range(repeats):
            for name, denoiser in (("plain", plain), ("guided", guided)):
                start = time.perf_counter()
                denoiser(x, t)
                totals[name] += time.perf_counter() - start
    return totals["plain"] / repeats, totals["guided"] / repeats, shape


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print("| guidance | sample | plain step (ms) | guided step (ms) | guided / plain |")
    print("|---|---|---:|---:|---:|")
    for title, name in WORKFLOWS.items():
        path = BUILTIN / name
        if not path.is_file():
            print(f"| {title} | (no {name}) | | | |")
            continue
        plain, guided, shape = step_times(path, a.batch, a.repeats)
        print(f"| {title} | {'x'.join(map(str, shape))} | {plain * 1000:.1f} | "
              f"{guided * 1000:.1f} | {guided / plain:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
