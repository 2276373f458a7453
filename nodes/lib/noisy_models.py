"""Noise-aware models for guidance: networks that read a *noisy* sample x_t (and how noisy it
is) and score it, so their gradient can steer sampling from the first step on. A classifier
trained on clean images is lost on a half-denoised blur; Dhariwal & Nichol's classifier
guidance and GLIDE's CLIP guidance both train theirs on noised samples.

The noise level, not the timestep. The encoder is told log σ = ½·log((1−ᾱ)/ᾱ) of the sample,
not a timestep index: an index means a noise level only through one schedule, while log σ is
the same quantity for every model and scheduler (Karras-spaced fractional timesteps included;
nodes.lib.guidance computes it from the diffusion model's own schedule). So a classifier
trained beside one model's schedule guides any model whose samples live in the same space.

The space. A noise-aware model reads samples of one kind: the pixels of a pixel model
(channels 3, values in [-1, 1]) or the latents of one VAE (scaled by its scaling factor). Its
folder records which (`space`), and the guidance nodes refuse a model whose samples differ.

Folder format (written by `save_folder`, read by `load_folder`):
  config.json        {"kind": "noisy_classifier" | ..., "encoder": {...}, "space": {...}, ...}
  model.safetensors  the weights
A kind registers its builder with `register_kind`, so a new noise-aware model (GLIDE's noised
CLIP: nodes.lib.noisy_clip) reuses the encoder, the folder format and the loader.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nodes.lib import vram

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

LOG_SIGMA_RANGE = (-6.0, 9.0)
"""log σ the encoder's noise-level embedding spans: ᾱ from 0.999994 (σ ≈ 0.0025) to a
zero-terminal-SNR schedule's clamped last step (ᾱ = 2^-24, log σ ≈ 8.3)."""
_EMBED_SPAN = 1000.0
"""The sinusoidal embedding is built for timestep-like values 0..1000; log σ is mapped there."""


def noise_level_input(log_sigma: torch.Tensor) -> torch.Tensor:
    """log σ mapped linearly from LOG_SIGMA_RANGE onto 0..1000, the span the sinusoidal
    embedding resolves (values outside the range are clamped)."""
    lo, hi = LOG_SIGMA_RANGE
    return (log_sigma.float().clamp(lo, hi) - lo) * (_EMBED_SPAN / (hi - lo))


def log_sigma_of(alpha_cumprod: torch.Tensor) -> torch.Tensor:
    """log σ = ½·log((1−ᾱ)/ᾱ) of variance-preserving noise levels ᾱ (clamped to 2^-24 as the
    σ-based schedulers do for a zero-terminal-SNR schedule's last step)."""
    a = alpha_cumprod.double().clamp(min=2.0 ** -24, max=1 - 1e-12)
    return (0.5 * torch.log((1 - a) / a)).float()


# ---- the encoder ------------------------------------------------------------------------------


@dataclass
class EncoderConfig:
    """A small ResNet over [B, in_channels, size, size] with the noise level added in every
    block (diffusers' ResnetBlock2D: the UNet's own block), halving the resolution between
    stages, then global average pooling to `out_dim` features."""

    in_channels: int = 3
    block_out_channels: Sequence[int] = (32, 64, 128)
    layers_per_block: int = 1
    out_dim: int = 128
    norm_num_groups: int = 8

    def to_dict(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels,
                "block_out_channels": list(self.block_out_channels),
                "layers_per_block": self.layers_per_block, "out_dim": self.out_dim,
                "norm_num_groups": self.norm_num_groups}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        known = {k: d[k] for k in ("in_channels", "block_out_channels", "layers_per_block",
                                   "out_dim", "norm_num_groups") if k in d}
        cfg = cls(**known)
        cfg.block_out_channels = tuple(int(c) for c in cfg.block_out_channels)
        return cfg


