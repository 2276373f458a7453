"""Latents: seeded noise, and crossing between images and latents with the VAE."""

from __future__ import annotations

from engine.errors import NodeInputError
from engine.node import LINKED, Input, Output, RunContext, node
from engine.types import INT, STRING
from nodes._types import IMAGE, LATENT, MODEL, NOISE, RNG, VAE

_INT64 = 2**63 - 1


def _after_from_rng(inputs: dict) -> dict:
    """1.0.0 -> 2.0.0: `after` took the seeded LATENT itself (the stream rode on a tensor
    attribute); it now takes the stream, which VAE Encode outputs as `rng`."""
    after = inputs.get("after")
    if isinstance(after, dict) and after.get("output") == "latent":
        inputs["after"] = {"node": after.get("node"), "output": "rng"}
    return inputs


@node("latents.noise", title="Latent Noise", category="latents", version="2.0.0",
      outputs=[Output("noise", NOISE, "unit noise and the random stream after it (the "
                                      "Sampler's stochastic schedulers continue it)"),
               Output("rng", RNG, "the random stream after this draw")],
      migrations={"1.0.0": ("2.0.0", _after_from_rng)})
class LatentNoiseNode:
    """Unit Gaussian noise [batch, channels, height/8, width/8] drawn on the CPU from the seed
    exactly as diffusers' pipelines draw their initial latents, so a seed gives the same image
    on any device."""

    seed = Input(INT, default=0, min=0, max=_INT64, widget="seed",
                 description="ignored when `after` is connected (the stream continues)",
                 ignored_when={"after": LINKED})
    width = Input(INT, default=512, min=8, max=16384, step=8)
    height = Input(INT, default=512, min=8, max=16384, step=8)
    batch = Input(INT, default=1, min=1, max=64)
    model = Input(MODEL, optional=True, connection_only=True,
                  description="takes the latent channels and device from the model")
    channels = Input(INT, default=4, min=1, max=64,
                     description="latent channels when no model is connected")
    after = Input(RNG, optional=True, connection_only=True,
                  description="continue this random stream (a seeded VAE Encode's `rng`) "
                  "instead of starting one from the seed, as diffusers' img2img draws both "
                  "from one generator")

    @classmethod
    def preflight(cls, values, ctx):
        """Before anything runs: sizes that are multiples of 8, and a width x height x batch
        whose images fit in memory through the pipeline (nodes._limits.image_memory)."""
        from nodes._limits import image_size_problems

        for name in ("width", "height"):
            value = values.get(name)
            if isinstance(value, int) and value % 8:
                yield name, (f"{value} is not a multiple of 8 (latents are 1/8 of the image "
                             f"size); try {max(8, value // 8 * 8)}")
        yield from image_size_problems(values, ctx.device)

    def run(self, ctx: RunContext):
        import torch

        from nodes.lib.rng import Noise, Stream

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
        stream = Stream.of(self.seed, self.after)
        shape = (int(self.batch), channels, self.height // 8, self.width // 8)
        samples = stream.randn(shape, device=device, dtype=torch.float32)
        position = stream.position()
        return Noise(samples, position), position


def _latent_channels(model) -> int:
    """Channels of the latents the model denoises (an inpainting UNet's 9 inputs are 4 latent
    channels + mask + masked-image latents; the x4 upscaler's 7 are 4 + RGB)."""
    from nodes.lib.families import FAMILY_TABLE

    own = (getattr(model, "extra", None) or {}).get("latent_channels")
    if own:  # the loader knows (Kandinsky: the MoVQ's channels; its UNet also predicts variance)
        return int(own)
    info = FAMILY_TABLE.get(model.family)
    in_ch = int(model.unet.config.in_channels)
    out_ch = int(getattr(model.unet.config, "out_channels", in_ch) or in_ch)
    if (info is not None and info.concat) or in_ch != out_ch:
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


@node("latents.vae_encode", title="VAE Encode", category="latents", version="1.1.0",
      outputs=[Output("latent", LATENT),
               Output("rng", RNG, "the random stream after the posterior sample (Latent Noise "
                                  "can continue it, as diffusers' img2img does)")])
class VAEEncodeNode:
    """An image to latents: a sample of the VAE posterior drawn from the seed (as diffusers'
    img2img and inpaint pipelines do) or its mean."""

    vae = Input(VAE)
    image = Input(IMAGE)
    mode = Input(STRING, default="sample", choices=("sample", "mean"))
    seed = Input(INT, default=0, min=0, max=_INT64, widget="seed",
                 description="for mode 'sample' (ignored for 'mean')",
                 ignored_when={"mode": "mean"})

    def run(self, ctx: RunContext):
        from nodes.lib.rng import Stream
        from nodes.lib.vae import encode

        h, w = self.image.shape[-2:]
        if h % 8 or w % 8:
            raise NodeInputError("image", f"{w}x{h} is not a multiple of 8 on both sides; "
                                 "resize or crop it first")
        stream = Stream.start(self.seed)
        if self.mode == "mean":
            return encode(self.vae, self.image, "mean"), stream.position()
        latent = encode(self.vae, self.image, "sample", stream.gen)
        stream.used()
        return latent, stream.position()
