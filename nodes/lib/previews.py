"""Cheap latent -> RGB previews for progress events: a per-family linear map of the latent
channels (no VAE call), so a preview costs a few microseconds per step.

The factors are the widely published least-squares fits of decoded RGB on SD 1.x/2.x and SDXL
latents; other families fall back to a normalised view of the first three channels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_SD1 = ((0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177))
_SDXL = ((0.3651, 0.4232, 0.4341),
         (-0.2533, -0.0042, 0.1068),
         (0.1076, 0.1111, -0.0362),
         (-0.3165, -0.2492, -0.2188))
_SDXL_BIAS = (0.1084, -0.0175, -0.0011)

FACTORS: dict[str, tuple[Any, Any]] = {
    "sd1": (_SD1, None), "sd2": (_SD1, None), "sd_inpaint": (_SD1, None),
    "sd2_inpaint": (_SD1, None), "sd_x4_upscaler": (_SD1, None),
    "sdxl": (_SDXL, _SDXL_BIAS), "sdxl_refiner": (_SDXL, _SDXL_BIAS),
    "sd_latent_upscaler": (_SD1, None),
}


def latent_to_rgb(latent: Any, family: str = "sd1") -> np.ndarray:
    """One latent [C, h, w] (or the first of a batch) as an h x w x 3 uint8 image."""
    import torch

    with torch.no_grad():
        x = latent.detach()
        if x.ndim == 4:
            x = x[0]
        x = x.float().cpu()
        factors, bias = FACTORS.get(family, (None, None))
        if factors is not None and x.shape[0] == len(factors):
            rgb = torch.einsum("chw,cr->hwr", x, torch.tensor(factors))
            if bias is not None:
                rgb = rgb + torch.tensor(bias)
            rgb = (rgb + 1.0) / 2.0
        else:
            c = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, *x.shape[1:])
            lo, hi = c.amin(), c.amax()
            rgb = ((c - lo) / (hi - lo + 1e-6)).permute(1, 2, 0)
        return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
