"""DALL·E 2 / unCLIP as nodes: a prior turns text into a CLIP image embedding, a decoder draws
an image from an embedding (Kandinsky 2.2, Stable unCLIP). The decoders run through the usual
UNet Step / CFG Combine / Scheduler / Sampler nodes: the embedding rides on a CONDITIONING
(nodes.lib.unclip; the UNet Step feeds it to the UNet). Torch only inside `run`."""

from __future__ import annotations

from engine.errors import NodeInputError
from engine.node import LINKED, Input, Output, RunContext, node
from engine.types import FLOAT, INT, STRING
from nodes._loading import (
    device_and_dtype,
    existing_model_path,
    load_or_path_error,
    subfolder_preflight,
)
from nodes._types import (
    CLIP,
    CLIP_VISION,
    CONDITIONING,
    IMAGE,
    IMAGE_EMBEDS,
    LATENT,
    MASK,
    MODEL,
    MOVQ,
    PRIOR,
    PRIOR_PROMPT,
    RNG,
    UNCLIP_NOISE,
    VAE,
)
from nodes.lib.families import DTYPES
from nodes.lib.schedules import SCHEDULER_NAMES
from nodes.sampling import IMAGE_COND

_INT64 = 2**63 - 1
_FOLDER = "a diffusers folder"


@node("loaders.kandinsky_prior", title="Load Kandinsky Prior", category="loaders",
      version="1.0.0",
      outputs=[Output("prior", PRIOR, "text encoder + PriorTransformer + its scheduler"),
               Output("image_encoder", CLIP_VISION, "the CLIP image encoder (variations, "
                                                    "interpolations)")])
class LoadKandinskyPrior:
    """Load a Kandinsky 2.2 prior folder (e.g. kandinsky-community/kandinsky-2-2-prior): the
    CLIP text encoder, the PriorTransformer that maps text to a CLIP image embedding, and the
    CLIP image encoder. Kept by the model manager like every loaded model."""

    path = Input(STRING, default="", path=True, widget="folder",
                 description=f"{_FOLDER}: tokenizer/, text_encoder/, prior/, scheduler/, "
                             "image_encoder/, image_processor/")
    dtype = Input(STRING, default="auto", choices=DTYPES,
                  description="weights precision; 'auto': fp16 on a GPU, fp32 on the CPU")

    @classmethod
    def preflight(cls, values, ctx):
        return subfolder_preflight(values, ctx, (("tokenizer", "text_encoder", "prior",
                                                "scheduler"),), "a Kandinsky 2.2 prior folder")

    def run(self, ctx: RunContext):
        from nodes.lib.unclip import KANDINSKY, load_prior

        path = existing_model_path(self.path, ctx.options, "checkpoints",
                                   "choose a Kandinsky 2.2 prior folder")
        device, dtype = device_and_dtype(ctx, self.dtype)
        prior = load_or_path_error(ctx, lambda: load_prior(path, dtype, device))
        if prior.family != KANDINSKY:
            raise NodeInputError("path", f"{path} is a Stable unCLIP folder; use Load Stable "
                                 "unCLIP for it")
        return prior, prior.image_encoder


@node("loaders.kandinsky_decoder", title="Load Kandinsky Decoder", category="loaders",
      version="1.0.0",
      outputs=[Output("model", MODEL, "the UNet that denoises MoVQ latents given an image "
                                      "embedding (UNet Step, Scheduler, Latent Noise)"),
               Output("movq", MOVQ, "the MoVQ image autoencoder (MoVQ Decode / Encode)")])
