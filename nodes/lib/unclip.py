"""DALL·E 2 / unCLIP (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with
CLIP Latents"): a prior turns a caption into a CLIP image embedding, and a decoder draws an
image from that embedding. Two descendants are loaded here from diffusers folders:

- Kandinsky 2.2: a prior folder (CLIP text encoder with projection, PriorTransformer,
  UnCLIPScheduler, CLIP vision encoder) and a decoder folder (a UNet fed the embedding through
  `added_cond_kwargs["image_embeds"]`, the MoVQ autoencoder, a DDPM scheduler);
- Stable unCLIP (SD 2.1-unclip): an SD 2.x UNet whose class labels are a noised image
  embedding plus the embedding of the noise level, with an optional prior (text variant) or
  CLIP vision encoder (image variant).

The sampling arithmetic follows diffusers' KandinskyV22Prior / KandinskyV22(Inpaint) /
StableUnCLIP(Img2Img) pipelines step for step so that Loom's graphs give the same numbers.
Weights are only read from safetensors; every component lives in the model manager.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nodes.lib.bundles import ModelBundle
from nodes.lib.denoise import ImageConditioning
from nodes.lib.model_files import read_json_object as _read_json
from nodes.lib.model_manager import ModelHandle, ModelManager, manager, resolve
from nodes.lib.vram import module_device, placement, stage

KANDINSKY = "kandinsky22"
KANDINSKY_INPAINT = "kandinsky22_inpaint"


class UnclipFolderError(ValueError):
    """The folder is not the unCLIP component folder a loader expects (message says what)."""


# ---- values on the edges ----------------------------------------------------------------------


@dataclass(eq=False)
class PriorBundle:
    """The PRIOR edge: text encoder + tokenizer, the PriorTransformer and its scheduler config,
    and (Kandinsky) the image encoder whose embedding of a blank image is the negative."""

    text_ref: Any  # (tokenizer, CLIPTextModelWithProjection): a ModelHandle or the tuple
    prior_ref: Any  # PriorTransformer: a ModelHandle or the module
    scheduler_config: dict[str, Any]
    family: str  # "kandinsky22" | "stable_unclip"
    dtype: Any
    device: Any
    source: str
    image_encoder: Any = None  # ImageEncoderBundle | None

    @property
    def text(self) -> tuple[Any, Any]:
        return tuple(resolve(self.text_ref))

    @property
    def prior(self) -> Any:
        return resolve(self.prior_ref)

    def __loom_cache_size__(self) -> int:
        return 0  # the model manager owns this memory


@dataclass(eq=False)
class ImageEncoderBundle:
    """The CLIP_VISION edge: a CLIP image processor and CLIPVisionModelWithProjection."""

    ref: Any  # (processor, encoder): a ModelHandle or the tuple
    dtype: Any
    device: Any
    source: str

    @property
    def parts(self) -> tuple[Any, Any]:
        return tuple(resolve(self.ref))

    def __loom_cache_size__(self) -> int:
        return 0


@dataclass(eq=False)
class MovqBundle:
    """The MOVQ edge: Kandinsky's MoVQ (a VQModel whose latents are used unquantised)."""

    ref: Any
    dtype: Any
    device: Any
    source: str

    @property
    def movq(self) -> Any:
        return resolve(self.ref)

    def __loom_cache_size__(self) -> int:
        return 0


@dataclass(eq=False)
class NoiseAugBundle:
    """The UNCLIP_NOISE edge: Stable unCLIP's image-embedding normalizer (CLIP statistics) and
    the scheduler that noises the embedding to the requested noise level."""

    normalizer_ref: Any
    scheduler_config: dict[str, Any]
    dtype: Any
    device: Any
    source: str

    @property
    def normalizer(self) -> Any:
        return resolve(self.normalizer_ref)

    def __loom_cache_size__(self) -> int:
        return 0


@dataclass(eq=False)
class KandinskyInpaintConditioning(ImageConditioning):
    """Kandinsky's inpainting input: `concat` is [masked-image latents, keep mask] (appended to
    the latents), `keep` the latent-resolution mask of what to keep (1), which the Sampler also
    uses to paste the noised original back after every step, as the pipeline does."""

    keep: Any = None

    def __loom_cache_size__(self) -> int:
        size = super().__loom_cache_size__()
        if self.keep is not None:
            size += self.keep.numel() * self.keep.element_size()
        return size


