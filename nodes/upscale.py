"""Upscaling: the SD x4 upscaler (diffusion in image space, conditioned on the low-res image),
the SD latent x2 upscaler, latent resizing for a "hires fix" second pass, and plain resampling."""

from __future__ import annotations

from engine.errors import NodeInputError
from engine.node import LINKED, Input, Output, RunContext, node
from engine.types import FLOAT, INT, STRING
from nodes._types import CONDITIONING, IMAGE, LATENT, MODEL, NOISE, RNG
from nodes.sampling import IMAGE_COND

_INT64 = 2**63 - 1


@node("upscale.x4", title="SD x4 Upscale Conditioning", category="upscale", version="1.1.0",
      outputs=[Output("image_cond", IMAGE_COND, "the noised low-res image + noise level"),
               Output("noise", NOISE, "latent noise at the low-res image's size")])
class X4UpscaleNode:
    """Prepare the SD x4 upscaler: noise the low-res image to `noise_level` with the model's
    low-res scheduler and draw the latent noise. Sample with UNet Step -> CFG Combine ->
    Sampler(image_cond, noise) and decode with the upscaler's VAE (4x the size)."""

    model = Input(MODEL, description="stable-diffusion-x4-upscaler")
    image = Input(IMAGE, description="the low-resolution image")
    noise_level = Input(INT, default=20, min=0, max=350,
                        description="how much noise the low-res image gets (more = freer)")
    seed = Input(INT, default=0, min=0, max=_INT64, widget="seed")
    batch = Input(INT, default=1, min=1, max=64)

    def run(self, ctx: RunContext):
        from nodes.lib.rng import Stream
        from nodes.lib.upscalers import x4_condition

        if self.model.family != "sd_x4_upscaler" and int(self.model.unet.config.in_channels) != 7:
            raise NodeInputError("model", f"needs the SD x4 upscaler, got a {self.model.family} "
                                 "model")
        cond, noise = x4_condition(self.model, self.image, self.noise_level,
                                   Stream.start(self.seed), int(self.batch))
        return cond, noise


@node("upscale.latent_x2", title="SD Latent x2 Upscale", category="upscale", version="1.1.0",
      outputs=[Output("latent", LATENT)])
class LatentX2UpscaleNode:
    """Double a latent's size with the SD latent upscaler (its own Euler loop: the model is
    preconditioned differently from an ordinary UNet). Encode the prompts with its CLIP."""

    model = Input(MODEL, description="sd-x2-latent-upscaler")
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING, optional=True, connection_only=True)
    latent = Input(LATENT)
    steps = Input(INT, default=20, min=1, max=1000)
    scale = Input(FLOAT, default=9.0, min=0.0, max=30.0, step=0.1)
    seed = Input(INT, default=0, min=0, max=_INT64, widget="seed",
                 description="ignored when `after` is connected (the stream continues)",
                 ignored_when={"after": LINKED})
    after = Input(RNG, optional=True, connection_only=True,
                  description="continue this random stream (the `rng` of the VAE Encode that "
                  "made the latent, as the pipeline does when given an image)")

    def run(self, ctx: RunContext):
        from nodes.lib.rng import Stream
        from nodes.lib.sampler import Hooks
        from nodes.lib.upscalers import latent_x2

        if self.scale > 1.0 and self.negative is None:
            raise NodeInputError("negative", "guidance scale > 1 needs a negative conditioning")
        hooks = Hooks(progress=ctx.progress, check_cancelled=ctx.check_cancelled,
                      preview=bool(ctx.options.get("previews", True)))
        try:
            return latent_x2(self.model, self.positive, self.negative, self.latent,
                             int(self.steps), float(self.scale), Stream.of(self.seed, self.after),
                             hooks)
        except ValueError as exc:
            raise NodeInputError("positive", str(exc)) from None


@node("upscale.latent_resize", title="Resize Latent", category="upscale", version="1.0.0",
      outputs=[Output("latent", LATENT)])
class LatentResizeNode:
    """Scale a latent (e.g. for a "hires fix": resize, then a Sampler at strength < 1)."""

    latent = Input(LATENT)
    scale = Input(FLOAT, default=2.0, min=0.125, max=8.0, step=0.125)
    method = Input(STRING, default="nearest-exact",
                   choices=("nearest-exact", "nearest", "bilinear", "bicubic", "area"))

    def run(self, ctx: RunContext):
        import torch.nn.functional as F

        h, w = self.latent.shape[-2:]
        size = (max(1, round(h * self.scale)), max(1, round(w * self.scale)))
        kwargs = {"align_corners": False} if self.method in ("bilinear", "bicubic") else {}
        return F.interpolate(self.latent.float(), size=size, mode=self.method, **kwargs)


@node("upscale.resample", title="Resample Image", category="upscale", version="1.0.0",
      outputs=[Output("image", IMAGE)])
class ResampleImageNode:
    """Scale an image by a factor with a classic filter (no model)."""

    image = Input(IMAGE)
    scale = Input(FLOAT, default=2.0, min=0.05, max=16.0, step=0.05)
    method = Input(STRING, default="lanczos", choices=("lanczos", "bicubic", "bilinear",
                                                       "nearest"))

    def run(self, ctx: RunContext):
        from nodes.lib.images import resize_image

        h, w = self.image.shape[-2:]
        return resize_image(self.image, max(1, round(w * self.scale)),
                            max(1, round(h * self.scale)), self.method)