class LoadKandinskyDecoder:
    """Load a Kandinsky 2.2 decoder folder (e.g. kandinsky-community/kandinsky-2-2-decoder, or
    -decoder-inpaint whose UNet takes 9 channels): the image-embedding UNet and the MoVQ."""

    path = Input(STRING, default="", path=True, widget="folder",
                 description=f"{_FOLDER}: unet/, movq/, scheduler/")
    dtype = Input(STRING, default="auto", choices=DTYPES,
                  description="weights precision; 'auto': fp16 on a GPU, fp32 on the CPU")

    @classmethod
    def preflight(cls, values, ctx):
        return subfolder_preflight(values, ctx, (("unet", "movq", "scheduler"),),
                                 "a Kandinsky 2.2 decoder folder")

    def run(self, ctx: RunContext):
        from nodes.lib.unclip import load_kandinsky_decoder

        path = existing_model_path(self.path, ctx.options, "checkpoints",
                                   "choose a Kandinsky 2.2 decoder folder")
        device, dtype = device_and_dtype(ctx, self.dtype)
        model, movq = load_or_path_error(ctx, lambda: load_kandinsky_decoder(path, dtype, device))
        ctx.set_ui(family=model.family)
        return model, movq


@node("loaders.stable_unclip", title="Load Stable unCLIP", category="loaders", version="1.0.0",
      outputs=[Output("model", MODEL, "the SD 2.x UNet (class labels: the image embedding)"),
               Output("clip", CLIP, "the SD text encoder, for Text Encoder"),
               Output("vae", VAE, "the image autoencoder"),
               Output("prior", PRIOR, "the prior (text variant: stable-diffusion-2-1-unclip "
                                      "with prior/; None in the image variant)"),
               Output("image_encoder", CLIP_VISION, "the CLIP image encoder (image variant; "
                                                    "None in the text variant)"),
               Output("noise_aug", UNCLIP_NOISE, "embedding normalizer + noising schedule, "
                                                 "for unCLIP Conditioning")])
class LoadStableUnclip:
    """Load a Stable unCLIP folder (stabilityai/stable-diffusion-2-1-unclip, or a
    StableUnCLIPPipeline folder with a prior): the SD parts as Load Checkpoint gives them, plus
    the prior or CLIP image encoder and the image-embedding noise augmentation."""

    path = Input(STRING, default="", path=True, widget="folder",
                 description=f"{_FOLDER}: unet/, vae/, text_encoder/, image_normalizer/, "
                             "image_noising_scheduler/, and prior/ or image_encoder/")
    dtype = Input(STRING, default="auto", choices=DTYPES,
                  description="weights precision; 'auto': fp16 on a GPU, fp32 on the CPU")

    @classmethod
    def preflight(cls, values, ctx):
        return subfolder_preflight(values, ctx, (("unet", "text_encoder", "vae",
                                                "image_normalizer"),),
                                 "a Stable unCLIP folder")

    def run(self, ctx: RunContext):
        from nodes.lib.checkpoints import load_checkpoint
        from nodes.lib.unclip import load_image_encoder, load_noise_aug, load_prior

        path = existing_model_path(self.path, ctx.options, "checkpoints",
                                   "choose a Stable unCLIP folder")
        device, dtype = device_and_dtype(ctx, self.dtype)

        def load_all():
            noise_aug = load_noise_aug(path, dtype, device)
            loaded = load_checkpoint(path, dtype=self.dtype, device=ctx.device)
            prior = load_prior(path, dtype, device) if (path / "prior").is_dir() else None
            encoder = load_image_encoder(path, dtype, device)
            return loaded, prior, encoder, noise_aug

        loaded, prior, encoder, noise_aug = load_or_path_error(ctx, load_all)
        if getattr(loaded.model.unet.config, "class_embed_type", None) != "projection":
            raise NodeInputError("path", f"{path}: the UNet takes no image embedding "
                                 "(class_embed_type is not 'projection'); not Stable unCLIP")
        ctx.set_ui(family=loaded.model.family, prior=prior is not None,
                   image_encoder=encoder is not None)
        return loaded.model, loaded.clip, loaded.vae, prior, encoder, noise_aug


@node("unclip.prior_prompt", title="Prior Prompt", category="unclip", version="1.0.0",
      outputs=[Output("prompt", PRIOR_PROMPT, "the text encoded for the Prior")])