# ---- loading ----------------------------------------------------------------------------------


def _need(folder: Path, subs: tuple[str, ...], what: str) -> None:
    missing = [s for s in subs if not (folder / s).is_dir()]
    if missing:
        raise UnclipFolderError(
            f"{folder} is not {what}: it has no {', '.join(s + '/' for s in missing)} "
            f"(expected subfolders {', '.join(s + '/' for s in subs)})")


def _weights_check(folder: Path, stem: str) -> None:
    """Only safetensors weights are read; say so when a component has pickled ones only."""
    if any(folder.glob(f"{stem}*.safetensors")) or any(folder.glob(f"{stem}*.safetensors.*")):
        return
    pickled = sorted(p.name for p in folder.glob("*.bin"))
    hint = f" (only pickled {', '.join(pickled)}, which Loom does not load)" if pickled else ""
    raise UnclipFolderError(f"{folder}: no {stem}.safetensors weights{hint}")


def _key(path: Path, component: str, dtype: torch.dtype, device: torch.device) -> tuple:
    from engine.paths import file_identity

    return (file_identity(path), f"unclip:{component}", str(dtype), str(device))


def _handle(models: ModelManager, path: Path, component: str, dtype, device, load) -> Any:
    """A handle to `component`, loaded now so that errors belong to the loader node."""
    h = ModelHandle(models, _key(path, component, dtype, device), load)
    h.preload()
    return h


def _text_parts(path: Path, tok_sub: str, enc_sub: str, dtype, device):
    from transformers import CLIPTextModelWithProjection

    from nodes.lib.checkpoints import load_tokenizer

    _weights_check(path / enc_sub, "model")
    tokenizer = load_tokenizer(path / tok_sub)
    encoder = CLIPTextModelWithProjection.from_pretrained(
        str(path / enc_sub), dtype=dtype, use_safetensors=True, local_files_only=True)
    return tokenizer, stage(encoder, device)


def _prior_module(path: Path, sub: str, dtype, device):
    from diffusers import PriorTransformer

    _weights_check(path / sub, "diffusion_pytorch_model")
    prior = PriorTransformer.from_pretrained(str(path), subfolder=sub, torch_dtype=dtype,
                                             use_safetensors=True, local_files_only=True)
    return stage(prior, device)


def _image_encoder_parts(path: Path, proc_sub: str, dtype, device):
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    _weights_check(path / "image_encoder", "model")
    processor = CLIPImageProcessor.from_pretrained(str(path / proc_sub), local_files_only=True)
    encoder = CLIPVisionModelWithProjection.from_pretrained(
        str(path / "image_encoder"), dtype=dtype, use_safetensors=True, local_files_only=True)
    return processor, stage(encoder, device)


def load_image_encoder(path: Path, dtype, device, models: ModelManager | None = None
                       ) -> ImageEncoderBundle | None:
    """The CLIP vision encoder of an unCLIP folder (Kandinsky prior: image_processor/,
    Stable unCLIP img2img: feature_extractor/), or None when the folder has none."""
    models = manager() if models is None else models
    if not (path / "image_encoder").is_dir():
        return None
    proc_sub = next((s for s in ("image_processor", "feature_extractor")
                     if (path / s).is_dir()), None)
    if proc_sub is None:
        raise UnclipFolderError(f"{path}: image_encoder/ without an image_processor/ or "
                                "feature_extractor/ folder")
    h = _handle(models, path, "image_encoder", dtype, device,
                lambda: _image_encoder_parts(path, proc_sub, dtype, device))
    return ImageEncoderBundle(h, dtype, device, str(path))


