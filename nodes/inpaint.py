"""Inpainting with inpainting models (9 input channels): the mask and the masked image's latents
that such a UNet takes beside the noisy latents. (Ordinary 4-channel models inpaint through the
Sampler's init + mask inputs, which blend the kept region back in at every step.)"""

from __future__ import annotations

from engine.errors import NodeInputError
from engine.node import LINKED, Input, Output, RunContext, node
from engine.types import INT, STRING
from nodes._types import IMAGE, MASK, RNG, VAE
from nodes.sampling import IMAGE_COND

_INT64 = 2**63 - 1


def _after_from_rng(inputs: dict) -> dict:
    """1.0.0 -> 2.0.0: `after` took Latent Noise's noise tensor (the stream rode on a tensor
    attribute); it now takes the stream, Latent Noise's `rng` output."""
    after = inputs.get("after")
    if isinstance(after, dict) and after.get("output") == "noise":
        inputs["after"] = {"node": after.get("node"), "output": "rng"}
    return inputs


@node("inpaint.prepare", title="Inpaint Conditioning", category="inpaint", version="2.0.0",
      outputs=[Output("image_cond", IMAGE_COND)],
      migrations={"1.0.0": ("2.0.0", _after_from_rng)})
class InpaintConditioningNode:
    """Mask (at latent size) + latents of the image with the masked part blanked, for an
    inpainting model; connect to the Sampler's image_cond. The mask is binarised at 0.5."""

    vae = Input(VAE)
    image = Input(IMAGE)
    mask = Input(MASK, description="1 = repaint")
    mode = Input(STRING, default="sample", choices=("sample", "mean"),
                 description="VAE posterior sample (as diffusers) or mean")
    seed = Input(INT, default=0, min=0, max=_INT64, widget="seed",
                 description="for mode 'sample'; ignored when `after` is connected",
                 ignored_when={"after": LINKED, "mode": "mean"})
    after = Input(RNG, optional=True, connection_only=True,
                  description="continue the random stream of the Latent Noise (`rng`), as "
                  "diffusers' inpaint pipeline draws noise, then this sample, from one generator")

    def run(self, ctx: RunContext):
        import torch
        import torch.nn.functional as F

        from nodes.lib.denoise import ImageConditioning
        from nodes.lib.rng import Stream
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
        stream = Stream.of(self.seed, self.after)
        if self.mode == "sample":
            latents = encode(self.vae, masked, "sample", stream.gen, normalized=True)
            stream.used()
        else:
            latents = encode(self.vae, masked, "mean", normalized=True)
        small = F.interpolate(binary, size=(h // 8, w // 8)).to(latents.device)
        if small.shape[0] != latents.shape[0]:
            n = max(small.shape[0], latents.shape[0])
            small = small.repeat(n // small.shape[0], 1, 1, 1)
            latents = latents.repeat(n // latents.shape[0], 1, 1, 1)
        concat = torch.cat([small, latents], dim=1)
        # mode 'mean' draws nothing: the stream is the one given (or none, and the Sampler
        # continues the noise's)
        position = stream.position() if self.mode == "sample" else self.after
        return ImageConditioning(concat=concat, kind="inpaint", stream=position)
