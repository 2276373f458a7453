"""Conversions at the edges: files and PIL images <-> IMAGE / MASK tensors, and PNG writing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

# the torch-free file writing lives in engine.files and nodes/lib/png.py; kept importable here
from engine.files import check_prefix  # noqa: F401
from nodes.lib.png import encode_png, encode_png_within, save_png  # noqa: F401

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def open_image(path: Path) -> Image.Image:
    img = Image.open(path)
    img = ImageOps.exif_transpose(img)
    img.load()
    return img


def pil_to_image(img: Image.Image) -> torch.Tensor:
    """PIL -> IMAGE [1, 3, H, W] float 0..1 (x / 255, as diffusers' image processor), in the
    standard (contiguous) layout: a channels-last view makes convolutions pick other kernels,
    and a model fed it differs from the reference pipeline by ~5e-5."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def alpha_mask(img: Image.Image) -> torch.Tensor | None:
    """The transparent part of an image as a MASK (1 = repaint), or None without alpha."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        alpha = np.asarray(img.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
        return torch.from_numpy(1.0 - alpha)[None, None]
    return None


def channel_mask(img: Image.Image, channel: str) -> torch.Tensor:
    """A MASK from one channel: "luminance" (white = repaint), "red"/"green"/"blue", or
    "alpha" (transparent = repaint)."""
    if channel == "alpha":
        m = alpha_mask(img)
        if m is None:
            raise ValueError("the image has no alpha channel")
        return m
    if channel == "luminance":
        arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    else:
        arr = np.asarray(img.convert("RGB").getchannel(channel[0].upper()),
                         dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy())[None, None]


def image_to_uint8(image: torch.Tensor) -> list[np.ndarray]:
    """IMAGE -> list of H x W x 3 uint8 arrays (rounded like diffusers' numpy_to_pil)."""
    arr = image.detach().float().clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
    return [(a * 255).round().astype(np.uint8) for a in arr]


def resize_image(image: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    """Resize each image of a batch with PIL's filters (on 8-bit would lose precision, so
    resample the float data per channel in mode "F")."""
    out = []
    for img in image.detach().float().cpu():
        chans = [Image.fromarray(c.numpy(), mode="F").resize((width, height), RESAMPLE[method])
                 for c in img]
        out.append(torch.from_numpy(np.stack([np.asarray(c) for c in chans])))
    return torch.stack(out).clamp(0, 1)


def resize_mask(mask: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    out = []
    for m in mask.detach().float().cpu():
        r = Image.fromarray(m[0].numpy(), mode="F").resize((width, height), RESAMPLE[method])
        out.append(torch.from_numpy(np.asarray(r).copy())[None])
    return torch.stack(out).clamp(0, 1)


def as_pil(arr: Any) -> Image.Image:
    return Image.fromarray(arr)