def load_prior(path: Path, dtype, device, models: ModelManager | None = None) -> PriorBundle:
    """A prior from a Kandinsky 2.2 prior folder (tokenizer/, text_encoder/, prior/,
    scheduler/) or a Stable unCLIP folder (prior_tokenizer/, prior_text_encoder/, prior/,
    prior_scheduler/)."""
    models = manager() if models is None else models
    if (path / "prior_text_encoder").is_dir():
        subs = ("prior_tokenizer", "prior_text_encoder", "prior", "prior_scheduler")
        family = "stable_unclip"
    else:
        subs = ("tokenizer", "text_encoder", "prior", "scheduler")
        family = KANDINSKY
    _need(path, subs, "an unCLIP prior folder (Kandinsky 2.2 prior or Stable unCLIP with "
                      "a prior)")
    sched_file = path / subs[3] / "scheduler_config.json"
    if not sched_file.is_file():
        raise UnclipFolderError(f"{path}: {subs[3]}/ has no scheduler_config.json")
    sched = _read_json(sched_file)
    text_h = _handle(models, path, "prior_text", dtype, device,
                     lambda: _text_parts(path, subs[0], subs[1], dtype, device))
    prior_h = _handle(models, path, "prior", dtype, device,
                      lambda: _prior_module(path, "prior", dtype, device))
    encoder = load_image_encoder(path, dtype, device, models) if family == KANDINSKY else None
    return PriorBundle(text_h, prior_h, sched, family, dtype, device, str(path), encoder)


def _unet(path: Path, dtype, device):
    from diffusers import UNet2DConditionModel

    _weights_check(path / "unet", "diffusion_pytorch_model")
    unet = UNet2DConditionModel.from_pretrained(str(path), subfolder="unet", torch_dtype=dtype,
                                                use_safetensors=True, local_files_only=True)
    return stage(unet, device)


def _movq(path: Path, dtype, device):
    from diffusers import VQModel

    _weights_check(path / "movq", "diffusion_pytorch_model")
    movq = VQModel.from_pretrained(str(path), subfolder="movq", torch_dtype=dtype,
                                   use_safetensors=True, local_files_only=True)
    return stage(movq, device)


def load_kandinsky_decoder(path: Path, dtype, device, models: ModelManager | None = None
                           ) -> tuple[ModelBundle, MovqBundle]:
    """The UNet (as a MODEL) and the MoVQ of a Kandinsky 2.2 decoder folder (unet/, movq/,
    scheduler/); a 9-channel UNet is the inpainting decoder."""
    models = manager() if models is None else models
    _need(path, ("unet", "movq", "scheduler"), "a Kandinsky 2.2 decoder folder")
    unet_cfg = _read_json(path / "unet" / "config.json") \
        if (path / "unet" / "config.json").is_file() else {}
    if unet_cfg.get("addition_embed_type") == "image_hint":
        raise UnclipFolderError(f"{path}: a Kandinsky 2.2 ControlNet decoder (image_hint); "
                                "Loom runs the text-to-image and inpainting decoders only")
    if unet_cfg.get("addition_embed_type") != "image":
        raise UnclipFolderError(
            f"{path}: unet/ is not a Kandinsky 2.2 decoder UNet (its addition_embed_type is "
            f"{unet_cfg.get('addition_embed_type')!r}, expected 'image')")
    sched = _read_json(path / "scheduler" / "scheduler_config.json")
    movq_cfg = _read_json(path / "movq" / "config.json")
    unet_h = _handle(models, path, "unet", dtype, device, lambda: _unet(path, dtype, device))
    movq_h = _handle(models, path, "movq", dtype, device, lambda: _movq(path, dtype, device))
    in_ch = int(unet_cfg.get("in_channels", 4))
    family = KANDINSKY_INPAINT if in_ch == 9 else KANDINSKY
    extra = {"latent_channels": int(movq_cfg.get("latent_channels", 4)), "in_channels": in_ch,
             "kind": "folder"}
    model = ModelBundle(unet_h, family, sched.get("prediction_type", "epsilon"), sched, dtype,
                        device, str(path), extra)
    return model, MovqBundle(movq_h, dtype, device, str(path))


def _normalizer(path: Path, dtype, device):
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )

    _weights_check(path / "image_normalizer", "diffusion_pytorch_model")
    norm = StableUnCLIPImageNormalizer.from_pretrained(
        str(path), subfolder="image_normalizer", torch_dtype=dtype, use_safetensors=True,
        local_files_only=True)
    return stage(norm, device)


