"""The sampling loop: scheduler + guided denoiser + optional init latent, mask and image
conditioning. Mirrors the denoising loops of diffusers' StableDiffusion(XL)(Img2Img|Inpaint)
pipelines step for step, so a Loom graph gives the same numbers as the pipeline it imitates."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nodes.lib import rng, step_memo
from nodes.lib.denoise import ImageConditioning, Step, split_variance
from nodes.lib.previews import latent_to_rgb
from nodes.lib.schedules import SchedulerSpec, plan


class SamplerInputError(ValueError):
    """A bad combination of sampler inputs; `input` names the culprit."""

    def __init__(self, input: str, message: str):
        self.input = input
        super().__init__(message)


@dataclass
class Hooks:
    progress: Callable[[int, int, Any], None] = lambda i, n, p: None
    check_cancelled: Callable[[], None] = lambda: None
    preview: bool = True


def latent_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """An image-resolution MASK as the blend mask at latent resolution: binarised at 0.5 and
    resized with nearest neighbours (diffusers' mask processor + F.interpolate)."""
    m = mask.float()
    if m.ndim == 3:
        m = m[:, None]
    m = (m >= 0.5).to(m.dtype)
    return F.interpolate(m, size=(h, w))


def _step_kwargs(scheduler: Any, gen: torch.Generator, eta: float) -> dict[str, Any]:
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = gen
    return kwargs


def uses_learned_variance(scheduler: Any) -> bool:
    """Whether the scheduler takes a learned variance with the noise (DDPM "learned_range":
    GLIDE, DeepFloyd IF). Decided by the class, not the config alone: a DDIM built from IF's
    config carries its variance_type along unused, and gets the noise half only."""
    params = inspect.signature(type(scheduler).__init__).parameters
    return "variance_type" in params and \
        getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range")


def step_stream(stream: rng.RandomStream | None, noise: rng.Noise | None,
                image_cond: ImageConditioning | None) -> rng.RandomStream:
    """The random stream for the per-step noise of stochastic schedulers: the one connected to
    the Sampler, else the last seeded draw before sampling (the image conditioning's, then the
    noise's: diffusers' order), else a stream from seed 0 (a refiner pass with no noise)."""
    if stream is not None:
        return stream
    if image_cond is not None and image_cond.stream is not None:
        return image_cond.stream
    if noise is not None:
        return noise.stream
    return rng.Stream.start(0).position()


@torch.no_grad()
def sample(denoiser: Any, spec: SchedulerSpec, noise: rng.Noise | None,
           init: torch.Tensor | None = None, mask: torch.Tensor | None = None,
           image_cond: ImageConditioning | None = None, hooks: Hooks | None = None,
           family: str = "sd1", stream: rng.RandomStream | None = None,
           return_stream: bool = False) -> Any:
    """The sampled latents; with `return_stream`, (latents, the random stream after the
    stochastic steps' draws: what a following stage of the same pipeline continues)."""
    hooks = hooks or Hooks()
    model = denoiser.model
    device = torch.device(model.device) if model.device is not None else torch.device("cpu")

    if noise is None and init is None:
        raise SamplerInputError("noise", "connect a Latent Noise (or an init latent with a "
                                "scheduler start > 0)")
    if init is None and spec.strength < 1.0:
        raise SamplerInputError("init", f"strength {spec.strength} < 1 needs an init latent "
                                "(VAE Encode of the image to change)")
    if init is None and spec.uses_start:
        raise SamplerInputError("init", "a scheduler start > 0 continues an init latent "
                                "(e.g. the base model's output); connect one")
    if noise is None and not spec.uses_start:
        raise SamplerInputError("noise", "connect a Latent Noise")

    start_stream = step_stream(stream, noise, image_cond)
    gen = start_stream.generator()
    noise = noise.samples if noise is not None else None

    ref = noise if noise is not None else init
    batch = ref.shape[0]
    check = getattr(denoiser, "check_latents", None)
    problem = check(tuple(ref.shape)) if check is not None else None
    if problem:  # e.g. a ControlNet's control image of another size: before any step runs
        raise SamplerInputError("denoiser", problem)
    if noise is not None:
        noise = noise.to(device, torch.float32)
    if init is not None:
        init = init.to(device, torch.float32)
        if noise is not None and init.shape[1:] != noise.shape[1:]:
            raise SamplerInputError("init", f"init latent {tuple(init.shape[1:])} and noise "
                                    f"{tuple(noise.shape[1:])} differ in size; make the noise "
                                    "the size of the image")
        if init.shape[0] != batch:
            if batch % init.shape[0]:
                raise SamplerInputError("init", f"a batch of {init.shape[0]} init latents cannot "
                                        f"be spread over {batch} noise latents")
            init = torch.cat([init] * (batch // init.shape[0]))

    p = plan(spec, device, has_init=init is not None)
    sched, timesteps = p.scheduler, p.timesteps
    in_channels = denoiser.in_channels
    channels = ref.shape[1]
    # Kandinsky's inpainting decoder takes the mask as channels *and* pastes the noised original
    # back after every step: its image conditioning carries the latent-resolution keep mask
    keep = getattr(image_cond, "keep", None)
    blend = (mask is not None and in_channels == channels) or keep is not None
    if mask is not None and getattr(image_cond, "kind", None) == "if_super_resolution":
        blend = True  # IF inpainting super-resolution: extra channels = the low-res image
    if blend and init is None:
        raise SamplerInputError("init", "blending a mask needs the init latent of the image "
                                "(VAE Encode)")
    if mask is not None and not blend and image_cond is None:
        raise SamplerInputError("mask", f"this model takes {in_channels} input channels; connect "
                                "Inpaint Conditioning (image_cond) instead of a mask")
    if keep is not None:
        m = (1.0 - keep.float()).to(device)
    else:
        m = latent_mask(mask, ref.shape[-2], ref.shape[-1]).to(device) if blend else None

    # DeepFloyd IF's inpainting keeps the known region as the clean image at every step (and
    # starts from it at any strength); SD's re-noises it to the next timestep
    keep_clean = blend and (getattr(model, "extra", None) or {}).get("inpaint_blend") == "clean"
    use_variance = uses_learned_variance(sched)
    if p.from_init and p.add_noise:
        if keep_clean:
            noised = sched.add_noise(init, noise, timesteps[:1].repeat(batch))
            latents = (1 - m) * init + m * noised
        elif (mask is not None or keep is not None) and spec.strength >= 1.0:
            latents = noise * sched.init_noise_sigma  # inpainting at full strength: pure noise
        else:
            latents = sched.add_noise(init, noise, timesteps[:1].repeat(batch))
    elif p.from_init:
        latents = init
    else:
        latents = noise * sched.init_noise_sigma

    kwargs = _step_kwargs(sched, gen, spec.eta)
    n = len(timesteps)
    next_timestep = _next_timesteps(sched, timesteps)
    with step_memo.sampling_scope():  # the text context's projections, once per loop
        for i, t in enumerate(timesteps):
            hooks.check_cancelled()
            x_in = sched.scale_model_input(latents, t)
            pred = denoiser(x_in, t, image_cond, step=Step(i, n))
            if not use_variance:
                pred = split_variance(pred, latents.shape[1])[0]
            previous = latents
            if next_timestep is not None:
                kwargs["prev_timestep"] = next_timestep[i]
            latents = sched.step(pred, t, latents, **kwargs, return_dict=False)[0]
            if keep_clean:
                latents = (1 - m) * previous + m * latents
            elif blend:
                known = init
                if i < n - 1:
                    known = sched.add_noise(init, noise, torch.tensor([timesteps[i + 1]]))
                latents = (1 - m) * known + m * latents
            hooks.progress(i + 1, n, latent_to_rgb(latents, family) if hooks.preview else None)
    if return_stream:
        draws = start_stream.draws + (n if "generator" in kwargs else 0)
        return latents, rng.RandomStream(start_stream.seed, draws, gen.get_state())
    return latents


def _next_timesteps(sched: Any, timesteps: torch.Tensor) -> list[Any] | None:
    """For schedulers that step to an explicit previous timestep (UnCLIPScheduler, which
    otherwise steps to t - 1): the timestep after each of `timesteps` in the scheduler's full
    schedule (None after the last), as UnCLIPPipeline passes them; also right when the run is
    a cut of the schedule (Scheduler start / end). None for other schedulers."""
    if "prev_timestep" not in inspect.signature(sched.step).parameters or len(timesteps) == 0:
        return None
    full = [int(t) for t in sched.timesteps]
    offset = full.index(int(timesteps[0]))
    return [full[offset + i + 1] if offset + i + 1 < len(full) else None
            for i in range(len(timesteps))]
