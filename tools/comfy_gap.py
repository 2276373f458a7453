"""How far ComfyUI's samplers are from the diffusers schedulers Loom imports them as.

An import maps ComfyUI's sampler + scheduler names to Loom's Scheduler choices (diffusers'
schedulers, engine/comfy/samplers.py). The integration methods are the same; the noise levels
are not. This script implements ComfyUI's k-diffusion-style sampling from the published
algorithms (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models": the sigma parameterisation, Euler steps and the rho=7 schedule; Lu et al. 2022,
"DPM-Solver++": the 2M step), with the noise levels ComfyUI documents for its "normal" and
"karras" schedulers (normal: timesteps evenly from the model's sigma_max to sigma_min, sigmas
interpolated in log space; karras: rho=7 between the model's sigma_min and sigma_max; both end
at 0; the model is called at the nearest whole timestep of each sigma; starting noise scaled by
sqrt(1 + sigma^2) at full denoise), and compares:

1. the noise levels of both for SD 1.x's scheduler config, and
2. the pictures of both on a tiny random-weight SD model (64x64, the test models), after first
   checking that this implementation, given diffusers' own noise levels and timesteps, gives
   diffusers' pictures (so what remains is the schedule, not the implementation).

    python -m tools.comfy_gap [--steps 20] [--model FOLDER]

docs/comfyui.md quotes its output. Nothing here is ComfyUI's code.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

SD1_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                 "num_train_timesteps": 1000, "steps_offset": 1, "timestep_spacing": "leading",
                 "prediction_type": "epsilon"}


# ComfyUI's noise levels ------------------------------------------------------------------------


def model_sigmas(config: dict[str, Any]) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t), t = 0..T-1, for SD's scaled-linear betas."""
    n = int(config["num_train_timesteps"])
    betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n,
                           dtype=torch.float64) ** 2
    abar = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - abar) / abar) ** 0.5


def sigma_at(sigmas: torch.Tensor, t: float) -> float:
    """The sigma of a fractional timestep: log-sigma interpolated between whole ones."""
    t = min(max(t, 0.0), len(sigmas) - 1.0)
    lo, hi = math.floor(t), math.ceil(t)
    w = t - lo
    return math.exp((1 - w) * math.log(sigmas[lo]) + w * math.log(sigmas[hi]))


def nearest_timestep(sigmas: torch.Tensor, sigma: float) -> int:
    return int((torch.log(sigmas) - math.log(sigma)).abs().argmin())


def comfy_normal(sigmas: torch.Tensor, steps: int) -> list[float]:
    ts = np.linspace(len(sigmas) - 1, 0, steps)
    return [sigma_at(sigmas, float(t)) for t in ts] + [0.0]


def comfy_karras(sigmas: torch.Tensor, steps: int, rho: float = 7.0) -> list[float]:
    lo, hi = float(sigmas[0]) ** (1 / rho), float(sigmas[-1]) ** (1 / rho)
    ramp = np.linspace(0, 1, steps)
    return [float((hi + r * (lo - hi)) ** rho) for r in ramp] + [0.0]


def diffusers_levels(name: str, config: dict[str, Any], steps: int
                     ) -> tuple[list[float], list[float]]:
    """(sigmas ending in 0, timesteps) of a Loom scheduler choice (diffusers' scheduler)."""
    from nodes.lib.schedules import SchedulerSpec

    sched = SchedulerSpec(name, dict(config), steps).build()
    sched.set_timesteps(steps)
    return [float(s) for s in sched.sigmas], [float(t) for t in sched.timesteps]


# the samplers, in the sigma parameterisation ----------------------------------------------------


class EpsModel:
    """D(x, sigma): the denoised estimate from an epsilon-predicting UNet with CFG."""

    def __init__(self, unet: Any, cond: torch.Tensor, uncond: torch.Tensor, scale: float,
                 timestep_of: Any):
        self.unet, self.cond, self.uncond, self.scale = unet, cond, uncond, scale
        self.timestep_of = timestep_of

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: float, i: int) -> torch.Tensor:
        c_in = 1.0 / math.sqrt(sigma ** 2 + 1.0)
        t = torch.tensor(self.timestep_of(sigma, i))
        x2 = torch.cat([x * c_in] * 2)
        eps = self.unet(x2, t, encoder_hidden_states=torch.cat([self.uncond, self.cond])).sample
        uncond, cond = eps.chunk(2)
        eps = uncond + self.scale * (cond - uncond)
        return x - sigma * eps


def euler(model: EpsModel, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], i)
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def dpmpp_2m(model: EpsModel, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    old = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i], i)
        s, s_next = sigmas[i], sigmas[i + 1]
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s) - math.log(s_next)
            if old is None:
                d = denoised
            else:
                r = (math.log(sigmas[i - 1]) - math.log(s)) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (s_next / s) * x - math.expm1(-h) * d
        old = denoised
    return x


SAMPLERS = {"euler": euler, "dpmpp_2m": dpmpp_2m}


# running both on a model -----------------------------------------------------------------------


def load(folder: Path) -> dict[str, Any]:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return {"pipe": pipe, "config": dict(pipe.scheduler.config)}


