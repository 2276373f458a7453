"""DeepFloyd IF (a GLIDE-style pixel cascade): loading its diffusers folders, encoding prompts
with its T5 encoder, and stage II's low-resolution conditioning, following diffusers' IFPipeline
and IFSuperResolutionPipeline step for step so the numbers agree.

Stage I is a text-conditional pixel UNet (3 channels in, 6 out: noise and a learned variance,
DDPMScheduler variance_type "learned_range"); stage II sees the noised, upsampled stage I image
as 3 extra input channels and its noise level as class labels. Both denoise on the Sampler with
UNet Step and CFG Combine, which guide the noise half and keep the conditional variance.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from engine.paths import file_identity
from nodes.lib import rng, vram
from nodes.lib.bundles import Conditioning, ModelBundle
from nodes.lib.denoise import ImageConditioning
from nodes.lib.model_files import CheckpointError
from nodes.lib.model_files import read_json_object as _read_json
from nodes.lib.model_manager import ModelHandle, ModelManager, manager, resolve
from nodes.lib.vram import module_device

T5_MAX_LENGTH = 77
"""IFPipeline.encode_prompt pads and truncates every prompt to 77 T5 tokens."""

STAGE_I = "deepfloyd_if"
STAGE_II = "deepfloyd_if_sr"
STAGE_TITLES = {STAGE_I: "DeepFloyd IF stage I", STAGE_II: "DeepFloyd IF stage II"}


class MissingPackageError(CheckpointError):
    """A model file needs an optional Python package that is not installed."""


@dataclass(eq=False)
class T5Bundle:
    """What travels on a T5 edge: IF's tokenizer and T5 encoder (handles the model manager owns)."""

    tokenizer_ref: Any
    encoder_ref: Any
    dtype: Any
    device: Any
    source: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer(self) -> Any:
        return resolve(self.tokenizer_ref)

    @property
    def encoder(self) -> Any:
        return resolve(self.encoder_ref)

    def __loom_cache_size__(self) -> int:
        return 0  # the model manager owns this memory, not the result cache


@dataclass
class LoadedIF:
    model: ModelBundle
    t5: T5Bundle | None
    stage: str


# ---- what is in a folder (no weights read) -----------------------------------------------------


def folder_problem(path: Path) -> str | None:
    """Why `path` is not a DeepFloyd IF diffusers folder Loom can load (torch-free, quick), or
    None. Checks the files and the UNet's channels, not the weights."""
    if not path.is_dir():
        return (f"{path} is not a folder; expected a DeepFloyd IF diffusers folder "
                "(model_index.json, unet/, scheduler/, text_encoder/, tokenizer/)")
    for rel in ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json"):
        if not (path / rel).is_file():
            return f"{path} has no {rel}; expected a DeepFloyd IF diffusers folder"
    try:
        unet = _read_json(path / "unet" / "config.json")
        stage_of(unet)
        if stage_of(unet) == STAGE_II and not (
                path / "image_noising_scheduler" / "scheduler_config.json").is_file():
            return (f"{path} is a stage II (super-resolution) folder without "
                    "image_noising_scheduler/scheduler_config.json")
    except CheckpointError as exc:
        return str(exc)
    return None


def stage_of(unet_config: dict[str, Any]) -> str:
    """Stage I takes the image (3 channels) and predicts noise + variance (6); stage II takes
    the image and the upsampled low-res image (6) and predicts noise + variance (6)."""
    in_ch = int(unet_config.get("in_channels", 0) or 0)
    out_ch = int(unet_config.get("out_channels", 0) or 0)
    if in_ch and out_ch == 2 * in_ch:
        return STAGE_I
    if in_ch and in_ch == out_ch and in_ch % 2 == 0:
        return STAGE_II
    raise CheckpointError(f"a UNet with {in_ch} input and {out_ch} output channels is not a "
                          "DeepFloyd IF stage (stage I: 3 in, 6 out; stage II: 6 in, 6 out)")


