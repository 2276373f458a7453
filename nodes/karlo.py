"""DALL·E 2's literal layout (Karlo, diffusers' UnCLIPPipeline) as nodes: the prior runs through
Prior Prompt and Prior (nodes.unclip); Karlo Decoder Conditioning turns the image embedding and
the text into the 64 px decoder's conditioning; the decoder and the two super-resolution UNets
sample with the usual UNet Step / CFG Combine / Scheduler / Sampler, Pixel Noise and Pixel
Decode (nodes.pixel); Karlo Super-Resolution Conditioning upsamples the decoder's image, and
Last Steps Denoiser hands the final step to super_res_last. Torch only inside `run`."""

from __future__ import annotations

from engine.errors import NodeInputError
from engine.node import LINKED, Input, Output, RunContext, node
from engine.types import INT, STRING
from nodes._loading import (
    device_and_dtype,
    existing_model_path,
    load_or_path_error,
    subfolder_preflight,
)
from nodes._types import (
    CONDITIONING,
    GUIDED_DENOISER,
    IMAGE,
    IMAGE_EMBEDS,
    LATENT,
    MODEL,
    PRIOR,
    PRIOR_PROMPT,
)
from nodes.lib.families import DTYPES
from nodes.sampling import IMAGE_COND

_SUBFOLDERS = ("prior", "text_encoder", "tokenizer", "text_proj", "decoder", "super_res_first",
               "super_res_last", "prior_scheduler", "decoder_scheduler", "super_res_scheduler")


@node("loaders.karlo", title="Load Karlo (unCLIP)", category="loaders", version="1.0.0",
      outputs=[Output("prior", PRIOR, "CLIP text encoder + PriorTransformer + its "
                                      "UnCLIPScheduler (Prior Prompt, Prior)"),
               Output("decoder", MODEL, "the 64 px pixel decoder (learned variance) with its "
                                        "text projection (Karlo Decoder Conditioning)"),
               Output("super_res_first", MODEL, "the upsampler for every step but the last"),
               Output("super_res_last", MODEL, "the upsampler for the last step")])
class LoadKarlo:
    """Load a saved UnCLIPPipeline folder (kakaobrain/karlo-v1-alpha): DALL·E 2's prior, text
    projection, 64 px decoder and the two super-resolution UNets, part by part (diffusers can
    no longer load the deprecated pipeline as a whole). Kept by the model manager."""

    path = Input(STRING, default="", path=True, widget="folder", library="checkpoints",
                 description="an UnCLIPPipeline folder: " + ", ".join(s + "/" for s in
                                                                      _SUBFOLDERS))
    dtype = Input(STRING, default="auto", choices=DTYPES,
                  description="weights precision; 'auto': fp16 on a GPU, fp32 on the CPU")

    @classmethod
    def preflight(cls, values, ctx):
        return subfolder_preflight(values, ctx, (_SUBFOLDERS,), "a Karlo (UnCLIPPipeline) folder")

    def run(self, ctx: RunContext):
        from nodes.lib.karlo import load_karlo

        path = existing_model_path(self.path, ctx.options, "checkpoints",
                                   "choose a Karlo (UnCLIPPipeline) folder")
        device, dtype = device_and_dtype(ctx, self.dtype)
        prior, decoder, first, last = load_or_path_error(
            ctx, lambda: load_karlo(path, dtype, device))
        ctx.set_ui(family=decoder.family)
        return prior, decoder, first, last


@node("unclip.karlo_conditioning", title="Karlo Decoder Conditioning", category="unclip",
      version="1.0.0",
      outputs=[Output("positive", CONDITIONING, "the prompt and image embedding, for CFG "
                                                "Combine's positive"),
               Output("negative", CONDITIONING, "the empty prompt and the learned "
                                                "guidance embedding, for its negative")])
