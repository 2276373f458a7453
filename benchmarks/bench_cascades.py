"""Two-stage cascades: the Loom graph vs the diffusers pipelines, on the same weights and seeds.

    python benchmarks/bench_cascades.py [--size tiny|small] [--steps 10] [--pairs 3] [--threads N]

Cases (random-weight models built here from configs by the equality tests' builders,
tests/test_unclip.py and tests/test_if_cascade.py, saved as diffusers folders in a temp dir):
  kandinsky22  KandinskyV22PriorPipeline -> KandinskyV22Pipeline
               vs resources/workflows/examples/kandinsky22.json
  if_cascade   IFPipeline -> IFSuperResolutionPipeline
               vs resources/workflows/examples/if_cascade.json
`--size tiny` (default) is the tests' models; `small` has 4x wider UNets and twice the image
size, so that UNet work dominates the per-call overhead that `tiny` mostly measures. `--steps`
is the step count of every denoising loop (prior, decoder; stage I, stage II). CPU, fp32.

Prints per case, measured in this one run, alternating Loom and pipeline (`--pairs` of each,
one image each, same prompt, seeds and settings; Loom's result cache cleared before each run, so
every node runs, as the pipeline does; loaded weights are kept by both):
  the median seconds of Loom and of the pipeline and their ratio;
  Loom's re-run after changing only the second stage's seed (decoder seed / stage II seed: the
  prior / stage I come from the cache) against the pipeline's full re-run, which has no cache;
  the largest pixel difference of the images (0..1) for the full run and for the re-run (the
  latter against the pipeline at the new seed): they should agree (the tests hold 1e-4). At
  `tiny` Kandinsky's latents are 8x8, where Loom convolves without oneDNN (faster; see
  nodes.lib.cpu_conv.SMALL_LATENT_PIXELS): rounding differences that a random model grows
  over the steps (5e-5 at 3 steps, 7e-4 at 10; 0 with that path off or at `small`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

EXAMPLES = ROOT / "resources" / "workflows" / "examples"
PROMPT = "a red circle on a blue background"  # words the tiny IF tokenizer knows
# per size: UNet block widths, Kandinsky image size, IF stage I and stage II sizes
SIZES = {"tiny": dict(channels=(16, 32), kandinsky=64, low=16, high=32),
         "small": dict(channels=(64, 128), kandinsky=128, low=32, high=64)}
PRIOR_SEED, DECODER_SEED = 7, 11
STAGE1_SEED, STAGE2_SEED = 3, 5
PRIOR_GUIDANCE, DECODER_SCALE = 4.0, 4.0
STAGE1_SCALE, STAGE2_SCALE, NOISE_LEVEL = 7.0, 4.0, 250


class Case:
    """One cascade: its Loom session and graph, its two pipelines, and how to run each."""

    name: str
    reseed: str  # the override that changes only the second stage's seed

    def loom(self, out: Path):
        res = self.session.run(self.graph, outputs=["decode"], output_dir=out, device="cpu")
        if not res.ok:
            raise SystemExit(f"{self.name}: Loom run failed: "
                             f"{ {k: e.message for k, e in res.errors.items()} }")
        return res

    def loom_image(self, res):
        return res.outputs["decode"]["image"].float()


class Kandinsky(Case):
    name, reseed = "kandinsky22", "noise.seed"

    def __init__(self, folder: Path, size: dict, steps: int):
        from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline

        from engine.api import Session
        from tests.test_unclip import build_kandinsky_decoder, build_kandinsky_prior

        prior = build_kandinsky_prior(folder / "k_prior")
        decoder = build_kandinsky_decoder(folder / "k_decoder", channels=size["channels"])
        self.px, self.steps = size["kandinsky"], steps
        self.session = s = Session()
        self.graph = g = s.load(EXAMPLES / "kandinsky22.json")
        for target, value in (("prior_loader.path", str(prior)),
                              ("decoder_loader.path", str(decoder)), ("prompt.text", PROMPT),
                              ("prior.steps", steps), ("prior.guidance", PRIOR_GUIDANCE),
                              ("prior.seed", PRIOR_SEED), ("scheduler.steps", steps),
                              ("cfg.scale", DECODER_SCALE), ("noise.seed", DECODER_SEED),
                              ("noise.width", self.px), ("noise.height", self.px)):
            s.set(g, target, value)
        self.prior = _quiet(KandinskyV22PriorPipeline.from_pretrained(
            str(prior), local_files_only=True))
        self.decoder = _quiet(KandinskyV22Pipeline.from_pretrained(
            str(decoder), local_files_only=True))

    def pipeline_image(self, seed: int = DECODER_SEED):
        import torch

        emb, neg = self.prior(PROMPT, num_inference_steps=self.steps,
                              guidance_scale=PRIOR_GUIDANCE,
                              generator=_generator(PRIOR_SEED)).to_tuple()
        out = self.decoder(image_embeds=emb, negative_image_embeds=neg, height=self.px,
                           width=self.px, num_inference_steps=self.steps,
                           guidance_scale=DECODER_SCALE, generator=_generator(seed),
                           output_type="np").images
        return torch.from_numpy(out).permute(0, 3, 1, 2).float()


class DeepFloydIF(Case):
    name, reseed = "if_cascade", "sr.seed"

    def __init__(self, folder: Path, size: dict, steps: int):
        from diffusers import IFPipeline, IFSuperResolutionPipeline

        from engine.api import Session
        from tests.test_if_cascade import build_stage1, build_stage2

        stage1 = build_stage1(folder / "if_stage1", channels=size["channels"])
        stage2 = build_stage2(folder / "if_stage2", channels=size["channels"])
        self.low, self.high, self.steps = size["low"], size["high"], steps
        self.session = s = Session()
        self.graph = g = s.load(EXAMPLES / "if_cascade.json")
        for target, value in (("stage1_loader.path", str(stage1)),
                              ("stage2_loader.path", str(stage2)), ("prompt.text", PROMPT),
                              ("noise.seed", STAGE1_SEED), ("noise.width", self.low),
                              ("noise.height", self.low), ("scheduler.steps", steps),
                              ("cfg.scale", STAGE1_SCALE), ("sr.seed", STAGE2_SEED),
                              ("sr.width", self.high), ("sr.height", self.high),
                              ("sr.noise_level", NOISE_LEVEL), ("scheduler2.steps", steps),
                              ("cfg2.scale", STAGE2_SCALE)):
            s.set(g, target, value)
        self.stage1 = _quiet(IFPipeline.from_pretrained(str(stage1), local_files_only=True))
        self.stage2 = _quiet(IFSuperResolutionPipeline.from_pretrained(
            str(stage2), local_files_only=True))

    def pipeline_image(self, seed: int = STAGE2_SEED):
        low = self.stage1(PROMPT, num_inference_steps=self.steps, guidance_scale=STAGE1_SCALE,
                          height=self.low, width=self.low, generator=_generator(STAGE1_SEED),
                          output_type="pt", clean_caption=False).images
        high = self.stage2(PROMPT, image=low, num_inference_steps=self.steps,
                           guidance_scale=STAGE2_SCALE, noise_level=NOISE_LEVEL,
                           height=self.high, width=self.high, generator=_generator(seed),
                           output_type="pt", clean_caption=False).images
        return (high.float() / 2 + 0.5).clamp(0, 1)


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generator(seed: int):
    import torch
    return torch.Generator("cpu").manual_seed(seed)


def _timed(fn):
    t = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t


def measure(case: Case, pairs: int, out: Path) -> dict:
    """Alternating Loom / pipeline full runs, each pair followed by Loom's second-stage re-seed."""
    seed = case.graph.node(case.reseed.split(".")[0]).values[case.reseed.split(".")[1]]
    case.loom(out)
    case.pipeline_image()  # warm-up both (weights loaded, first-call costs paid)
    loom_t, pipe_t, rerun_t = [], [], []
    for _ in range(pairs):
        case.session.set(case.graph, case.reseed, seed)
        case.session.cache.clear()
        full, t = _timed(lambda: case.loom(out))
        loom_t.append(t)
        ref, t = _timed(case.pipeline_image)
        pipe_t.append(t)
        case.session.set(case.graph, case.reseed, seed + 1)
        rerun, t = _timed(lambda: case.loom(out))
        rerun_t.append(t)
    first = "prior" if isinstance(case, Kandinsky) else "sampler"
    ref2 = case.pipeline_image(seed + 1)
    return {"loom": statistics.median(loom_t), "pipeline": statistics.median(pipe_t),
            "rerun": statistics.median(rerun_t),
            "first_cached": first in rerun.cached and first not in rerun.ran,
            "rerun_ran": len(rerun.ran), "nodes": len(full.ran),
            "diff": (case.loom_image(full) - ref).abs().max().item(),
            "diff_rerun": (case.loom_image(rerun) - ref2).abs().max().item()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default="tiny", choices=sorted(SIZES), help="model size preset")
    p.add_argument("--steps", type=int, default=10, help="steps of every denoising loop")
    p.add_argument("--pairs", type=int, default=3, help="Loom/pipeline pairs per case")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--cases", nargs="+", default=["kandinsky22", "if_cascade"],
                   choices=["kandinsky22", "if_cascade"])
    a = p.parse_args(argv)
    import diffusers
    import torch
    import transformers
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if a.threads:
        torch.set_num_threads(a.threads)
    size = SIZES[a.size]
    print(f"size {a.size} (UNet blocks {size['channels']}; Kandinsky {size['kandinsky']} px, "
          f"IF {size['low']} -> {size['high']} px) | {a.steps} steps per stage | "
          f"{a.pairs} alternating pairs | cpu fp32, {torch.get_num_threads()} threads")
    rows = []
    with tempfile.TemporaryDirectory(prefix="loom_bench_cascades_") as tmp:
        tmp = Path(tmp)
        for name in a.cases:
            cls = Kandinsky if name == "kandinsky22" else DeepFloydIF
            t = time.perf_counter()
            case = cls(tmp / "models", size, a.steps)
            built = time.perf_counter() - t
            rows.append((case, measure(case, a.pairs, tmp / "out"), built))
    print(f"\n{'case':<12} {'Loom s':>8} {'pipe s':>8} {'ratio':>6} | {'re-seed s':>9} "
          f"{'vs pipe':>7}  {'stage 1 cached':>14} | {'max |diff|':>10} {'re-seed':>9}")
    for case, r, _ in rows:
        cached = f"{'yes' if r['first_cached'] else 'NO'} ({r['rerun_ran']}/{r['nodes']} ran)"
        print(f"{case.name:<12} {r['loom']:8.3f} {r['pipeline']:8.3f} "
              f"{r['loom'] / r['pipeline']:6.3f} | {r['rerun']:9.3f} "
              f"{r['rerun'] / r['pipeline']:7.3f}  {cached:>14} | {r['diff']:10.2e} "
              f"{r['diff_rerun']:9.2e}")
    print("\nratio: Loom / pipeline, one image, every node run. re-seed: Loom after changing "
          "only the decoder\nseed (Kandinsky) / stage II seed (IF), against "
          "the pipeline's full re-run. max |diff|:\npixels (0..1) vs the pipeline, full run and "
          "re-seeded run (goal <= 1e-4).")
    print("models built in " + ", ".join(f"{b:.1f} s ({c.name})" for c, _, b in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
