"""Pixel-space diffusion: seeded noise at full image resolution, and the sampled pixels as an
image. Pixel models (DDPM's UNet2DModel, DeepFloyd IF) denoise the image itself, so there is no
VAE between the Sampler and the picture: the Sampler's LATENT output already is the image in
[-1, 1]."""

from __future__ import annotations

from engine.errors import NodeInputError
from engine.node import LINKED, Input, Output, RunContext, node
from engine.types import INT, STRING
from nodes._loading import apply_model_budget, existing_model_path, path_config_preflight
from nodes._types import IMAGE, LATENT, MODEL, NOISE, RNG
from nodes.lib.families import DTYPES, PREDICTIONS

_INT64 = 2**63 - 1


def pixel_channels(model) -> int:
    """Channels of the images a pixel model denoises: what its loader recorded in
    `extra["sample_channels"]` (a model that takes extra conditioning channels, or predicts
    a variance besides the noise, has in/out channels that differ from the image's), else the
    UNet's input channels."""
    channels = (model.extra or {}).get("sample_channels")
    if channels is not None:
        return int(channels)
    return int(model.unet.config.in_channels)


@node("pixel.noise", title="Pixel Noise", category="pixel", version="1.0.0",
      outputs=[Output("noise", NOISE, "unit noise at full image resolution and the random "
                                      "stream after it (the Sampler's stochastic schedulers "
                                      "continue it)"),
               Output("rng", RNG, "the random stream after this draw")])
class PixelNoiseNode:
    """Unit Gaussian noise [batch, channels, height, width] for a pixel-space model, drawn on
    the CPU from the seed exactly as diffusers' pixel pipelines (DDPM, DDIM, DeepFloyd IF) draw
    their initial images, so a seed gives the same image on any device. Latent Noise is 1/8 of
    the image size because a VAE sits in between; here the model works on the pixels."""

    seed = Input(INT, default=0, min=0, max=_INT64, widget="seed",
                 description="ignored when `after` is connected (the stream continues)",
                 ignored_when={"after": LINKED})
    width = Input(INT, default=64, min=1, max=16384)
    height = Input(INT, default=64, min=1, max=16384)
    batch = Input(INT, default=1, min=1, max=64)
    model = Input(MODEL, optional=True, connection_only=True,
                  description="takes the image channels and device from the model")
    channels = Input(INT, default=3, min=1, max=64,
                     description="image channels when no model is connected",
                     ignored_when={"model": LINKED})
    after = Input(RNG, optional=True, connection_only=True,
                  description="continue this random stream instead of starting one from the "
                  "seed (a pipeline that draws several tensors from one generator)")

    @classmethod
    def preflight(cls, values, ctx):
        """Before anything runs: a width x height x batch that fits in memory (a lower bound:
        nodes._limits.image_memory counts a latent pipeline; a pixel one needs more)."""
        from nodes._limits import image_size_problems

        yield from image_size_problems(values, ctx.device)

    def run(self, ctx: RunContext):
        import torch

        from nodes.lib.rng import Noise, Stream

        channels = int(self.channels)
        device = "cpu"
        if self.model is not None:
            channels = pixel_channels(self.model)
            device = self.model.device if self.model.device is not None else "cpu"
            factor = _size_factor(self.model)
            for name in ("width", "height"):
                value = getattr(self, name)
                if value % factor:
                    raise NodeInputError(name, f"{value} is not a multiple of {factor}, which "
                                         f"this model's {factor}x downsampling needs; try "
                                         f"{max(factor, value // factor * factor)}")
        stream = Stream.of(self.seed, self.after)
        shape = (int(self.batch), channels, int(self.height), int(self.width))
        samples = stream.randn(shape, device=device, dtype=torch.float32)
        position = stream.position()
        return Noise(samples, position), position


def _size_factor(model) -> int:
    """How many times the UNet halves the image: sides must be multiples of this."""
    blocks = getattr(model.unet.config, "down_block_types", None) or ()
    return 2 ** max(0, len(blocks) - 1)


@node("pixel.decode", title="Pixel Decode", category="pixel", version="1.0.0",
      outputs=[Output("image", IMAGE, "the image in 0..1 (float [B, 3, H, W] on the CPU)")])
class PixelDecodeNode:
    """A pixel-space model's sample (the Sampler's output, in -1..1) to an image in 0..1,
    clamped, as diffusers' DDPM / DDIM pipelines do: no VAE, only the change of range. A
    one-channel (grey) sample becomes three equal channels, the IMAGE every other node takes."""

    sample = Input(LATENT, description="the Sampler's output for a pixel-space model")

    def run(self, ctx: RunContext):
        from nodes.lib.pixel import to_image

        if self.sample.ndim != 4 or self.sample.shape[1] not in (1, 3):
            raise NodeInputError("sample", f"expected pixels [batch, 3, height, width], got "
                                 f"shape {tuple(self.sample.shape)}; a latent model's "
                                 "output needs VAE Decode")
        return to_image(self.sample)


@node("loaders.pixel_model", title="Load Pixel Model", category="loaders", version="1.0.0",
      outputs=[Output("model", MODEL, "the UNet2DModel with its scheduler config, for "
                                      "Scheduler, UNet Step and Pixel Noise"),
               Output("classes", STRING, "the class labels it knows, one 'index: name' a "
                                         "line (empty for an unconditional model)")])
class LoadPixelModel:
    """Load a diffusers UNet2DModel folder (model_index.json of a DDPMPipeline / DDIMPipeline,
    unet/, scheduler/): DDPM-style models that denoise the pixels themselves, unconditional
    (CIFAR-10, CelebA-HQ, churches) or class-conditional (`num_class_embeds`; a
    class_names.json list in the folder names the labels). No text encoder and no VAE: sample
    with Pixel Noise, Unconditional or Class Label, and Pixel Decode."""

    path = Input(STRING, default="", path=True, widget="folder", library="checkpoints",
                 description="a diffusers DDPM / DDIM pipeline folder; a name in the model "
                             "library's checkpoints folders")
    prediction = Input(STRING, default="auto", choices=("auto", *PREDICTIONS),
                       description="what the UNet predicts; 'auto' reads the scheduler config")
    dtype = Input(STRING, default="auto", choices=DTYPES,
                  description="weights precision; 'auto': fp16 on a GPU, fp32 on the CPU")

    @classmethod
    def preflight(cls, values, ctx):
        """Before anything runs: the folder holds a UNet2DModel with its scheduler config and
        a readable class_names.json if any (configs only, no torch)."""
        from nodes.lib.pixel import folder_problem

        return path_config_preflight(values, ctx, "checkpoints",
                                     "choose a DDPM / DDIM pipeline folder", folder_problem)

    def run(self, ctx: RunContext):
        from nodes.lib.checkpoints import LOAD_ERRORS
        from nodes.lib.pixel import class_list, load_pixel_model

        path = existing_model_path(self.path, ctx.options, "checkpoints",
                                   "choose a DDPM / DDIM pipeline folder")
        apply_model_budget(ctx.options)
        try:
            model = load_pixel_model(path, dtype=self.dtype, device=ctx.device,
                                     prediction=self.prediction)
        except LOAD_ERRORS as exc:
            raise NodeInputError("path", str(exc)) from exc
        classes = class_list(model)
        ctx.set_ui(family=model.family, prediction_type=model.prediction_type,
                   classes=len(classes), class_names=classes)
        return model, "\n".join(f"{i}: {name}" for i, name in enumerate(classes))
