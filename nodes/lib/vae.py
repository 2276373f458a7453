"""VAE encode/decode with the latent scaling conventions of diffusers' pipelines."""

from __future__ import annotations

from typing import Any

import torch

from nodes.lib.bundles import VaeBundle
from nodes.lib.cpu_conv import decoder_backend


def _stats(vb: VaeBundle, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    cfg = vb.vae.config
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is None or std is None:
        return None
    c = like.shape[1]
    return (torch.tensor(mean).view(1, c, 1, 1).to(like.device, like.dtype),
            torch.tensor(std).view(1, c, 1, 1).to(like.device, like.dtype))


def to_latent(vb: VaeBundle, raw: torch.Tensor) -> torch.Tensor:
    stats = _stats(vb, raw)
    if stats is not None:
        return (raw - stats[0]) * vb.scaling_factor / stats[1]
    if vb.shift_factor is not None:
        raw = raw - vb.shift_factor
    return raw * vb.scaling_factor


def from_latent(vb: VaeBundle, latent: torch.Tensor) -> torch.Tensor:
    stats = _stats(vb, latent)
    if stats is not None:
        return latent * stats[1] / vb.scaling_factor + stats[0]
    raw = latent / vb.scaling_factor
    if vb.shift_factor is not None:
        raw = raw + vb.shift_factor
    return raw


def _device(vb: VaeBundle) -> torch.device:
    return torch.device(vb.device) if vb.device is not None else torch.device("cpu")


class _Upcast:
    """Run an fp16 VAE in fp32 for the duration (SDXL's VAE overflows in fp16)."""

    def __init__(self, vb: VaeBundle):
        self.vb = vb
        self.active = bool(vb.force_upcast) and vb.vae.dtype == torch.float16

    def __enter__(self) -> torch.dtype:
        if self.active:
            self.vb.vae.to(torch.float32)
        return self.vb.vae.dtype

    def __exit__(self, *exc: Any) -> None:
        if self.active:
            self.vb.vae.to(torch.float16)


@torch.no_grad()
def decode(vb: VaeBundle, latent: torch.Tensor) -> torch.Tensor:
    """LATENT -> IMAGE: float [B, 3, H, W] in 0..1 on the CPU."""
    with _Upcast(vb) as dtype:
        z = from_latent(vb, latent.to(_device(vb), torch.float32)).to(dtype)
        with decoder_backend(z):
            image = vb.vae.decode(z, return_dict=False)[0]
    return (image.float() / 2 + 0.5).clamp(0, 1).cpu()


@torch.no_grad()
def encode(vb: VaeBundle, image: torch.Tensor, mode: str = "sample",
           gen: torch.Generator | None = None, normalized: bool = False) -> torch.Tensor:
    """IMAGE (0..1; -1..1 if `normalized`) -> LATENT, taking the posterior's mean or a sample
    drawn from `gen` (diffusers' img2img/inpaint pipelines sample from their generator)."""
    with _Upcast(vb) as dtype:
        x = image.to(_device(vb), torch.float32)
        if not normalized:
            x = x * 2 - 1
        x = x.to(dtype)
        posterior = vb.vae.encode(x).latent_dist
        raw = posterior.mode() if mode == "mean" else posterior.sample(generator=gen)
        return to_latent(vb, raw.float())
