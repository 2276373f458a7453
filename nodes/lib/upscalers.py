"""The SD x4 upscaler's image conditioning and the SD latent x2 upscaler's own sampling loop,
following StableDiffusionUpscalePipeline and StableDiffusionLatentUpscalePipeline."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from nodes.lib import rng
from nodes.lib.bundles import Conditioning, ModelBundle
from nodes.lib.denoise import ImageConditioning
from nodes.lib.previews import latent_to_rgb
from nodes.lib.sampler import Hooks

# stabilityai/stable-diffusion-x4-upscaler's low_res_scheduler (a DDPM schedule), used when the
# checkpoint does not bring its own
X4_LOW_RES_DEFAULT = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000,
                      "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "scaled_linear",
                      "clip_sample": False, "variance_type": "fixed_small"}


def low_res_scheduler(model: ModelBundle) -> Any:
    import diffusers

    found = (model.extra or {}).get("low_res_scheduler")
    if found is not None and hasattr(found, "add_noise"):
        return found
    config = dict(found) if isinstance(found, dict) else dict(X4_LOW_RES_DEFAULT)
    cls = getattr(diffusers, config.get("_class_name") or "DDPMScheduler", diffusers.DDPMScheduler)
    return cls.from_config(config)


@torch.no_grad()
def x4_condition(model: ModelBundle, image: torch.Tensor, noise_level: int, stream: rng.Stream,
                 batch: int = 1) -> tuple[ImageConditioning, rng.Noise]:
    """Noise the low-res image to `noise_level` with the low-res scheduler and draw the latent
    noise, in diffusers' order: image noise first, then latent noise, from one generator."""
    device = torch.device(model.device) if model.device is not None else torch.device("cpu")
    x = image.to(device, torch.float32) * 2 - 1
    level = torch.tensor([int(noise_level)], dtype=torch.long, device=device)
    image_noise = stream.randn(tuple(x.shape), device=device)
    x = low_res_scheduler(model).add_noise(x, image_noise, level)
    if batch > 1:
        x = torch.cat([x] * (batch // x.shape[0]))
    channels = int(model.unet.config.out_channels)
    latent_noise = stream.randn((x.shape[0], channels, x.shape[2], x.shape[3]), device=device)
    position = stream.position()
    cond = ImageConditioning(concat=x, class_labels=level, kind="upscale_x4", stream=position)
    return cond, rng.Noise(latent_noise, position)


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    return t if t.shape[0] == n else t.repeat(n // t.shape[0], *([1] * (t.ndim - 1)))


@torch.no_grad()
def latent_x2(model: ModelBundle, positive: Conditioning, negative: Conditioning | None,
              latent: torch.Tensor, steps: int, scale: float, stream: rng.Stream,
              hooks: Hooks | None = None) -> torch.Tensor:
    """StableDiffusionLatentUpscalePipeline's loop on an already encoded latent."""
    import diffusers

    hooks = hooks or Hooks()
    unet = model.unet
    device = torch.device(model.device) if model.device is not None else torch.device("cpu")
    dtype = model.dtype or next(unet.parameters()).dtype
    config = dict(model.scheduler_config or {})
    cls = getattr(diffusers, config.get("_class_name") or "EulerDiscreteScheduler",
                  diffusers.EulerDiscreteScheduler)
    sched = cls.from_config(config)
    image = latent.to(device, dtype)
    b = image.shape[0]
    do_cfg = scale > 1.0
    conds = [negative, positive] if do_cfg else [positive]
    for c in conds:
        if c is None or c.pooled is None:
            raise ValueError("the latent upscaler needs conditionings with pooled embeddings "
                             "(encode the prompts with the upscaler's own CLIP)")
    embeds = torch.cat([_rows(c.embeds, b) for c in conds]).to(device, dtype)
    pooled = torch.cat([_rows(c.pooled, b) for c in conds]).to(device, dtype)

    sched.set_timesteps(steps, device=device)
    timesteps = sched.timesteps
    image = torch.cat([image] * len(conds))
    noise_level = torch.cat([torch.tensor([0.0], dtype=torch.float32, device=device)]
                            * image.shape[0])
    inv_noise_level = (noise_level**2 + 1) ** (-0.5)
    image_cond = F.interpolate(image, scale_factor=2, mode="nearest") \
        * inv_noise_level[:, None, None, None]
    image_cond = image_cond.to(dtype)
    n = pooled.shape[0]
    level_embed = torch.cat([torch.ones(n, 64, dtype=dtype, device=device),
                             torch.zeros(n, 64, dtype=dtype, device=device)], dim=1)
    timestep_condition = torch.cat([level_embed, pooled], dim=1)

    channels = int(model.extra.get("latent_channels", 4)) if model.extra else 4
    latents = stream.randn((b, channels, latent.shape[2] * 2, latent.shape[3] * 2),
                           device=device, dtype=dtype)
    latents = latents * sched.init_noise_sigma
    for i, t in enumerate(timesteps):
        hooks.check_cancelled()
        sigma = sched.sigmas[i]
        model_in = torch.cat([latents] * 2) if do_cfg else latents
        scaled = sched.scale_model_input(model_in, t)
        scaled = torch.cat([scaled, image_cond], dim=1)
        timestep = torch.log(sigma) * 0.25
        pred = unet(scaled, timestep, encoder_hidden_states=embeds,
                    timestep_cond=timestep_condition).sample
        pred = pred[:, :-1]
        inv_sigma = 1 / (sigma**2 + 1)
        pred = inv_sigma * model_in + sched.scale_model_input(sigma, t) * pred
        if do_cfg:
            uncond, cond = pred.chunk(2)
            pred = uncond + scale * (cond - uncond)
        latents = sched.step(pred, t, latents).prev_sample
        hooks.progress(i + 1, len(timesteps),
                       latent_to_rgb(latents, model.family) if hooks.preview else None)
    return latents