class KarloConditioningNode:
    """DALL·E 2's decoder conditioning (the text projection): four extra context tokens from the
    image embedding before the projected text tokens, and the image and text embeddings added
    to the timestep embedding. The negative replaces the image embedding with the learned
    classifier-free guidance embedding, as UnCLIPPipeline does."""

    decoder = Input(MODEL, description="Load Karlo's decoder")
    prompt = Input(PRIOR_PROMPT, description="the Prior Prompt the Prior was given")
    embeds = Input(IMAGE_EMBEDS, description="the Prior's image embedding")

    def run(self, ctx: RunContext):
        from nodes.lib.karlo import decoder_conditioning, is_karlo_decoder

        if not is_karlo_decoder(self.decoder):
            raise NodeInputError("decoder", "is not a Karlo decoder (it has no text "
                                 "projection); connect Load Karlo's decoder")
        if self.embeds is None:
            raise NodeInputError("embeds", "no embedding arrived; connect the Prior's embeds")
        proj_dim = int(self.decoder.extra["clip_dim"])
        for name, width in (("embeds", self.embeds.shape[-1]),
                            ("prompt", self.prompt.embeds.shape[-1])):
            if width != proj_dim:
                raise NodeInputError(name, f"has embeddings of size {width}, but this decoder "
                                     f"takes {proj_dim}; use the prior of the same folder")
        return decoder_conditioning(self.decoder, self.prompt, self.embeds)


@node("unclip.karlo_super_resolution", title="Karlo Super-Resolution Conditioning",
      category="unclip", version="1.0.0",
      outputs=[Output("image_cond", IMAGE_COND, "the upsampled small image, for the "
                                                "Sampler's image_cond with a super-res model")])
class KarloSuperResolutionNode:
    """The super-resolution UNets' extra input: the decoder's image clamped to -1..1 and
    upsampled bicubically (antialiased) to the output size, as UnCLIPPipeline does. Draw the
    starting noise with Pixel Noise at the same size (continuing the decoder Sampler's rng)."""

    low_res = Input(LATENT, optional=True, connection_only=True,
                    description="the decoder's Sampler output (pixels in -1..1)")
    image = Input(IMAGE, optional=True, connection_only=True,
                  description="or an image (0..1) to upscale, when low_res is not connected",
                  ignored_when={"low_res": LINKED})
    width = Input(INT, default=256, min=8, max=4096, step=8,
                  description="output size (Karlo: 256, the super-res UNets' sample size)")
    height = Input(INT, default=256, min=8, max=4096, step=8)

    def run(self, ctx: RunContext):
        from nodes.lib.karlo import super_resolution_condition

        low = self.low_res
        if low is None:
            if self.image is None:
                raise NodeInputError("low_res", "connect the decoder's Sampler output (or an "
                                     "image)")
            low = (self.image.float() * 2 - 1).contiguous()
        if low.ndim != 4 or low.shape[1] != 3:
            raise NodeInputError("low_res", f"expected pixels [batch, 3, height, width], got "
                                 f"shape {tuple(low.shape)}; connect a pixel model's Sampler "
                                 "output")
        return super_resolution_condition(low, int(self.width), int(self.height))


@node("sampling.last_steps", title="Last Steps Denoiser", category="sampling", version="1.0.0",
      outputs=[Output("denoiser", GUIDED_DENOISER, "`first` for the early steps, `last` for "
                                                   "the final `steps`")])
class LastStepsNode:
    """Hand the last steps of one Sampler run to another model (Karlo: super_res_first for all
    steps but the last, super_res_last for the last), so one scheduler and one random stream
    run the whole schedule as the pipeline does."""

    first = Input(GUIDED_DENOISER, description="for the early steps (the Sampler takes its "
                                               "model's scheduler config and device)")
    last = Input(GUIDED_DENOISER, description="for the last `steps` steps")
    steps = Input(INT, default=1, min=1, max=1000,
                  description="how many final steps `last` runs")

    def run(self, ctx: RunContext):
        from nodes.lib.karlo import LastStepsDenoiser

        for name in ("first", "last"):
            if not getattr(getattr(self, name), "guided", False):
                raise NodeInputError(name, "connect it through CFG Combine (scale 1 for no "
                                     "guidance)")
        if self.first.in_channels != self.last.in_channels:
            raise NodeInputError("last", f"its model takes {self.last.in_channels} input "
                                 f"channels, the first's {self.first.in_channels}")
        return LastStepsDenoiser(self.first, self.last, int(self.steps))
