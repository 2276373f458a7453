"""GLIDE-style pixel cascades (DeepFloyd IF): a 64 px text-conditional pixel model, then a
diffusion upsampler that sees the noised low-resolution image. Sampling reuses Scheduler, UNet
Step, CFG Combine and Sampler; Pixel Noise (nodes.pixel) draws stage I's noise and Pixel Decode
turns the final pixels into an image. Torch is imported only when a node runs."""

from __future__ import annotations

from engine.errors import NodeInputError
from engine.node import LINKED, Input, Output, RunContext, node
from engine.types import INT, STRING
from nodes._loading import apply_model_budget, existing_model_path
from nodes._types import CONDITIONING, IMAGE, LATENT, MODEL, NOISE, RNG, T5
from nodes.lib.families import DTYPES
from nodes.sampling import IMAGE_COND

_INT64 = 2**63 - 1
_CHOOSE = "choose a DeepFloyd IF diffusers folder (stage I, e.g. IF-I-XL-v1.0, or stage II, " \
          "e.g. IF-II-L-v1.0)"


@node("loaders.deepfloyd_if", title="Load DeepFloyd IF", category="loaders", version="1.0.0",
      outputs=[Output("model", MODEL, "the stage's pixel UNet with its DDPM (learned variance) "
                                      "scheduler config; stage II also its image-noising "
                                      "scheduler"),
               Output("t5", T5, "the folder's T5 tokenizer + encoder, for T5 Text Encoder "
                                "(none when the folder has no text_encoder/)")])
class LoadDeepFloydIF:
    """Load a DeepFloyd IF stage from a diffusers folder: stage I (64 px text-to-image) or
    stage II (the super-resolution model), told apart by the UNet's channels. The T5 tokenizer
    comes from the folder's tokenizer.json, or its spiece.model with the optional
    `sentencepiece` package. Weights from safetensors only."""

    path = Input(STRING, default="", path=True, widget="folder", library="checkpoints",
                 description="a DeepFloyd IF diffusers folder (model_index.json, unet/, "
                             "scheduler/, text_encoder/, tokenizer/)")
    dtype = Input(STRING, default="auto", choices=DTYPES,
                  description="weights precision; 'auto': fp16 on a GPU, fp32 on the CPU")

    @classmethod
    def preflight(cls, values, ctx):
        """Before anything runs: the folder has the files of an IF stage (no weights read)."""
        from nodes.lib.deepfloyd import folder_problem

        path = values.get("path")
        if not isinstance(path, str):
            return None
        if not path:
            return [("path", _CHOOSE)]
        resolved = ctx.resolve(path, "checkpoints")
        if not resolved.exists():
            return None  # run() says where it was looked for
        problem = folder_problem(resolved)
        return [("path", problem)] if problem else None

    def run(self, ctx: RunContext):
        from nodes.lib.deepfloyd import load_if
        from nodes.lib.model_files import CheckpointError

        path = existing_model_path(self.path, ctx.options, "checkpoints", _CHOOSE)
        apply_model_budget(ctx.options)
        try:
            loaded = load_if(path, dtype=self.dtype, device=ctx.device,
                             progress=lambda done, total: ctx.progress(done, total))
        except (CheckpointError, OSError) as exc:
            raise NodeInputError("path", str(exc)) from exc
        ctx.set_ui(family=loaded.stage, has_text_encoder=loaded.t5 is not None)
        return loaded.model, loaded.t5


@node("conditioning.t5_encode", title="T5 Text Encoder", category="conditioning",
      version="1.0.0", outputs=[Output("conditioning", CONDITIONING,
                                       "T5 embeddings [1, 77, dim] for CFG Combine")])
class T5TextEncode:
    """Encode a prompt with DeepFloyd IF's T5 encoder as IFPipeline does (lower-cased, 77
    tokens, no caption cleaning). Use one with empty text as the negative: IF's default."""

    t5 = Input(T5)
    text = Input(STRING, default="", multiline=True,
                 description="the prompt (over 77 T5 tokens is cut, as in diffusers)")

    @classmethod
    def preflight(cls, values, ctx):
        from nodes._limits import prompt_problem

        why = prompt_problem(values.get("text"))
        if why is not None:
            yield "text", why

    def run(self, ctx: RunContext):
        from nodes._limits import prompt_problem
        from nodes.lib.deepfloyd import encode_t5

        if self.t5 is None:
            raise NodeInputError("t5", "this folder has no text encoder; connect the T5 of the "
                                 "stage I loader (IF stage II folders often ship without one)")
        why = prompt_problem(self.text)
        if why is not None:
            raise NodeInputError("text", why)
        return encode_t5(self.t5, self.text)