class PriorPromptNode:
    """A prompt (and optional negative prompt) through the prior's CLIP text encoder: the
    projected text embedding and the token states the PriorTransformer attends to."""

    prior = Input(PRIOR)
    text = Input(STRING, default="", multiline=True)
    negative = Input(STRING, default="", multiline=True,
                     description="optional; empty: the prior is guided against the empty "
                                 "prompt and hands on the blank-image embedding as the "
                                 "negative (diffusers' default)")

    def run(self, ctx: RunContext):
        from nodes.lib.unclip import encode_prior_prompt

        if self.prior is None:
            raise NodeInputError("prior", "this folder has no prior (an image-variation "
                                 "unCLIP model); use CLIP Image Encode instead")
        return encode_prior_prompt(self.prior, self.text, self.negative)


@node("unclip.prior", title="Prior", category="unclip", version="1.0.0",
      outputs=[Output("embeds", IMAGE_EMBEDS, "the CLIP image embedding the text describes"),
               Output("negative", IMAGE_EMBEDS, "the negative embedding for the decoder: the "
                                                "prior's for the negative prompt, else the "
                                                "embedding of a blank image"),
               Output("rng", RNG, "the random stream after the prior (Stable unCLIP draws its "
                                  "next noise from it)")])
class PriorNode:
    """DALL·E 2's prior: denoise a CLIP image embedding conditioned on the text's CLIP
    embeddings, with its own steps, scheduler, guidance and seed (draws as diffusers' prior
    pipeline with a fresh generator from the seed)."""

    prior = Input(PRIOR)
    prompt = Input(PRIOR_PROMPT, description="Prior Prompt")
    steps = Input(INT, default=25, min=1, max=1000)
    guidance = Input(FLOAT, default=4.0, min=0.0, max=30.0, step=0.1,
                     description="the prior's classifier-free guidance scale (> 1 to guide)")
    scheduler = Input(STRING, default="default", choices=SCHEDULER_NAMES,
                      description="'default' is the prior folder's own scheduler")
    seed = Input(INT, default=0, min=0, max=_INT64, widget="seed",
                 ignored_when={"after": LINKED})
    batch = Input(INT, default=1, min=1, max=64)
    after = Input(RNG, optional=True, connection_only=True,
                  description="continue this random stream instead of starting one from the "
                              "seed (diffusers' interpolate: several priors, one generator)")

    def run(self, ctx: RunContext):
        from nodes.lib.rng import Stream
        from nodes.lib.unclip import build_scheduler, run_prior

        if self.prior is None:
            raise NodeInputError("prior", "this folder has no prior (an image-variation "
                                 "unCLIP model); use CLIP Image Encode instead")
        try:
            build_scheduler(self.scheduler, self.prior.scheduler_config, int(self.steps))
        except (ValueError, TypeError, AttributeError) as exc:
            raise NodeInputError("scheduler", f"{self.scheduler!r} does not fit this prior "
                                 f"({exc})") from exc
        if self.prompt.hidden.shape[-1] != self.prior.text[1].config.hidden_size:
            raise NodeInputError("prompt", "was encoded by another prior's text encoder; "
                                 "connect a Prior Prompt fed by this prior")
        stream = Stream.of(self.seed, self.after)
        embeds, negative = run_prior(
            self.prior, self.prompt, int(self.steps), float(self.guidance), self.scheduler,
            stream.gen, int(self.batch), progress=ctx.progress,
            check_cancelled=ctx.check_cancelled)
        stream.used()
        return embeds, negative, stream.position()


@node("unclip.image_encode", title="CLIP Image Encode", category="unclip", version="1.0.0",
      outputs=[Output("embeds", IMAGE_EMBEDS, "the images' CLIP image embeddings"),
               Output("negative", IMAGE_EMBEDS, "the embedding of a blank input (Kandinsky's "
                                                "negative image embedding)")])
