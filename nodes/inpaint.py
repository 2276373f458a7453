"""Inpainting with inpainting models (9 input channels): the mask and the masked image's latents
that such a UNet takes beside the noisy latents. (Ordinary 4-channel models inpaint through the
Sampler's init + mask inputs, which blend the kept region back in at every step.)"""

from __future__ import annotations

from engine.errors import NodeInputError
from engine.node import Input, Output, RunContext, node
from engine.types import INT, STRING
from nodes._types import IMAGE, LATENT, MASK, VAE
from nodes.sampling import IMAGE_COND

_INT64 = 2**63 - 1


@node("inpaint.prepare", title="Inpaint Conditioning", category="inpaint", version="1.0.0",
      outputs=[Output("image_cond", IMAGE_COND)])
class InpaintConditioningNode:
    """Mask (at latent size) + latents of the image with the masked part blanked, for an
    inpainting model; connect to the Sampler's image_cond. The mask is binarised at 0.5."""

    vae = Input(VAE)
    image = Input(IMAGE)
    mask = Input(MASK, description="1 = repaint")
    mode = Input(STRING, default="sample", choices=("sample", "mean"),
                 description="VAE posterior sample (as diffusers) or mean")
    seed = Input(INT, default=0, min=0, max=_INT64, widget="seed")
    after = Input(LATENT, optional=True, connection_only=True,
                  description="continue the random stream of the Latent Noise (as diffusers' "
                  "inpaint pipeline draws noise, then this sample, from one generator)")

    def run(self, ctx: RunContext):
        import torch
        import torch.nn.functional as F

        from nodes.lib import rng
        from nodes.lib.denoise import ImageConditioning
        from nodes.lib.vae import encode

        image, mask = self.image, self.mask.float()
        h, w = image.shape[-2:]
        if h % 8 or w % 8:
            raise NodeInputError("image", f"{w}x{h} is not a multiple of 8 on both sides")
        if tuple(mask.shape[-2:]) != (h, w):
            raise NodeInputError("mask", f"mask is {mask.shape[-1]}x{mask.shape[-2]} but the "
                                 f"image is {w}x{h}; resize the mask")
        binary = (mask >= 0.5).to(torch.float32)
        masked = (image.float() * 2 - 1) * (binary < 0.5)
        gen = rng.stream(self.seed, self.after) if self.mode == "sample" else None
        latents = encode(self.vae, masked, self.mode, gen, normalized=True)
        small = F.interpolate(binary, size=(h // 8, w // 8)).to(latents.device)
        if small.shape[0] != latents.shape[0]:
            n = max(small.shape[0], latents.shape[0])
            small = small.repeat(n // small.shape[0], 1, 1, 1)
            latents = latents.repeat(n // latents.shape[0], 1, 1, 1)
        concat = rng.attach(torch.cat([small, latents], dim=1), gen)
        return ImageConditioning(concat=concat, kind="inpaint")