@torch.no_grad()
def picture(model: dict[str, Any], method: str, sigmas: list[float], timestep_of: Any,
            init_scale: float, seed: int = 42, size: int = 64, scale: float = 7.0,
            prompt: str = "a red circle on a blue background", negative: str = "ugly"
            ) -> torch.Tensor:
    pipe = model["pipe"]
    cond, uncond = pipe.encode_prompt(prompt, "cpu", 1, True, negative)
    noise = torch.randn((1, 4, size // 8, size // 8),
                        generator=torch.Generator("cpu").manual_seed(seed))
    eps = EpsModel(pipe.unet, cond, uncond, scale, timestep_of)
    latents = SAMPLERS[method](eps, noise * init_scale, sigmas)
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1)


def diffusers_picture(model: dict[str, Any], name: str, steps: int, seed: int = 42,
                      size: int = 64, scale: float = 7.0) -> torch.Tensor:
    """The pipeline's own picture with Loom's scheduler choice `name` (what Loom computes)."""
    from nodes.lib.schedules import SchedulerSpec

    pipe = model["pipe"]
    pipe.scheduler = SchedulerSpec(name, model["config"], steps).build()
    out = pipe("a red circle on a blue background", negative_prompt="ugly", height=size,
               width=size, num_inference_steps=steps, guidance_scale=scale,
               generator=torch.Generator("cpu").manual_seed(seed), output_type="pt").images
    return out


def reference_with_diffusers_levels(model: dict[str, Any], method: str, name: str,
                                    steps: int) -> torch.Tensor:
    """This implementation on diffusers' noise levels and timesteps. diffusers starts from
    noise * sqrt(1 + sigma_0^2) in this parameterisation too (Euler's init_noise_sigma for
    "leading" spacing; DPM-Solver's unit-variance start in the VP space, x / sqrt(1 + s^2))."""
    sigmas, timesteps = diffusers_levels(name, model["config"], steps)
    return picture(model, method, sigmas, lambda _s, i: timesteps[i],
                   math.sqrt(1.0 + sigmas[0] ** 2))


def comfy_picture(model: dict[str, Any], method: str, schedule: str, steps: int) -> torch.Tensor:
    all_sigmas = model_sigmas(model["config"])
    sigmas = (comfy_karras if schedule == "karras" else comfy_normal)(all_sigmas, steps)
    init = math.sqrt(1.0 + sigmas[0] ** 2)  # full denoise: ComfyUI's max_denoise scaling
    return picture(model, method, sigmas, lambda s, _i: nearest_timestep(all_sigmas, s), init)


CASES = (("euler", "normal", "euler"), ("euler", "karras", "euler"),
         ("dpmpp_2m", "normal", "dpmpp_2m"), ("dpmpp_2m", "karras", "dpmpp_2m_karras"))
"""(ComfyUI sampler, ComfyUI scheduler, the Loom choice an import makes of them)."""


def gaps(model: dict[str, Any], steps: int, cases=CASES) -> list[dict[str, Any]]:
    """For each case: how far this implementation is from Loom on diffusers' levels (checks
    the implementation) and on ComfyUI's (the gap an import leaves), max and mean |pixel|."""
    out = []
    for method, schedule, name in cases:
        loom = diffusers_picture(model, name, steps)
        check = reference_with_diffusers_levels(model, method, name, steps)
        comfy = comfy_picture(model, method, schedule, steps)
        gap = (comfy - loom).abs()
        out.append({"comfy": f"{method}/{schedule}", "loom": name,
                    "check": (check - loom).abs().max().item(),
                    "max": gap.max().item(), "mean": gap.mean().item()})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model", help="an SD 1.x diffusers folder (default: a tiny random one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    steps = args.steps
    all_sigmas = model_sigmas(SD1_SCHEDULER)
    print(f"SD 1.x noise levels, {steps} steps (first 3 ... last 2 before 0)")
    for method, schedule, name in CASES:
        d_sig, d_ts = diffusers_levels(name, SD1_SCHEDULER, steps)
        c_sig = (comfy_karras if schedule == "karras" else comfy_normal)(all_sigmas, steps)
        c_ts = [nearest_timestep(all_sigmas, s) for s in c_sig[:-1]]
        fmt = lambda v: ", ".join(f"{x:.4g}" for x in v)  # noqa: E731
        print(f"  ComfyUI {method}/{schedule}: sigmas {fmt(c_sig[:3])} ... "
              f"{fmt(c_sig[-3:-1])}; timesteps {fmt(c_ts[:3])} ... {fmt(c_ts[-2:])}")
        print(f"  Loom {name}: sigmas {fmt(d_sig[:3])} ... {fmt(d_sig[-3:-1])}; timesteps "
              f"{fmt(d_ts[:3])} ... {fmt(d_ts[-2:])}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else None
        if folder is None:
            from tests.sampling_fixtures import build_sd

            folder = build_sd(Path(tmp) / "tiny_sd")
        model = load(folder)
        print(f"pictures ({'tiny random SD' if not args.model else folder}, 64x64, {steps} "
              "steps, guidance 7; pixel values 0..1):")
        for g in gaps(model, steps):
            print(f"  ComfyUI {g['comfy']} vs Loom '{g['loom']}': max {g['max']:.3g}, mean "
                  f"{g['mean']:.3g} (this implementation on diffusers' levels: {g['check']:.2g})")


if __name__ == "__main__":
    main()