class CLIPImageEncodeNode:
    """Images to CLIP image embeddings (DALL·E 2's variations: decode an image's embedding),
    through the model folder's own image processor (resize, centre crop, normalise)."""

    image_encoder = Input(CLIP_VISION)
    image = Input(IMAGE)

    def run(self, ctx: RunContext):
        from nodes.lib.unclip import encode_images, zero_image_embeds

        if self.image_encoder is None:
            raise NodeInputError("image_encoder", "this folder has no image encoder (a text "
                                 "unCLIP model); use a Prior instead")
        embeds = encode_images(self.image_encoder, self.image)
        return embeds, zero_image_embeds(self.image_encoder, embeds.shape[0])


@node("unclip.mix", title="Embedding Mix", category="unclip", version="1.0.0",
      outputs=[Output("embeds", IMAGE_EMBEDS, "Σ weight_i · embeds_i")])
class EmbeddingMixNode:
    """Weighted sum of image embeddings from images and/or prompts (DALL·E 2's interpolations;
    the arithmetic of diffusers' KandinskyV22PriorPipeline.interpolate). Weights are used as
    given: for an interpolation make them sum to 1."""

    embeds_1 = Input(IMAGE_EMBEDS)
    weight_1 = Input(FLOAT, default=0.5, min=-10.0, max=10.0, step=0.05)
    embeds_2 = Input(IMAGE_EMBEDS, optional=True, connection_only=True)
    weight_2 = Input(FLOAT, default=0.5, min=-10.0, max=10.0, step=0.05)
    embeds_3 = Input(IMAGE_EMBEDS, optional=True, connection_only=True)
    weight_3 = Input(FLOAT, default=0.0, min=-10.0, max=10.0, step=0.05)
    embeds_4 = Input(IMAGE_EMBEDS, optional=True, connection_only=True)
    weight_4 = Input(FLOAT, default=0.0, min=-10.0, max=10.0, step=0.05)

    def run(self, ctx: RunContext):
        from nodes.lib.unclip import mix_embeddings

        parts = [(f"embeds_{i}", getattr(self, f"embeds_{i}"), getattr(self, f"weight_{i}"))
                 for i in range(1, 5)]
        parts = [p for p in parts if p[1] is not None]
        dims = {p[1].shape[-1] for p in parts}
        if len(dims) > 1:
            name = next(p[0] for p in parts if p[1].shape[-1] != parts[0][1].shape[-1])
            raise NodeInputError(name, f"embeddings of sizes {sorted(dims)} cannot be mixed; "
                                 "use one model's encoder and prior")
        try:
            return mix_embeddings([p[1] for p in parts], [float(p[2]) for p in parts])
        except ValueError as exc:
            raise NodeInputError(parts[-1][0], str(exc)) from exc


@node("unclip.conditioning", title="Image Embedding Conditioning", category="unclip",
      version="1.0.0",
      outputs=[Output("conditioning", CONDITIONING, "for CFG Combine (positive or negative) "
                                                    "with a Kandinsky 2.2 decoder")])
class ImageEmbedConditioningNode:
    """A CLIP image embedding as the conditioning of a Kandinsky 2.2 decoder: the UNet Step
    feeds it to the UNet's image-embedding inputs (use one for the positive and one, from the
    Prior's or CLIP Image Encode's `negative`, for the negative)."""

    embeds = Input(IMAGE_EMBEDS)

    def run(self, ctx: RunContext):
        from nodes.lib.bundles import Conditioning
        from nodes.lib.unclip import KANDINSKY

        if self.embeds is None:
            raise NodeInputError("embeds", "no embedding arrived (a Prior without an image "
                                 "encoder has no negative; connect another)")
        e = self.embeds.float()
        return Conditioning(e[:, None, :], family=KANDINSKY, extra={"image_embeds": e})


@node("unclip.noise_level", title="unCLIP Conditioning", category="unclip", version="1.0.0",
      outputs=[Output("conditioning", CONDITIONING, "the prompt plus the noised image "
                                                    "embedding (the UNet's class labels)"),
               Output("rng", RNG, "the random stream after the embedding's noise (Latent "
                                  "Noise continues it, as StableUnCLIPPipeline does)")])