class NoiseLevelEncoder(nn.Module):
    """Features of a noisy sample x_t at noise level log σ (module docstring)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        from diffusers.models.downsampling import Downsample2D
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.resnet import ResnetBlock2D

        self.config = config
        chans = list(config.block_out_channels)
        temb = chans[0] * 4
        self.time_proj = Timesteps(chans[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(chans[0], temb)
        self.conv_in = nn.Conv2d(config.in_channels, chans[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        prev = chans[0]
        groups = config.norm_num_groups
        for i, ch in enumerate(chans):
            stage = nn.ModuleList()
            for j in range(config.layers_per_block):
                stage.append(ResnetBlock2D(in_channels=prev if j == 0 else ch, out_channels=ch,
                                           temb_channels=temb, groups=groups))
            self.blocks.append(stage)
            last = i == len(chans) - 1
            # name="op": diffusers' default name registers the conv twice (conv and
            # Conv2d_0, for old checkpoints), which safetensors refuses to save
            self.downs.append(nn.Identity() if last else
                              Downsample2D(ch, use_conv=True, name="op"))
            prev = ch
        self.norm_out = nn.GroupNorm(groups, prev)
        self.proj = nn.Linear(prev, config.out_dim)

    def forward(self, x: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
        if log_sigma.ndim == 0:
            log_sigma = log_sigma.expand(x.shape[0])
        emb = self.time_proj(noise_level_input(log_sigma).to(x.device)).to(x.dtype)
        emb = self.time_embedding(emb)
        h = self.conv_in(x)
        for stage, down in zip(self.blocks, self.downs, strict=True):
            for block in stage:
                h = block(h, emb)
            h = down(h)
        h = nn.functional.silu(self.norm_out(h)).mean(dim=(2, 3))
        return self.proj(h)


# ---- the classifier ---------------------------------------------------------------------------


class NoisyClassifier(nn.Module):
    """log p(class | x_t, σ): the encoder's features through a linear head to class logits
    (Dhariwal & Nichol's noise-aware classifier, at toy scale)."""

    kind = "noisy_classifier"

    def __init__(self, encoder: EncoderConfig, class_names: Sequence[str]):
        super().__init__()
        if not class_names:
            raise ValueError("a classifier needs at least one class")
        self.class_names = [str(c) for c in class_names]
        self.encoder = NoiseLevelEncoder(encoder)
        self.head = nn.Linear(encoder.out_dim, len(self.class_names))

    def forward(self, x: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.silu(self.encoder(x, log_sigma)))

    def extra_config(self) -> dict[str, Any]:
        return {"class_names": self.class_names}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NoisyClassifier:
        return cls(EncoderConfig.from_dict(config["encoder"]), config["class_names"])


# ---- folders ----------------------------------------------------------------------------------


_KINDS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    NoisyClassifier.kind: NoisyClassifier.from_config}


def register_kind(kind: str, build: Callable[[dict[str, Any]], nn.Module]) -> None:
    """Let `load_folder` build models of `kind` from their config.json."""
    _KINDS[kind] = build


_KIND_MODULES = ("nodes.lib.noisy_clip",)
"""Modules that register further kinds when imported: imported on first need (they import
this module, so not at its top)."""


def _kinds() -> dict[str, Callable[[dict[str, Any]], nn.Module]]:
    import importlib

    for name in _KIND_MODULES:
        importlib.import_module(name)
    return _KINDS


@dataclass
class Space:
    """The samples a noise-aware model reads: "pixels" (an image in [-1, 1]) or "latents"
    (of a VAE, already multiplied by its scaling factor), `channels` of them at `size`
    (the training resolution: the encoder pools, so other sizes run, less well)."""

    kind: str
    channels: int
    size: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "channels": self.channels, "size": self.size,
                "note": self.note}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Space:
        return cls(str(d.get("kind", "pixels")), int(d["channels"]), int(d.get("size", 0)),
                   str(d.get("note", "")))


@dataclass
class NoisyModelFolder:
    path: Path
    config: dict[str, Any]
    space: Space
    extra: dict[str, Any] = field(default_factory=dict)


class NoisyModelError(ValueError):
    """A folder that is not a noise-aware model Loom can load, with what is wrong."""


def read_folder(path: Path | str) -> NoisyModelFolder:
    """The config of a noise-aware model folder, checked (no weights read)."""
    path = Path(path)
    if not path.is_dir():
        raise NoisyModelError(f"{path} is not a folder (a noise-aware model is a folder with "
                              f"{CONFIG_NAME} and {WEIGHTS_NAME})")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise NoisyModelError(f"{path} has no {name}: not a noise-aware model folder")
    try:
        config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NoisyModelError(f"{path / CONFIG_NAME} cannot be read: {exc}") from None
    if not isinstance(config, dict):
        raise NoisyModelError(f"{path / CONFIG_NAME} is not a JSON object")
    kind = config.get("kind")
    if kind not in _kinds():
        raise NoisyModelError(f"{path / CONFIG_NAME}: unknown kind {kind!r} (Loom knows "
                              f"{', '.join(sorted(_KINDS))})")
    try:
        space = Space.from_dict(config["space"])
        EncoderConfig.from_dict(config["encoder"])
    except (KeyError, TypeError, ValueError) as exc:
        raise NoisyModelError(f"{path / CONFIG_NAME}: missing or bad 'space'/'encoder' "
                              f"({exc})") from None
    return NoisyModelFolder(path, config, space)