@node("cascade.if_super_resolution", title="IF Super-Resolution Conditioning",
      category="pixel cascade", version="1.0.0",
      outputs=[Output("image_cond", IMAGE_COND, "the upsampled, noised low-res image (extra "
                                                "UNet channels) and its noise level (class "
                                                "labels)"),
               Output("noise", NOISE, "stage II's starting noise at the output size"),
               Output("rng", RNG, "the random stream after both draws")])
class IFSuperResolutionNode:
    """Prepare DeepFloyd IF stage II: draw its starting noise, upsample the low-res image
    bilinearly and noise it to `noise_level` (GLIDE's noise-conditioning augmentation), from
    one seeded stream in diffusers' order. Sample with UNet Step -> CFG Combine ->
    Sampler(noise, image_cond), then Pixel Decode."""

    model = Input(MODEL, description="a DeepFloyd IF stage II model")
    low_res = Input(LATENT, optional=True, connection_only=True,
                    description="stage I's Sampler output: pixels in -1..1 as floats, not "
                                "rounded to 8 bits (as the diffusers cascade passes them)")
    image = Input(IMAGE, optional=True, connection_only=True,
                  description="or an image (0..1) to upscale, when low_res is not connected",
                  ignored_when={"low_res": LINKED})
    width = Input(INT, default=256, min=8, max=4096, step=8)
    height = Input(INT, default=256, min=8, max=4096, step=8)
    noise_level = Input(INT, default=250, min=0, max=999,
                        description="how much noise the low-res image gets (more = freer; "
                                    "IF's default 250)")
    seed = Input(INT, default=0, min=0, max=_INT64, widget="seed",
                 description="stage II's own random stream (ignored when `after` is "
                             "connected)", ignored_when={"after": LINKED})
    batch = Input(INT, default=1, min=1, max=64)
    after = Input(RNG, optional=True, connection_only=True,
                  description="continue this random stream instead of starting from the seed")

    def run(self, ctx: RunContext):
        from nodes.lib.deepfloyd import STAGE_II, super_resolution_condition
        from nodes.lib.rng import Stream

        extra = self.model.extra or {}
        if self.model.family != STAGE_II or "image_noising_scheduler" not in extra:
            raise NodeInputError("model", f"needs a DeepFloyd IF stage II model (Load DeepFloyd "
                                 f"IF on an IF-II folder), got a {self.model.family} model")
        low = self.low_res
        if low is None:
            if self.image is None:
                raise NodeInputError("low_res", "connect stage I's Sampler output (or an image)")
            low = (self.image.float() * 2 - 1).contiguous()
        if low.ndim != 4 or low.shape[1] != int(extra.get("sample_channels", 3)):
            raise NodeInputError("low_res", f"expected pixels [batch, "
                                 f"{extra.get('sample_channels', 3)}, height, width], got shape "
                                 f"{tuple(low.shape)}; connect a pixel model's Sampler output")
        if self.batch % low.shape[0]:
            raise NodeInputError("batch", f"a batch of {self.batch} is not a multiple of the "
                                 f"{low.shape[0]} low-res images")
        stream = Stream.of(self.seed, self.after)
        cond, noise = super_resolution_condition(self.model, low, self.width, self.height,
                                                 self.noise_level, stream, int(self.batch))
        return cond, noise, noise.stream


@node("cascade.image_to_pixels", title="Image to Pixels", category="pixel cascade",
      version="1.0.0", outputs=[Output("pixels", LATENT, "the image in -1..1, what a pixel "
                                                          "model's Sampler takes as init")])
class ImageToPixelsNode:
    """An image (0..1) as a pixel-space model's sample (-1..1): the init of pixel img2img or
    inpainting (IF inpainting), where Latent models would use VAE Encode."""

    image = Input(IMAGE)

    def run(self, ctx: RunContext):
        if self.image.ndim != 4 or self.image.shape[1] != 3:
            raise NodeInputError("image", f"expected an RGB image [batch, 3, height, width], "
                                 f"got shape {tuple(self.image.shape)}")
        # contiguous: an image loaded from a file is a channels-last view, and the UNet's
        # convolutions give (slightly) other numbers on that layout than diffusers'
        return (self.image.float() * 2 - 1).contiguous()