class UnclipConditioningNode:
    """Stable unCLIP: add noise of `noise_level` to the image embedding and join it with the
    level's embedding, as the UNet's class labels (more noise: looser variations). The
    negative prompt gets zeros, as in diffusers' pipeline."""

    noise_aug = Input(UNCLIP_NOISE)
    conditioning = Input(CONDITIONING, description="the prompt (Text Encoder)")
    embeds = Input(IMAGE_EMBEDS, description="from a Prior or CLIP Image Encode")
    noise_level = Input(INT, default=0, min=0, max=999,
                        description="noise added to the embedding (0: none)")
    seed = Input(INT, default=0, min=0, max=_INT64, widget="seed",
                 ignored_when={"after": LINKED})
    after = Input(RNG, optional=True, connection_only=True,
                  description="continue this random stream (the Prior's) instead of the seed")

    def run(self, ctx: RunContext):
        from nodes.lib.bundles import Conditioning
        from nodes.lib.rng import Stream
        from nodes.lib.unclip import noise_image_embeds

        if self.embeds is None:
            raise NodeInputError("embeds", "no embedding arrived")
        n_train = int(self.noise_aug.scheduler_config.get("num_train_timesteps", 1000))
        if self.noise_level >= n_train:
            raise NodeInputError("noise_level", f"{self.noise_level} is past the noising "
                                 f"schedule's {n_train} steps; use at most {n_train - 1}")
        stream = Stream.of(self.seed, self.after)
        labels = noise_image_embeds(self.noise_aug, self.embeds, int(self.noise_level),
                                    stream.gen)
        stream.used()
        c = self.conditioning
        out = Conditioning(c.embeds, c.pooled, c.family, dict(c.extra or {}), labels)
        return out, stream.position()


@node("unclip.movq_decode", title="MoVQ Decode", category="latents", version="1.0.0",
      outputs=[Output("image", IMAGE)])
class MovqDecodeNode:
    """Kandinsky latents to an image with the MoVQ decoder (unquantised, as the pipelines
    decode)."""

    movq = Input(MOVQ)
    latent = Input(LATENT)

    def run(self, ctx: RunContext):
        from nodes.lib.unclip import movq_decode

        return movq_decode(self.movq, self.latent)


@node("unclip.movq_encode", title="MoVQ Encode", category="latents", version="1.0.0",
      outputs=[Output("latent", LATENT)])
class MovqEncodeNode:
    """An image to Kandinsky latents with the MoVQ encoder (for inpainting)."""

    movq = Input(MOVQ)
    image = Input(IMAGE)

    def run(self, ctx: RunContext):
        from nodes.lib.unclip import movq_encode

        h, w = self.image.shape[-2:]
        if h % 8 or w % 8:
            raise NodeInputError("image", f"{w}x{h} is not a multiple of 8 on both sides; "
                                 "resize or crop it first")
        return movq_encode(self.movq, self.image)


@node("unclip.inpaint_conditioning", title="Kandinsky Inpaint Conditioning", category="unclip",
      version="1.0.0",
      outputs=[Output("image_cond", IMAGE_COND, "for the Sampler's image_cond (with the same "
                                                "latent as its init and the mask)")])
class KandinskyInpaintNode:
    """The Kandinsky 2.2 inpainting decoder's extra input: the masked image's MoVQ latents and
    the keep mask (grown by a latent pixel, as the pipeline does); the Sampler also pastes the
    noised original back outside the mask after every step."""

    latent = Input(LATENT, description="MoVQ Encode of the image")
    mask = Input(MASK, description="1 = repaint")

    def run(self, ctx: RunContext):
        from nodes.lib.unclip import kandinsky_inpaint_conditioning

        try:
            return kandinsky_inpaint_conditioning(self.latent, self.mask)
        except ValueError as exc:
            raise NodeInputError("mask", str(exc)) from exc