# ---- the T5 tokenizer and encoder --------------------------------------------------------------


def load_t5_tokenizer(folder: Path) -> Any:
    """The T5 tokenizer from the model folder's own files: tokenizer.json (needs only the
    `tokenizers` package) or spiece.model (needs `sentencepiece`, an optional package)."""
    from transformers import T5Tokenizer

    if (folder / "tokenizer.json").is_file():
        return T5Tokenizer.from_pretrained(str(folder), local_files_only=True)
    if (folder / "spiece.model").is_file():
        if importlib.util.find_spec("sentencepiece") is None:
            raise MissingPackageError(
                f"{folder}/spiece.model is a SentencePiece tokenizer, which needs the optional "
                "package 'sentencepiece' (pip install sentencepiece); or put a tokenizer.json "
                "next to it")
        return T5Tokenizer.from_pretrained(str(folder), local_files_only=True)
    raise CheckpointError(f"{folder} has neither tokenizer.json nor spiece.model; the T5 "
                          "tokenizer cannot be built")


def _weights_variant(folder: Path, stem: str) -> str | None:
    """None for plain safetensors weights, "fp16" when only that variant is there; pickled
    weights are refused (Loom never unpickles)."""
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    weights = [n[len(stem):] for n in names if n.startswith(stem)
               and n.endswith((".safetensors", ".safetensors.index.json", ".safetensors.json"))]
    if any(not rest.startswith(".fp16") for rest in weights):
        return None
    if weights:
        return "fp16"
    pickled = [n for n in names if n.endswith((".bin", ".ckpt", ".pt"))]
    hint = (f" (found only {', '.join(pickled)}: pickled weights, which Loom does not load; "
            "convert them to safetensors)") if pickled else ""
    raise CheckpointError(f"{folder}: no {stem}*.safetensors weights{hint}")


@torch.no_grad()
def encode_t5(t5: T5Bundle, text: str) -> Conditioning:
    """IFPipeline.encode_prompt without caption cleaning: the prompt lower-cased and stripped,
    padded to 77 tokens, encoded with its attention mask (the padded positions keep T5's
    output, as in diffusers)."""
    tokenizer, encoder = t5.tokenizer, t5.encoder
    device = module_device(encoder)
    tokens = tokenizer([text.lower().strip()], padding="max_length", max_length=T5_MAX_LENGTH,
                       truncation=True, add_special_tokens=True, return_tensors="pt")
    out = encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
    embeds = out[0].to(dtype=encoder.dtype)
    return Conditioning(embeds, None, STAGE_I)


# ---- loading -----------------------------------------------------------------------------------