def load_noise_aug(path: Path, dtype, device, models: ModelManager | None = None
                   ) -> NoiseAugBundle:
    """Stable unCLIP's image_normalizer/ and image_noising_scheduler/."""
    models = manager() if models is None else models
    _need(path, ("image_normalizer", "image_noising_scheduler"), "a Stable unCLIP folder")
    sched = _read_json(path / "image_noising_scheduler" / "scheduler_config.json")
    h = _handle(models, path, "image_normalizer", dtype, device,
                lambda: _normalizer(path, dtype, device))
    return NoiseAugBundle(h, sched, dtype, device, str(path))


# ---- the prior --------------------------------------------------------------------------------


def _encode_texts(tokenizer, encoder, texts: list[str], device):
    inputs = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    mask = inputs.attention_mask.bool().to(device)
    out = encoder(inputs.input_ids.to(device))
    return out.text_embeds, out.last_hidden_state, mask


def build_scheduler(name: str, config: dict[str, Any], steps: int):
    from nodes.lib.schedules import SchedulerSpec

    return SchedulerSpec(name, dict(config), steps).build()


def zero_image_embeds(encoder_bundle: ImageEncoderBundle, batch: int = 1) -> torch.Tensor:
    """The embedding of an all-zero encoder input: Kandinsky's negative image embedding."""
    _, encoder = encoder_bundle.parts
    size = int(encoder.config.image_size)
    dtype = next(encoder.parameters()).dtype
    device = module_device(encoder)
    with torch.no_grad():
        zero = torch.zeros(1, 3, size, size, device=device, dtype=dtype)
        return encoder(zero).image_embeds.float().cpu().repeat(batch, 1)


@dataclass(eq=False)
class PriorPrompt:
    """The PRIOR_PROMPT edge: the prior's text inputs for the prompt rows (the prompt, and the
    negative prompt when one is given: diffusers runs both through the prior in one batch) and
    for the unconditional rows (the negative prompt, else the empty one)."""

    embeds: torch.Tensor  # CLIP text embeddings (projected) [rows, D]
    hidden: torch.Tensor  # last hidden states [rows, 77, W]
    mask: torch.Tensor  # attention mask (bool) [rows, 77]
    u_embeds: torch.Tensor
    u_hidden: torch.Tensor
    u_mask: torch.Tensor
    has_negative: bool

    def __loom_cache_size__(self) -> int:
        return sum(t.numel() * t.element_size() for t in (
            self.embeds, self.hidden, self.mask, self.u_embeds, self.u_hidden, self.u_mask))


@torch.no_grad()
def encode_prior_prompt(bundle: PriorBundle, text: str, negative: str = "") -> PriorPrompt:
    """Encode a prompt for the prior (KandinskyV22PriorPipeline._encode_prompt)."""
    tokenizer, encoder = bundle.text
    device = module_device(encoder)
    texts = [text] + ([negative] if negative else [])
    uncond = [negative if negative else ""] * len(texts)
    e, h, m = _encode_texts(tokenizer, encoder, texts, device)
    ue, uh, um = _encode_texts(tokenizer, encoder, uncond, device)
    return PriorPrompt(e, h, m, ue, uh, um, bool(negative))


