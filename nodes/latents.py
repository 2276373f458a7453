"""Latents: seeded noise, and crossing between images and latents with the VAE."""

from __future__ import annotations

from engine.errors import NodeInputError
from engine.node import Input, Output, RunContext, node
from engine.types import INT, STRING
from nodes._types import IMAGE, LATENT, MODEL, VAE

_INT64 = 2**63 - 1


@node("latents.noise", title="Latent Noise", category="latents", version="1.0.0",
      outputs=[Output("noise", LATENT)])
class LatentNoiseNode:
    """Unit Gaussian noise [batch, channels, height/8, width/8] drawn on the CPU from the seed
    exactly as diffusers' pipelines draw their initial latents, so a seed gives the same image
    on any device."""

    seed = Input(INT, default=0, min=0, max=_INT64, widget="seed")
    width = Input(INT, default=512, min=8, max=16384, step=8)
    height = Input(INT, default=512, min=8, max=16384, step=8)
    batch = Input(INT, default=1, min=1, max=64)
    model = Input(MODEL, optional=True, connection_only=True,
                  description="takes the latent channels and device from the model")
    channels = Input(INT, default=4, min=1, max=64,
                     description="latent channels when no model is connected")
    after = Input(LATENT, optional=True, connection_only=True,
                  description="continue the random stream of a seeded VAE Encode instead of "
                  "starting one from the seed (diffusers' img2img draws both from one generator)")

    def run(self, ctx: RunContext):
        import torch

        from nodes.lib import rng

        for name in ("width", "height"):
            value = getattr(self, name)
            if value % 8:
                raise NodeInputError(name, f"{value} is not a multiple of 8 (latents are 1/8 of "
                                     f"the image size); try {max(8, value // 8 * 8)}")
        channels = int(self.channels)
        device = "cpu"
        if self.model is not None:
            channels = _latent_channels(self.model)
            device = self.model.device if self.model.device is not None else "cpu"
        gen = rng.stream(self.seed, self.after)
        shape = (int(self.batch), channels, self.height // 8, self.width // 8)
        noise = rng.randn(shape, gen, device=device, dtype=torch.float32)
        return rng.attach(noise, gen)


def _latent_channels(model) -> int:
    """Channels of the latents the model denoises (an inpainting UNet's 9 inputs are 4 latent
    channels + mask + masked-image latents; the x4 upscaler's 7 are 4 + RGB)."""
    family = model.family
    in_ch = int(model.unet.config.in_channels)
    out_ch = int(getattr(model.unet.config, "out_channels", in_ch) or in_ch)
    if family in ("sd_inpaint", "sd2_inpaint", "sd_x4_upscaler", "sd_latent_upscaler") \
            or in_ch != out_ch:
        return out_ch
    return in_ch


@node("latents.vae_decode", title="VAE Decode", category="latents", version="1.0.0",
      outputs=[Output("image", IMAGE)])
class VAEDecodeNode:
    """Latents to an image (float [B, 3, H, W] in 0..1)."""

    vae = Input(VAE)
    latent = Input(LATENT)

    def run(self, ctx: RunContext):
        from nodes.lib.vae import decode

        return decode(self.vae, self.latent)


@node("latents.vae_encode", title="VAE Encode", category="latents", version="1.0.0",
      outputs=[Output("latent", LATENT)])
class VAEEncodeNode:
    """An image to latents: a sample of the VAE posterior drawn from the seed (as diffusers'
    img2img and inpaint pipelines do) or its mean."""

    vae = Input(VAE)
    image = Input(IMAGE)
    mode = Input(STRING, default="sample", choices=("sample", "mean"))
    seed = Input(INT, default=0, min=0, max=_INT64, widget="seed",
                 description="for mode 'sample'; a Latent Noise can continue this stream")

    def run(self, ctx: RunContext):
        from nodes.lib import rng
        from nodes.lib.vae import encode

        h, w = self.image.shape[-2:]
        if h % 8 or w % 8:
            raise NodeInputError("image", f"{w}x{h} is not a multiple of 8 on both sides; "
                                 "resize or crop it first")
        if self.mode == "mean":
            return encode(self.vae, self.image, "mean")
        gen = rng.generator(self.seed)
        return rng.attach(encode(self.vae, self.image, "sample", gen), gen)
