"""Denoisers: the UNet's one-step prediction and classifier-free guidance on top of it.

A denoiser is a callable; the sampler hands it the latents it has already passed through the
scheduler's `scale_model_input`. The arithmetic and batching follow diffusers' pipelines exactly
(unconditional and conditional rows in one UNet call, negative first) so the numbers agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from nodes.lib import step_memo
from nodes.lib.bundles import Conditioning, ModelBundle
from nodes.lib.cpu_conv import conv_backend


@dataclass(eq=False)
class ImageConditioning:
    """What some models need besides latents and text (the IMAGE_COND edge).

    `concat`: channels appended to the scaled latents ([1 or B, k, h, w]): an inpainting model's
    mask + masked-image latents, or the x4 upscaler's noised low-resolution image.
    `class_labels`: the UNet's class labels (the x4 upscaler's noise level).
    `stream`: the random stream after the draws that made `concat` (nodes.lib.rng.RandomStream),
    which the Sampler continues for its stochastic schedulers, as diffusers' pipelines do."""

    concat: Any = None
    class_labels: Any = None
    kind: str = "inpaint"  # "inpaint" | "upscale_x4"
    stream: Any = None

    def __loom_cache_size__(self) -> int:
        size = 0
        for t in (self.concat, self.class_labels):
            if t is not None:
                size += t.numel() * t.element_size()
        return size


class Step(NamedTuple):
    """Where the sampler is: step `index` (from 0) of `count` (its number of timesteps).
    ControlNets' start/end are fractions of the steps, as in diffusers' pipelines."""

    index: int
    count: int