def load_if(path: Path, dtype: str = "auto", device: str = "auto",
            models: ModelManager | None = None,
            progress: Callable[[int, int], None] | None = None) -> LoadedIF:
    """Load (or take from the model manager) an IF stage's UNet and, when the folder has one,
    its T5 tokenizer + encoder. Raises CheckpointError for a folder that does not fit."""
    from nodes.lib.checkpoints import _dtype_name, resolve_device, resolve_dtype

    path = Path(path)
    problem = folder_problem(path)
    if problem is not None:
        raise CheckpointError(problem)
    models = manager() if models is None else models
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    identity = file_identity(path)
    index = _read_json(path / "model_index.json")
    stage = stage_of(_read_json(path / "unet" / "config.json"))
    sched = _read_json(path / "scheduler" / "scheduler_config.json")

    def key(component: str) -> tuple[str, str, str, str]:
        return (identity, f"{component}@{stage}", _dtype_name(dt), str(dev))

    def build_unet():
        from diffusers import UNet2DConditionModel

        folder = path / "unet"
        unet = UNet2DConditionModel.from_pretrained(
            str(path), subfolder="unet", torch_dtype=dt, use_safetensors=True,
            local_files_only=True, variant=_weights_variant(folder, "diffusion_pytorch_model"))
        return vram.stage(unet, dev)

    def build_t5():
        from transformers import T5EncoderModel

        tokenizer = load_t5_tokenizer(path / "tokenizer")
        folder = path / "text_encoder"
        encoder = T5EncoderModel.from_pretrained(
            str(folder), dtype=dt, use_safetensors=True, local_files_only=True,
            variant=_weights_variant(folder, "model"))
        return tokenizer, vram.stage(encoder, dev)

    has_t5 = (path / "text_encoder" / "config.json").is_file() and bool(
        index.get("text_encoder")) and index.get("text_encoder") != [None, None]
    unet_h = ModelHandle(models, key("unet"), build_unet)
    t5_h = ModelHandle(models, key("t5"), build_t5) if has_t5 else None
    total = 2 if has_t5 else 1
    if progress is not None:
        progress(0, total)
    unet = unet_h.preload()
    if progress is not None:
        progress(1, total)
    if t5_h is not None:
        t5_h.preload()
        if progress is not None:
            progress(2, total)

    sample_channels = int(unet.config.out_channels) // 2
    extra: dict[str, Any] = {
        "sample_channels": sample_channels,
        "in_channels": int(unet.config.in_channels),
        "sample_size": int(unet.config.sample_size or 64),
        # IFInpaintingPipeline keeps the known region as the clean image at every step (SD's
        # inpainting re-noises it to the next timestep): the Sampler reads this
        "inpaint_blend": "clean",
        "kind": "folder",
        "pipeline": str(index.get("_class_name", "")),
    }
    noising = path / "image_noising_scheduler" / "scheduler_config.json"
    if stage == STAGE_II:
        extra["image_noising_scheduler"] = _read_json(noising)
    model = ModelBundle(unet_h, stage, str(sched.get("prediction_type") or "epsilon"), sched,
                        dt, dev, str(path), extra)
    t5 = None
    if t5_h is not None:
        t5 = T5Bundle(t5_h.part(0), t5_h.part(1), dt, dev, str(path))
    return LoadedIF(model, t5, stage)


# ---- stage II: the low-resolution conditioning -------------------------------------------------


def image_noising_scheduler(model: ModelBundle) -> Any:
    import diffusers

    config = (model.extra or {}).get("image_noising_scheduler")
    if not isinstance(config, dict):
        raise ValueError("this model has no image_noising_scheduler (not a DeepFloyd IF stage "
                         "II folder)")
    cls = getattr(diffusers, config.get("_class_name") or "DDPMScheduler",
                  diffusers.DDPMScheduler)
    return cls.from_config(dict(config))


@torch.no_grad()
def super_resolution_condition(model: ModelBundle, low_res: torch.Tensor, width: int,
                               height: int, noise_level: int, stream: rng.Stream,
                               batch: int = 1) -> tuple[ImageConditioning, rng.Noise]:
    """IFSuperResolutionPipeline before its loop: draw the stage II starting noise, upsample
    the low-res image (floats in -1..1) bilinearly with aligned corners, and noise it to
    `noise_level` with the image-noising scheduler, in diffusers' order from one stream."""
    device = torch.device(model.device) if model.device is not None else torch.device("cpu")
    channels = int((model.extra or {}).get("sample_channels", 3))
    image = low_res.to(device, torch.float32)
    if batch > image.shape[0]:
        image = image.repeat_interleave(batch // image.shape[0], dim=0)
    noise = stream.randn((image.shape[0], channels, int(height), int(width)), device=device)
    upscaled = F.interpolate(image, (int(height), int(width)), mode="bilinear",
                             align_corners=True)
    level = torch.tensor([int(noise_level)] * upscaled.shape[0], device=device)
    augment = stream.randn(tuple(upscaled.shape), device=device)
    upscaled = image_noising_scheduler(model).add_noise(upscaled, augment, timesteps=level)
    position = stream.position()
    cond = ImageConditioning(concat=upscaled, class_labels=level, kind="if_super_resolution",
                             stream=position)
    return cond, rng.Noise(noise, position)
