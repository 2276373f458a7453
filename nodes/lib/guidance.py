"""Loss guidance: steer sampling with the gradient of a differentiable loss on the predicted
clean image ("blue guidance": make the picture bluer, brighter, more like a reference).

At a guided step the wrapped denoiser's prediction gives the predicted clean sample x̂0 (from
the model output, the sample and ᾱ_t alone: epsilon, v or sample prediction); the loss is taken
on the image it shows (through the VAE decoder for a latent model, directly for a pixel model),
and x̂0 takes one gradient step, x̂0 ← x̂0 − scale·∇L. The model output is then re-expressed so
that it predicts the moved x̂0 from the same sample (same prediction type), and the scheduler
steps with it as with any other prediction.

Why the output and not the sample: the Sampler owns the sample and its scheduler keeps state
(Euler's step index, DPM++'s and UniPC's history of past predictions), so a guidance that
changed the sample behind the scheduler's back would desynchronise the multistep solvers, and
one that ran the scheduler an extra step to look ahead would corrupt their history. Changing
the prediction is what classifier guidance does (Dhariwal & Nichol 2021, eq. 14), every
scheduler reads it the same way, and nothing is stepped twice.

Why the clean image and a fixed prediction: the gradient is taken with the model output held
fixed (no backpropagation through the UNet: the cost of a guided step is one VAE decode forward
and backward, not a second UNet pass), so the gradient with respect to the current sample x_t
is ∇_{x̂0}L / √ᾱ_t. Stepping x̂0 by −scale·∇_{x̂0}L, i.e. by −scale·√ᾱ_t·∇_{x_t}L, moves the
predicted image by the same amount at every noise level, where a step on x_t itself would be
amplified by 1/ᾱ_t at the noisiest steps, where x̂0 is still a blur. The gradient is of each
image's mean loss times the number of values in its sample, so `scale` means the same at any
resolution and batch size.

ᾱ_t at the (possibly fractional: Karras sigmas) timestep t comes from the model's own
scheduler config by interpolating log σ between the training timesteps, the inverse of how
diffusers' schedulers turn a σ into a timestep. Every scheduler in nodes.lib.schedules hands
the denoiser the variance-preserving sample x_t = √ᾱ·x0 + √(1−ᾱ)·ε (σ-parameterised ones
divide by √(σ²+1) first), so one formula serves all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nodes.lib.vram import placement

# ---- losses -----------------------------------------------------------------------------------


class Loss:
    """A differentiable loss on images: `per_image(image)` takes float [B, 3, H, W] in 0..1
    (not clamped: the gradient must flow) and returns one value per image [B]."""

    title = "loss"

    def per_image(self, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __loom_cache_size__(self) -> int:
        return 256


def parse_colour(text: str) -> tuple[float, float, float]:
    """"#RRGGBB" (the # optional) as three floats in 0..1; ValueError says the format."""
    value = str(text).strip().removeprefix("#")
    if len(value) != 6 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise ValueError(f"{text!r} is not a colour: expected #RRGGBB, e.g. #0000FF for blue")
    return tuple(int(value[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


COLOUR_MODES = ("mean", "pixels")


@dataclass(eq=False)
class ColourLoss(Loss):
    """How far an image is from the colour `rgb` (0..1 each), squared and averaged over the
    channels. mode "mean": the distance of the image's mean colour, whose gradient is the same
    for every pixel, so guidance casts the whole picture towards the colour and keeps its
    contrast (the shapes stay readable); "pixels": the mean distance of every pixel, which
    pulls each pixel to the colour and flattens the picture towards a plain fill."""

    rgb: tuple[float, float, float]
    mode: str = "mean"
    title = "colour"

    def per_image(self, image: torch.Tensor) -> torch.Tensor:
        target = torch.tensor(self.rgb, device=image.device, dtype=image.dtype)
        if self.mode == "mean":
            return ((image.mean(dim=(2, 3)) - target) ** 2).mean(dim=1)
        return ((image - target.view(1, 3, 1, 1)) ** 2).mean(dim=(1, 2, 3))


LUMA = (0.2126, 0.7152, 0.0722)  # Rec. 709 luma weights


@dataclass(eq=False)
class BrightnessLoss(Loss):
    """Squared difference between the image's mean luma (Rec. 709 weights) and `target`
    (0 black .. 1 white): brightens or darkens without choosing a colour."""

    target: float
    title = "brightness"

    def per_image(self, image: torch.Tensor) -> torch.Tensor:
        w = torch.tensor(LUMA, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        luma = (image * w).sum(dim=1).mean(dim=(1, 2))
        return (luma - self.target) ** 2


@dataclass(eq=False)
class ImageSimilarityLoss(Loss):
    """Mean squared difference to a reference IMAGE (one image for the whole batch, or one per
    image), resized to the generated size (bilinear) when it differs."""

    reference: torch.Tensor  # [1 or B, 3, H, W] in 0..1
    title = "image similarity"

    def per_image(self, image: torch.Tensor) -> torch.Tensor:
        ref = self.reference.to(image.device, image.dtype)
        if ref.shape[-2:] != image.shape[-2:]:
            ref = F.interpolate(ref, size=image.shape[-2:], mode="bilinear",
                                align_corners=False, antialias=True)
        if ref.shape[0] not in (1, image.shape[0]):
            raise ValueError(f"a reference batch of {ref.shape[0]} images cannot guide "
                             f"{image.shape[0]} images; use 1 or {image.shape[0]}")
        return ((image - ref) ** 2).mean(dim=(1, 2, 3))

    def __loom_cache_size__(self) -> int:
        return int(self.reference.numel() * self.reference.element_size()) + 256


# ---- the schedule: ᾱ at a timestep -----------------------------------------------------------

_MIN_ALPHA_CUMPROD = 2.0 ** -24
"""Where a zero-terminal-SNR schedule's last ᾱ is 0, the σ-based schedulers use 2^-24 (so σ
stays finite); the same here."""


def log_sigmas(scheduler_config: dict[str, Any]) -> torch.Tensor:
    """log σ_t = ½·log((1−ᾱ_t)/ᾱ_t) at the training timesteps of the model's schedule (beta
    schedule, trained betas and zero-SNR rescaling as its scheduler config says), float64."""
    from diffusers import DDPMScheduler

    config = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
    sched = DDPMScheduler.from_config(config)
    alphas = sched.alphas_cumprod.double().clamp(min=_MIN_ALPHA_CUMPROD)
    return 0.5 * torch.log((1 - alphas) / alphas)


def alpha_cumprod_at(table: torch.Tensor, t: Any) -> float:
    """ᾱ at timestep t (fractional allowed): log σ interpolated linearly between the two
    training timesteps around t."""
    tf = float(t.item() if isinstance(t, torch.Tensor) else t)
    tf = min(max(tf, 0.0), float(len(table) - 1))
    lo = int(math.floor(tf))
    hi = min(lo + 1, len(table) - 1)
    w = tf - lo
    log_sigma = (1 - w) * float(table[lo]) + w * float(table[hi])
    return 1.0 / (1.0 + math.exp(2 * log_sigma))


def predicted_clean(x: torch.Tensor, out: torch.Tensor, alpha: float,
                    prediction: str) -> torch.Tensor:
    """x̂0 from the variance-preserving sample x_t, the model output and ᾱ_t."""
    a, s = math.sqrt(alpha), math.sqrt(1 - alpha)
    if prediction == "epsilon":
        return (x - s * out) / a
    if prediction == "v_prediction":
        return a * x - s * out
    if prediction == "sample":
        return out
    raise ValueError(f"unknown prediction type {prediction!r}")


def output_for(x: torch.Tensor, x0: torch.Tensor, alpha: float, prediction: str,
               out: torch.Tensor) -> torch.Tensor:
    """The model output of type `prediction` that predicts x0 from x_t (the inverse of
    predicted_clean with x_t fixed). `out` is the original output, for the sample case."""
    a, s = math.sqrt(alpha), math.sqrt(1 - alpha)
    if prediction == "epsilon":
        return (x - a * x0) / s
    if prediction == "v_prediction":
        return (a * x - x0) / s
    if prediction == "sample":
        return x0.to(out.dtype)
    raise ValueError(f"unknown prediction type {prediction!r}")


# ---- the guided denoiser ----------------------------------------------------------------------


def is_pixel_model(model: Any) -> bool:
    """Whether the model denoises pixels (no VAE between its samples and the image)."""
    from nodes.lib.pixel import PIXEL_FAMILY

    extra = model.extra or {}
    # pixel models' loaders record the image channels they denoise (nodes.pixel.pixel_channels)
    return model.family == PIXEL_FAMILY or "sample_channels" in extra


class _PredictionGuidance:
    """What every guidance that changes the prediction shares: it wraps a guided denoiser,
    guides inside [start, end] of the denoising (0 = pure noise, 1 = the clean image, as CFG
    Combine's interval) and moves the predicted clean sample x̂0 by `move`, handing the
    Sampler the prediction of the moved x̂0 (module docstring: no scheduler is stepped
    twice). A learned variance (IF) passes through unchanged."""

    guided = True

    def __init__(self, denoiser: Any, scale: float, start: float = 0.0, end: float = 1.0):
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"guidance interval [{start}, {end}] must satisfy "
                             "0 <= start <= end <= 1")
        self.denoiser = denoiser
        self.scale = float(scale)
        self.start = float(start)
        self.end = float(end)
        # log σ at the training timesteps; computed once here (a run never changes the
        # denoiser: it is an input of the Sampler, which must leave its inputs as they are)
        self.log_sigmas = log_sigmas(denoiser.model.scheduler_config)

    def __loom_cache_size__(self) -> int:
        return 0

    @property
    def model(self) -> Any:
        return self.denoiser.model

    @property
    def in_channels(self) -> int:
        return self.denoiser.in_channels

    def check_latents(self, shape: Sequence[int]) -> str | None:
        check = getattr(self.denoiser, "check_latents", None)
        return check(shape) if check is not None else None

    def guides_at(self, t: Any) -> bool:
        from nodes.lib.denoise import in_interval

        return in_interval(self.model, t, self.start, self.end)

    def __call__(self, x: torch.Tensor, t: Any, image_cond: Any = None,
                 step: Any = None) -> torch.Tensor:
        out = self.denoiser(x, t, image_cond, step=step)
        if self.scale == 0.0 or not self.guides_at(t):
            return out
        alpha = alpha_cumprod_at(self.log_sigmas, t)
        prediction = self.model.prediction_type or "epsilon"
        from nodes.lib.denoise import split_variance

        out, variance = split_variance(out, x.shape[1])  # a learned variance (IF): kept as is
        xf, of = x.float(), out.float()
        x0 = predicted_clean(xf, of, alpha, prediction)
        moved = self.move(xf, x0, alpha)
        guided = output_for(xf, moved, alpha, prediction, of).to(out.dtype)
        return guided if variance is None else torch.cat([guided, variance], dim=1)

    def move(self, x: torch.Tensor, x0: torch.Tensor, alpha: float) -> torch.Tensor:
        """The guided x̂0, from the sample x_t, the model's x̂0 and ᾱ_t (all float32)."""
        raise NotImplementedError


class LossGuidedDenoiser(_PredictionGuidance):
    """A guided denoiser whose prediction is pulled towards images with a lower `loss`
    (module docstring). `vae`: the VaeBundle that turns a latent model's x̂0 into the image
    the loss reads (None for a pixel model)."""

    def __init__(self, denoiser: Any, loss: Loss, scale: float, start: float = 0.0,
                 end: float = 1.0, vae: Any = None):
        super().__init__(denoiser, scale, start, end)
        self.loss = loss
        self.vae = vae

    def move(self, x: torch.Tensor, x0: torch.Tensor, alpha: float) -> torch.Tensor:
        return x0 - self.scale * self.gradient(x0)

    def gradient(self, x0: torch.Tensor) -> torch.Tensor:
        """∇ of the images' summed mean losses with respect to x̂0, times the number of values
        in one sample (so per value it does not shrink with the resolution)."""
        import contextlib

        from nodes.lib.vae import _Upcast

        upcast = _Upcast(self.vae) if self.vae is not None else contextlib.nullcontext()
        with torch.enable_grad(), upcast:
            leaf = x0.detach().requires_grad_(True)
            per_image = self.loss.per_image(self.image_of(leaf).float())
            (grad,) = torch.autograd.grad(per_image.sum(), leaf)
        return grad * x0[0].numel()

    def image_of(self, x0: torch.Tensor) -> torch.Tensor:
        """The image (0..1, unclamped, differentiable) a predicted clean sample shows: the
        pixels themselves, or the VAE's decoding of the latent."""
        if self.vae is None:
            return x0 / 2 + 0.5
        from nodes.lib.vae import from_latent

        vae = self.vae.vae
        param = placement(vae)
        z = from_latent(self.vae, x0.float()).to(param.device, param.dtype)
        decoded = vae.decode(z, return_dict=False)[0]
        return (decoded.float() / 2 + 0.5).to(x0.device)


# ---- guidance by a noise-aware score (classifier, CLIP) --------------------------------------

_NO_SIGNAL_ALPHA = 2.0 ** -20
"""ᾱ at or below which a sample is taken to carry no signal: the last training timestep of a
zero-terminal-SNR schedule (clamped to 2^-24) and of the cosine schedule (2.4e-9); the linear
and scaled-linear schedules end at 4e-5 and 4.7e-3, above it."""


class ScoreGuidedDenoiser(_PredictionGuidance):
    """Classifier guidance (Dhariwal & Nichol 2021) and GLIDE's CLIP guidance: the gradient of
    a score of the *noisy* sample, log p(y | x_t) or the CLIP similarity f(x_t)·g(caption),
    added to the prediction. `score(x_t, log_sigma)` takes the float32 sample and its noise
    level log σ (one per row) and returns one value per row.

    For an ε-prediction this is ε̂ = ε − scale·√(1−ᾱ)·∇_{x_t} score (their eq. 14, the form
    that works with any sampler); the same shift expressed on x̂0, x̂0 + scale·(1−ᾱ)/√ᾱ·∇,
    serves every prediction type through the shared re-expression. The score model reads x_t
    itself, so unlike Loss Guidance no VAE is involved: a latent model needs a score model
    trained on its latents (nodes.lib.noisy_models: the `space`)."""

    def __init__(self, denoiser: Any, score: Any, scale: float, start: float = 0.0,
                 end: float = 1.0):
        super().__init__(denoiser, scale, start, end)
        self.score = score

    def move(self, x: torch.Tensor, x0: torch.Tensor, alpha: float) -> torch.Tensor:
        if alpha <= _NO_SIGNAL_ALPHA:
            # pure noise (a zero-SNR or cosine schedule's last step): no score can read it,
            # and the shift's (1−ᾱ)/√ᾱ would multiply any stray gradient by 4096 or more
            return x0
        grad = self.score_gradient(x, alpha)
        return x0 + self.scale * (1 - alpha) / math.sqrt(alpha) * grad

    def score_gradient(self, x: torch.Tensor, alpha: float) -> torch.Tensor:
        """∇_{x_t} of the rows' scores (each row's score depends only on its own sample)."""
        log_sigma = torch.full((x.shape[0],), 0.5 * math.log((1 - alpha) / alpha),
                               dtype=torch.float32)
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.score(leaf, log_sigma).sum(), leaf)
        return grad


@dataclass(eq=False)
class ClassifierScore:
    """log p(label | x_t, σ) from a noise-aware classifier (NoisyModelBundle)."""

    classifier: Any
    label: int

    def __call__(self, x: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
        net = self.classifier.module()
        param = placement(net)
        logits = net(x.to(param.device, param.dtype), log_sigma.to(param.device))
        return torch.log_softmax(logits.float(), dim=-1)[:, self.label].to(x.device)