@torch.no_grad()
def run_prior(bundle: PriorBundle, prompt: PriorPrompt, steps: int, guidance: float,
              scheduler: str, gen: torch.Generator, batch: int = 1,
              progress=None, check_cancelled=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text -> CLIP image embeddings [batch, D] and the negative embeddings (the prior's output
    for the negative prompt, drawn in the same batch as diffusers' KandinskyV22PriorPipeline
    does; without one, the blank-image embedding, or None without an image encoder)."""
    prior = bundle.prior
    device = module_device(prior)
    cfg = guidance > 1.0

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.to(device).repeat_interleave(batch, dim=0)

    embeds, hidden, mask = rows(prompt.embeds), rows(prompt.hidden), rows(prompt.mask)
    if cfg:
        embeds = torch.cat([rows(prompt.u_embeds), embeds])
        hidden = torch.cat([rows(prompt.u_hidden), hidden])
        mask = torch.cat([rows(prompt.u_mask), mask])

    sched = build_scheduler(scheduler, bundle.scheduler_config, steps)
    sched.set_timesteps(steps, device=device)
    timesteps = sched.timesteps
    n_rows = prompt.embeds.shape[0] * batch
    dim = int(prior.config.embedding_dim)
    latents = torch.randn((n_rows, dim), generator=gen, device="cpu",
                          dtype=embeds.dtype).to(device)
    latents = latents * sched.init_noise_sigma
    params = set(inspect.signature(sched.step).parameters)
    n = len(timesteps)
    for i, t in enumerate(timesteps):
        if check_cancelled is not None:
            check_cancelled()
        x = torch.cat([latents] * 2) if cfg else latents
        x = sched.scale_model_input(x, t)
        pred = prior(x, timestep=t, proj_embedding=embeds, encoder_hidden_states=hidden,
                     attention_mask=mask).predicted_image_embedding
        if cfg:
            p_uncond, p_text = pred.chunk(2)
            pred = p_uncond + guidance * (p_text - p_uncond)
        kwargs: dict[str, Any] = {}
        if "generator" in params:
            kwargs["generator"] = gen
        if "prev_timestep" in params and bundle.family in (KANDINSKY, "karlo"):
            # UnCLIPScheduler: Kandinsky's prior pipeline and Karlo's UnCLIPPipeline pass the
            # schedule's next timestep (StableUnCLIPPipeline does not, and the scheduler then
            # steps to t - 1)
            kwargs["prev_timestep"] = None if i + 1 == n else timesteps[i + 1]
        latents = sched.step(pred, timestep=t, sample=latents, **kwargs).prev_sample
        if progress is not None:
            progress(i + 1, n)
    latents = prior.post_process_latents(latents).float().cpu()
    if prompt.has_negative:
        return latents[:batch], latents[batch:]
    negative = zero_image_embeds(bundle.image_encoder, batch) \
        if bundle.image_encoder is not None else None
    return latents, negative


# ---- CLIP image embeddings --------------------------------------------------------------------


@torch.no_grad()
def encode_images(bundle: ImageEncoderBundle, image: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, 3, H, W] in 0..1 -> CLIP image embeddings [B, D], through the folder's own
    image processor on 8-bit pictures, as the pipelines do with PIL images."""
    from nodes.lib.images import as_pil, image_to_uint8

    processor, encoder = bundle.parts
    pictures = [as_pil(a) for a in image_to_uint8(image)]
    pixels = processor(images=pictures, return_tensors="pt").pixel_values
    param = placement(encoder)
    return encoder(pixels.to(param.device, param.dtype)).image_embeds.float().cpu()


def mix_embeddings(embeds: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Σ weight_i · embedding_i (DALL·E 2's interpolations; the arithmetic of
    KandinskyV22PriorPipeline.interpolate). Batch-1 embeddings are spread over larger ones."""
    rows = max(e.shape[0] for e in embeds)
    parts = []
    for e, w in zip(embeds, weights):
        if e.shape[0] != rows:
            if rows % e.shape[0]:
                raise ValueError(f"cannot mix a batch of {e.shape[0]} embeddings with {rows}")
            e = e.repeat(rows // e.shape[0], 1)
        parts.append((e * w).unsqueeze(0))
    return torch.cat(parts).sum(dim=0)


# ---- Stable unCLIP noise augmentation ---------------------------------------------------------


@torch.no_grad()
def noise_image_embeds(bundle: NoiseAugBundle, embeds: torch.Tensor, noise_level: int,
                       gen: torch.Generator) -> torch.Tensor:
    """Stable unCLIP's class labels: the embedding normalised, noised to `noise_level` with the
    image-noising schedule, un-normalised, and joined with the sinusoidal embedding of the
    noise level (StableUnCLIPPipeline.noise_image_embeddings)."""
    import diffusers
    from diffusers.models.embeddings import get_timestep_embedding

    embeds = embeds.float()
    noise = torch.randn(embeds.shape, generator=gen, device="cpu", dtype=embeds.dtype)
    levels = torch.tensor([int(noise_level)] * embeds.shape[0])
    norm = bundle.normalizer
    p = placement(norm)
    cls = getattr(diffusers, bundle.scheduler_config.get("_class_name") or "DDPMScheduler")
    sched = cls.from_config(dict(bundle.scheduler_config))
    x = norm.scale(embeds.to(p.device, p.dtype)).float().cpu()
    x = sched.add_noise(x, timesteps=levels, noise=noise)
    x = norm.unscale(x.to(p.device, p.dtype)).float().cpu()
    level_emb = get_timestep_embedding(timesteps=levels, embedding_dim=x.shape[-1],
                                       flip_sin_to_cos=True, downscale_freq_shift=0)
    return torch.cat((x, level_emb.to(x.dtype)), 1)


# ---- MoVQ -------------------------------------------------------------------------------------


@torch.no_grad()
def movq_decode(bundle: MovqBundle, latent: torch.Tensor) -> torch.Tensor:
    """Latents -> IMAGE in 0..1: the unquantised MoVQ decoder, as the Kandinsky pipelines
    decode (no scaling factor; force_not_quantize)."""
    movq = bundle.movq
    p = placement(movq)
    out = movq.decode(latent.to(p.device, p.dtype), force_not_quantize=True).sample
    return (out.float() * 0.5 + 0.5).clamp(0, 1).cpu()


@torch.no_grad()
def movq_encode(bundle: MovqBundle, image: torch.Tensor) -> torch.Tensor:
    """IMAGE in 0..1 -> MoVQ latents (the encoder's continuous output, before quantisation)."""
    movq = bundle.movq
    p = placement(movq)
    # laid out in memory as the pipelines' images from numpy are (NHWC), so that the
    # convolutions sum in the same order and the latents agree with diffusers' to the bit
    b, c, h, w = image.shape
    x = torch.empty((b, h, w, c), dtype=p.dtype, device=p.device).permute(0, 3, 1, 2)
    x.copy_(image.to(p.device, torch.float32) * 2.0 - 1.0)
    return movq.encode(x).latents.float().cpu()


# ---- Kandinsky inpainting ---------------------------------------------------------------------


def _grow_repaint(repaint: torch.Tensor) -> torch.Tensor:
    """Grow the repaint region by one latent pixel towards up, left, up-left, down, right and
    down-right (the Kandinsky inpainting pipeline's `prepare_mask`, which leaves the other two
    diagonals alone). repaint: [B, 1, h, w] of 0/1."""
    r = repaint > 0.5
    grown = r.clone()
    h, w = r.shape[-2:]
    # a repaint pixel at (i, j) also marks (i-1, j), (i, j-1), (i-1, j-1), (i+1, j), (i, j+1),
    # (i+1, j+1): shift the source by (-di, -dj) into the target
    for di, dj in ((-1, 0), (0, -1), (-1, -1), (1, 0), (0, 1), (1, 1)):
        src = r[..., max(0, -di):h - max(0, di), max(0, -dj):w - max(0, dj)]
        grown[..., max(0, di):h - max(0, -di), max(0, dj):w - max(0, -dj)] |= src
    return grown.to(repaint.dtype)


def kandinsky_inpaint_conditioning(latent: torch.Tensor, mask: torch.Tensor
                                   ) -> KandinskyInpaintConditioning:
    """The inpainting decoder's extra channels from the image's MoVQ latents and a MASK
    (1 = repaint): the mask binarised at 0.5 and resized (nearest) to the latents, its repaint
    region grown by a pixel, then [latents * keep, keep]."""
    m = mask.float().cpu()
    if m.ndim == 3:
        m = m[:, None]
    keep = 1.0 - (m >= 0.5).to(torch.float32)
    keep = F.interpolate(keep, tuple(latent.shape[-2:]), mode="nearest")
    keep = 1.0 - _grow_repaint(1.0 - keep)
    lat = latent.float().cpu()
    if keep.shape[0] != lat.shape[0]:
        if keep.shape[0] == 1:
            keep = keep.repeat(lat.shape[0], 1, 1, 1)
        elif lat.shape[0] == 1:
            lat = lat.repeat(keep.shape[0], 1, 1, 1)
        else:
            raise ValueError(f"a batch of {keep.shape[0]} masks does not fit a batch of "
                             f"{lat.shape[0]} latents")
    concat = torch.cat([lat * keep, keep], dim=1)
    return KandinskyInpaintConditioning(concat=concat, kind="kandinsky_inpaint", keep=keep)