def _repeat_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat a batch-1 (or batch-n/k) tensor up to n rows, keeping row order per block."""
    if t.shape[0] == n:
        return t
    if n % t.shape[0]:
        raise ValueError(f"cannot repeat a batch of {t.shape[0]} to {n}")
    return t.repeat(n // t.shape[0], *([1] * (t.ndim - 1)))


class UNetDenoiser:
    """The model's raw prediction for latents x at timestep t under a list of conditionings.

    x has len(conds) * B rows: rows [i*B, (i+1)*B) use conds[i]. `controls`: the ControlNets
    applied to it (Apply ControlNet; nodes.lib.controlnet), whose residuals it adds."""

    guided = False

    def __init__(self, model: ModelBundle, controls: Sequence[Any] = ()):
        self.model = model
        self.controls = tuple(controls)

    def with_control(self, control: Any) -> UNetDenoiser:
        """A new denoiser with one more ControlNet (this one is left as it is)."""
        return UNetDenoiser(self.model, (*self.controls, control))

    def check_latents(self, shape: Sequence[int]) -> str | None:
        """Why latents of this shape cannot be denoised (a control image of another size), or
        None; the Sampler asks before its first step."""
        return next((p for c in self.controls if (p := c.size_problem(shape))), None)

    def __loom_cache_size__(self) -> int:
        return 0

    @property
    def unet(self) -> Any:
        return self.model.unet

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def __call__(self, x: torch.Tensor, t: Any, conds: Sequence[Conditioning],
                 negative: Sequence[bool] | None = None,
                 image_cond: ImageConditioning | None = None,
                 positive: Conditioning | None = None, step: Step | None = None) -> torch.Tensor:
        """`positive`: the prompt a negative conditioning without SDXL sizes borrows them from
        (by default the first non-negative one in `conds`). `step`: the sampler's step, for
        ControlNets acting on part of the schedule."""
        unet = self.unet
        dtype = self.model.dtype or next(unet.parameters()).dtype
        device = x.device
        n_rows = x.shape[0]
        k = len(conds)
        if k == 0 or n_rows % k:
            raise ValueError(f"{n_rows} latent rows cannot be split over {k} conditionings")
        b = n_rows // k
        negative = list(negative) if negative is not None else [False] * k
        if is_pixel_unet(unet):
            return self._pixel_unet(unet, x, t, conds, b, dtype, image_cond)
        if any(c.embeds is None for c in conds):
            raise ValueError("this model is conditioned on text; connect a prompt (Text "
                             "Encode), not a class label")

        embeds = step_memo.context(
            [c.embeds for c in conds], (b, device, dtype),
            lambda: torch.cat([_repeat_rows(c.embeds, b) for c in conds]).to(device, dtype))
        model_in = x.to(dtype)
        if image_cond is not None and image_cond.concat is not None:
            extra = _repeat_rows(image_cond.concat.to(device, dtype), n_rows)
            model_in = torch.cat([model_in, extra], dim=1)
        kwargs: dict[str, Any] = {}
        if image_cond is not None and image_cond.class_labels is not None:
            kwargs["class_labels"] = _repeat_rows(image_cond.class_labels.to(device), n_rows)
        kwargs.update(_per_conditioning(unet, conds, negative, b, device, dtype,
                                        "class_labels" in kwargs))
        if getattr(unet.config, "addition_embed_type", None) == "text_time":
            kwargs["added_cond_kwargs"] = self._sdxl_added(conds, negative, b, x, dtype,
                                                           positive)
        if model_in.shape[1] != self.in_channels:
            raise ValueError(
                f"the UNet takes {self.in_channels} input channels but got {model_in.shape[1]} "
                f"(latents {x.shape[1]}"
                + (f" + image conditioning {model_in.shape[1] - x.shape[1]}" if image_cond else "")
                + "); an inpainting model needs Inpaint Conditioning connected to the sampler")
        with conv_backend(model_in), step_memo.projecting(embeds):
            if self.controls:
                from nodes.lib.controlnet import residual_kwargs

                kwargs.update(residual_kwargs(self.controls, x, t, embeds,
                                              kwargs.get("added_cond_kwargs"), negative, b,
                                              step, dtype))
            out = unet(model_in, t, encoder_hidden_states=embeds, return_dict=False,
                       **kwargs)[0]
        return out.to(x.dtype)

    def _pixel_unet(self, unet: Any, x: torch.Tensor, t: Any, conds: Sequence[Conditioning],
                    b: int, dtype: torch.dtype,
                    image_cond: ImageConditioning | None) -> torch.Tensor:
        """A UNet2DModel (DDPM-style, pixel or latent space): no text, only the timestep and,
        when class-conditional, one class label per row (conds[i]'s for rows of block i)."""
        if self.controls:
            raise ValueError("ControlNets need a text-conditioned UNet; this model is a "
                             "UNet2DModel")
        if image_cond is not None and image_cond.class_labels is not None:
            raise ValueError("this UNet2DModel takes no class labels from the image "
                             "conditioning")
        labels = [c.class_labels for c in conds]
        kwargs: dict[str, Any] = {}
        if getattr(unet, "class_embedding", None) is not None:
            if any(label is None for label in labels):
                raise ValueError("this model is class-conditional: connect a Class Label "
                                 "(and its null class as the negative for guidance)")
            kwargs["class_labels"] = torch.cat(
                [_repeat_rows(label.reshape(-1), b) for label in labels]).to(x.device)
        elif any(label is not None for label in labels):
            raise ValueError("this model is not class-conditional; use Unconditional instead "
                             "of a Class Label")
        model_in = x.to(dtype)
        if image_cond is not None and image_cond.concat is not None:
            # a pixel upsampler (Karlo's super-resolution UNets): the upsampled low-res image
            # as extra input channels
            extra = _repeat_rows(image_cond.concat.to(x.device, dtype), x.shape[0])
            model_in = torch.cat([model_in, extra], dim=1)
        if model_in.shape[1] != self.in_channels:
            raise ValueError(f"the UNet takes {self.in_channels} input channels but got "
                             f"{model_in.shape[1]}; make the noise with Pixel Noise connected "
                             "to the model (an upsampler also needs its image conditioning)")
        with conv_backend(model_in):
            out = unet(model_in, t, return_dict=False, **kwargs)[0]
        return out.to(x.dtype)

    def _sdxl_added(self, conds: Sequence[Conditioning], negative: Sequence[bool], b: int,
                    x: torch.Tensor, dtype: torch.dtype,
                    positive: Conditioning | None = None) -> dict[str, torch.Tensor]:
        pooled = []
        ids = []
        if positive is None:
            positive = next((c for c, n in zip(conds, negative) if not n), None)
        for cond, neg in zip(conds, negative):
            if cond.pooled is None:
                raise ValueError("this SDXL model needs pooled text embeddings; encode the prompt "
                                 "with the SDXL checkpoint's CLIP")
            pooled.append(_repeat_rows(cond.pooled, b))
            tid = torch.tensor([self.time_ids(cond, neg, x.shape[-2], x.shape[-1],
                                              cond.pooled.shape[-1], positive)], dtype=dtype)
            ids.append(tid.repeat(b, 1))
        return {"text_embeds": torch.cat(pooled).to(x.device, dtype),
                "time_ids": torch.cat(ids).to(x.device)}

    def time_ids(self, cond: Conditioning, negative: bool, h: int, w: int, pooled_dim: int,
                 positive: Conditioning | None = None) -> list[float]:
        """SDXL micro-conditioning, with diffusers' defaults for what the conditioning leaves out:
        original and target size = the image size, crop (0, 0), aesthetic score 6.0 (2.5 for the
        negative prompt) for the refiner. A negative conditioning without sizes takes the
        positive one's, as the pipelines do (base: its crop too; refiner: crop (0, 0))."""
        unet = self.unet
        extra = dict(cond.extra or {})
        n_ids = (unet.add_embedding.linear_1.in_features - pooled_dim) \
            // unet.config.addition_time_embed_dim
        refiner = n_ids == 5  # aesthetic score instead of the target size
        if negative and positive is not None and positive is not cond:
            inherit = ("original_size", "target_size") if refiner else \
                ("original_size", "target_size", "crops_coords_top_left")
            if not any(k in extra for k in inherit):
                for k in inherit:
                    if k in (positive.extra or {}):
                        extra[k] = positive.extra[k]
        size = (h * 8, w * 8)
        original = tuple(extra.get("original_size") or size)
        crop = tuple(extra.get("crops_coords_top_left") or (0, 0))
        target = tuple(extra.get("target_size") or size)
        if refiner:
            score = extra.get("aesthetic_score", 2.5 if negative else 6.0)
            return [*original, *crop, float(score)]
        return [*original, *crop, *target]


def _rows_of(values: Sequence[Any], b: int) -> torch.Tensor:
    """One row block per conditioning: its tensor repeated to b rows, or zeros like the
    others' where it has none (the unconditional side of unCLIP guidance)."""
    ref = next(v for v in values if v is not None)
    return torch.cat([_repeat_rows(v if v is not None else torch.zeros_like(ref), b)
                      for v in values])


def _per_conditioning(unet: Any, conds: Sequence[Conditioning], negative: Sequence[bool],
                      b: int, device: Any, dtype: torch.dtype,
                      image_labels: bool = False) -> dict[str, Any]:
    """UNet inputs that differ between the conditionings of one call (nodes.lib.unclip):
    Stable unCLIP's class labels (the noised image embedding, zeros for the negative) and
    Kandinsky 2.2's image embeddings (`added_cond_kwargs["image_embeds"]`). `image_labels`:
    the image conditioning already gives class labels (the x4 upscaler's noise level)."""
    kwargs: dict[str, Any] = {}
    labels = [c.class_labels for c in conds]
    if any(v is not None for v in labels):
        if image_labels:
            raise ValueError("class labels come from both the image conditioning and the "
                             "prompt's unCLIP conditioning; connect one of them")
        if getattr(unet, "class_embedding", None) is None:
            raise ValueError("this UNet takes no class labels; unCLIP conditioning needs a "
                             "Stable unCLIP model")
        kwargs["class_labels"] = _rows_of(labels, b).to(device, dtype)
    elif not image_labels and getattr(unet.config, "class_embed_type", None) == "projection":
        if all(negative):  # the negative prompt alone (a prompt of another length): zeros
            width = int(unet.config.projection_class_embeddings_input_dim)
            kwargs["class_labels"] = torch.zeros(len(conds) * b, width, device=device,
                                                 dtype=dtype)
        else:
            raise ValueError("this Stable unCLIP UNet needs the image embedding: connect the "
                             "prompt through unCLIP Conditioning")
    if getattr(unet.config, "addition_embed_type", None) in ("image", "image_hint"):
        embeds = [(c.extra or {}).get("image_embeds") for c in conds]
        if any(v is None for v in embeds):
            raise ValueError("this Kandinsky UNet is conditioned on CLIP image embeddings: "
                             "connect Image Embedding Conditioning (from a Prior or CLIP Image "
                             "Encode) as the positive and the negative, not a text prompt")
        kwargs["added_cond_kwargs"] = {"image_embeds": _rows_of(embeds, b).to(device, dtype)}
    masks = [(c.extra or {}).get("attention_mask") for c in conds]
    if any(m is not None for m in masks):  # Karlo's decoder: the text's padding is masked
        if any(m is None for m in masks):
            raise ValueError("one conditioning carries a text attention mask and another "
                             "does not; make both with Karlo Decoder Conditioning")
        kwargs["attention_mask"] = torch.cat([_repeat_rows(m, b) for m in masks]).to(device)
    return kwargs


def is_pixel_unet(unet: Any) -> bool:
    """Whether `unet` is a diffusers UNet2DModel (no cross-attention: DDPM-style pixel models,
    unconditional or class-conditional) rather than a text-conditioned UNet2DConditionModel."""
    from diffusers import UNet2DModel

    return isinstance(unet, UNet2DModel)


def _batchable(a: Conditioning, b: Conditioning) -> bool:
    """Whether two conditionings can share one UNet call (text of the same length, or none)."""
    if a.embeds is None or b.embeds is None:
        return a.embeds is None and b.embeds is None
    return a.embeds.shape[1:] == b.embeds.shape[1:]


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, "Common diffusion noise schedules ... are flawed" 3.4):
    match the guided prediction's per-sample std to the conditional one's, mixed by `rescale`."""
    dims = list(range(1, cond.ndim))
    std_cond = cond.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    rescaled = guided * (std_cond / std_guided)
    return rescale * rescaled + (1 - rescale) * guided


class GuidedDenoiser:
    """Classifier-free guidance: uncond + scale * (cond - uncond), optionally rescaled, and
    optionally only within an interval of the denoising.

    With scale <= 1 only the conditional prediction is computed (diffusers'
    `do_classifier_free_guidance = guidance_scale > 1`); the same outside [start, end], where
    0 is pure noise (timestep num_train_timesteps) and 1 the clean image (timestep 0).
    Guidance in a limited interval (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited
    Interval Improves Sample and Distribution Quality in Diffusion Models"): the noisy steps
    decide what and where, so guidance there makes the image follow the prompt, while
    guidance on the last, nearly clean steps mostly over-saturates colours; the steps without
    it cost one UNet row instead of two."""

    guided = True

    def __init__(self, denoiser: UNetDenoiser, positive: Conditioning,
                 negative: Conditioning | None, scale: float, rescale: float = 0.0,
                 start: float = 0.0, end: float = 1.0):
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"guidance interval [{start}, {end}] must satisfy "
                             "0 <= start <= end <= 1")
        self.denoiser = denoiser
        self.positive = positive
        self.negative = negative
        self.scale = float(scale)
        self.rescale = float(rescale)
        self.start = float(start)
        self.end = float(end)

    def __loom_cache_size__(self) -> int:
        return 0

    @property
    def model(self) -> ModelBundle:
        return self.denoiser.model

    @property
    def in_channels(self) -> int:
        return self.denoiser.in_channels

    @property
    def do_cfg(self) -> bool:
        return self.scale > 1.0

    def guides_at(self, t: Any) -> bool:
        """Whether timestep t lies in the guidance interval."""
        return in_interval(self.model, t, self.start, self.end)

    def check_latents(self, shape: Sequence[int]) -> str | None:
        check = getattr(self.denoiser, "check_latents", None)
        return check(shape) if check is not None else None

    def __call__(self, x: torch.Tensor, t: Any,
                 image_cond: ImageConditioning | None = None,
                 step: Step | None = None) -> torch.Tensor:
        if not self.do_cfg or not self.guides_at(t):
            return self.denoiser(x, t, [self.positive], [False], image_cond, step=step)
        if _batchable(self.negative, self.positive):
            x2 = torch.cat([x] * 2)
            out = self.denoiser(x2, t, [self.negative, self.positive], [True, False], image_cond,
                                step=step)
            uncond, cond = out.chunk(2)
        else:  # prompts of different lengths (more 77-token chunks): two UNet calls
            uncond = self.denoiser(x, t, [self.negative], [True], image_cond, self.positive,
                                   step=step)
            cond = self.denoiser(x, t, [self.positive], [False], image_cond, step=step)
        uncond, _ = split_variance(uncond, x.shape[1])
        cond, variance = split_variance(cond, x.shape[1])
        guided = uncond + self.scale * (cond - uncond)
        if self.rescale > 0.0:
            guided = rescale_guidance(guided, cond, self.rescale)
        if variance is not None:
            guided = torch.cat([guided, variance], dim=1)
        return guided


def in_interval(model: ModelBundle, t: Any, start: float, end: float) -> bool:
    """Whether timestep t lies in [start, end] of the denoising (0 = pure noise, 1 = the clean
    image), measured on the model's training timesteps: CFG Combine's and Loss Guidance's
    interval."""
    if start <= 0.0 and end >= 1.0:
        return True
    total = float(model.scheduler_config.get("num_train_timesteps", 1000))
    progress = 1.0 - float(t) / total
    return start <= progress <= end


def split_variance(pred: torch.Tensor, channels: int) -> tuple[torch.Tensor, Any]:
    """A prediction with a learned variance (GLIDE, DeepFloyd IF: twice the sample's channels)
    as (noise, variance); (pred, None) otherwise. Guidance acts on the noise only and keeps the
    conditional variance, as IFPipeline does; the scheduler (DDPM "learned_range") uses it."""
    if pred.shape[1] == 2 * channels:
        return pred[:, :channels], pred[:, channels:]
    return pred, None