def save_folder(model: nn.Module, path: Path | str, space: Space,
                extra: dict[str, Any] | None = None, dtype: torch.dtype = torch.float16) -> None:
    """Write `model` as a folder (config.json + model.safetensors, fp16 by default), each file
    to a temporary name first, then replaced: an interrupted save leaves the old folder."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {"kind": model.kind, "encoder": model.encoder.config.to_dict(),
              "space": space.to_dict(), **model.extra_config(), **(extra or {})}
    state = {k: v.detach().to(dtype).contiguous() if v.is_floating_point() else v.contiguous()
             for k, v in model.state_dict().items()}
    for name, write in ((WEIGHTS_NAME, lambda p: save_file(state, p)),
                        (CONFIG_NAME, lambda p: Path(p).write_text(
                            json.dumps(config, indent=2) + "\n", encoding="utf-8"))):
        fd, tmp = tempfile.mkstemp(dir=path, prefix=f".{name}.")
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep a shipped folder private
            os.replace(tmp, path / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def build_model(config: dict[str, Any]) -> nn.Module:
    return _kinds()[config["kind"]](config)


def load_weights(folder: NoisyModelFolder, device: Any = "cpu") -> nn.Module:
    """The model of a checked folder, fp32, in eval mode on `device`."""
    from safetensors.torch import load_file

    model = build_model(folder.config)
    state = load_file(str(folder.path / WEIGHTS_NAME))
    missing, unexpected = model.load_state_dict(
        {k: v.float() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise NoisyModelError(f"{folder.path / WEIGHTS_NAME} does not match its config: "
                              f"missing {sorted(missing)[:3]}, unexpected "
                              f"{sorted(unexpected)[:3]}")
    return vram.stage(model.requires_grad_(False), device)


@dataclass(eq=False)
class NoisyModelBundle:
    """What a NOISY_MODEL edge carries: the model's handle in the model manager (weights
    borrowed while a guided step runs), its folder's config and space."""

    handle: Any
    config: dict[str, Any]
    space: Space
    path: str

    @property
    def kind(self) -> str:
        return str(self.config.get("kind"))

    @property
    def class_names(self) -> list[str]:
        return list(self.config.get("class_names") or [])

    def module(self) -> nn.Module:
        return self.handle.get()

    def __loom_cache_size__(self) -> int:
        return 0  # the manager counts the weights


def load_noisy_model(path: Path | str, device: str = "cpu", models: Any = None
                     ) -> NoisyModelBundle:
    """A noise-aware model folder as a bundle, its weights in the model manager (keyed by the
    folder's identity, so an edited folder loads again)."""
    from engine.paths import file_identity
    from nodes.lib.checkpoints import resolve_device
    from nodes.lib.model_manager import ModelHandle, manager

    folder = read_folder(path)
    models = manager() if models is None else models
    identity = file_identity(folder.path)
    device = resolve_device(str(device))  # a run's "auto": CUDA, MPS or the CPU
    handle = ModelHandle(models, (identity, f"noisy@{folder.config['kind']}", "float32",
                                  str(device)), lambda: load_weights(folder, device))
    handle.preload()  # load now: errors and time belong to the loader node
    return NoisyModelBundle(handle, folder.config, folder.space, str(folder.path))


def space_problem(space: Space, sample_channels: int, pixel: bool) -> str | None:
    """Why a noise-aware model of `space` cannot read a diffusion model's samples, or None."""
    want = "pixels" if pixel else "latents"
    if space.kind != want:
        return (f"reads {space.kind} but the model denoises {want}: use a noise-aware model "
                f"trained on this model's {want}")
    if space.channels != sample_channels:
        return (f"reads {space.channels}-channel samples but the model's have "
                f"{sample_channels} channels")
    return None
