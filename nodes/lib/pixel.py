"""Pixel-space models: loading diffusers `UNet2DModel` folders (DDPM / DDIM pipelines:
unconditional or class-conditional) into the MODEL bundle the Scheduler, UNet Step and Sampler
use, their class names, and the change of range between a pixel model's [-1, 1] and Loom's
IMAGE [0, 1].

Torch is imported inside the functions that need it, so the Load Pixel Model node's pre-run
check (`folder_problem`) stays torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodes.lib.model_files import CheckpointError, read_json_object

PIXEL_FAMILY = "pixel"
"""The `family` of a ModelBundle holding a UNet2DModel (no text encoder, no VAE). Not a
Load Checkpoint family (nodes.lib.families), which are all latent text-to-image models."""

PIPELINES = ("DDPMPipeline", "DDIMPipeline")
CLASS_NAMES_FILE = "class_names.json"


def to_image(sample):
    """[-1, 1] pixels -> IMAGE (float32 [B, 3, H, W] in 0..1 on the CPU), clamped as diffusers'
    DDPMPipeline does; a grey [B, 1, H, W] sample is repeated to three channels."""
    image = (sample.detach().float() / 2 + 0.5).clamp(0, 1).cpu()
    if image.shape[1] == 1:
        image = image.repeat(1, 3, 1, 1)
    return image


def from_image(image):
    """IMAGE (0..1) -> pixels in [-1, 1], the range pixel models work in."""
    return image.float() * 2 - 1


# ---- what a folder holds (torch-free) ---------------------------------------------------------


@dataclass
class PixelFolder:
    path: Path
    unet_config: dict[str, Any]
    scheduler_config: dict[str, Any]
    class_names: list[str] | None

    @property
    def num_classes(self) -> int:
        """How many class embeddings the UNet has (0: unconditional)."""
        return int(self.unet_config.get("num_class_embeds") or 0)


def read_folder(path: Path) -> PixelFolder:
    """The configs and class names of a UNet2DModel diffusers folder (model_index.json,
    unet/, scheduler/, optionally class_names.json); CheckpointError says what is missing."""
    path = Path(path)
    if not path.is_dir() or not (path / "model_index.json").is_file():
        raise CheckpointError(
            f"{path} is not a diffusers folder with model_index.json; expected a DDPM / DDIM "
            "pipeline folder (model_index.json, unet/, scheduler/)")
    index = read_json_object(path / "model_index.json")
    unet_file = path / "unet" / "config.json"
    if not unet_file.is_file():
        raise CheckpointError(f"{path}: no unet/config.json")
    unet_config = read_json_object(unet_file)
    cls = unet_config.get("_class_name")
    if cls != "UNet2DModel":
        hint = (" (a text-to-image checkpoint: use Load Checkpoint)"
                if cls == "UNet2DConditionModel" else "")
        raise CheckpointError(f"{path}: the UNet is a {cls or 'model of unknown class'}, not a "
                              f"UNet2DModel{hint}; pipeline {index.get('_class_name')!r}")
    class_type = unet_config.get("class_embed_type")
    if class_type is not None:
        raise CheckpointError(f"{path}: class_embed_type {class_type!r} is not supported (class "
                              "labels must be indices into an embedding table)")
    sched_file = path / "scheduler" / "scheduler_config.json"
    if not sched_file.is_file():
        raise CheckpointError(f"{path}: no scheduler/scheduler_config.json (the noise schedule "
                              "the model was trained with)")
    scheduler_config = read_json_object(sched_file)
    names = None
    names_file = path / CLASS_NAMES_FILE
    if names_file.is_file():
        try:
            names = json.loads(names_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{names_file}: not readable JSON ({exc})") from exc
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CheckpointError(f"{names_file}: expected a JSON list of class names")
        n_classes = int(unet_config.get("num_class_embeds") or 0)
        if len(names) > n_classes:
            raise CheckpointError(f"{names_file}: {len(names)} names for a UNet with "
                                  f"{n_classes} classes")
    return PixelFolder(path, unet_config, scheduler_config, names)


def folder_problem(path: Path, config_dir: Path | None = None) -> tuple[str, str] | None:
    """(input, message) of what is surely wrong with a Load Pixel Model `path` before any
    weights are read, or None."""
    try:
        read_folder(path)
    except CheckpointError as exc:
        return "path", str(exc)
    except OSError as exc:
        return "path", f"{path}: {exc}"
    return None


# ---- loading ------------------------------------------------------------------------------


def load_pixel_model(path: Path | str, dtype: str = "auto", device: str = "auto",
                     prediction: str = "auto", models: Any = None):
    """A UNet2DModel folder as a ModelBundle (family "pixel"), its weights in the model
    manager. `extra` carries `class_names` (a list, or None), `num_classes` and
    `sample_channels` (the image channels the model denoises)."""
    from engine.paths import file_identity
    from nodes.lib.bundles import ModelBundle
    from nodes.lib.checkpoints import _dtype_name, _variant, resolve_device, resolve_dtype
    from nodes.lib.model_manager import ModelHandle, manager

    folder = read_folder(Path(path))
    models = manager() if models is None else models
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    identity = file_identity(folder.path)

    def build():
        from diffusers import UNet2DModel

        unet = UNet2DModel.from_pretrained(
            str(folder.path), subfolder="unet", torch_dtype=dt, use_safetensors=True,
            local_files_only=True,
            variant=_variant(folder.path / "unet", "diffusion_pytorch_model"))
        from nodes.lib.vram import stage

        return stage(unet, dev)

    handle = ModelHandle(models, (identity, "unet@pixel", _dtype_name(dt), str(dev)), build)
    handle.preload()  # load now: errors and time belong to the loader node
    sched = dict(folder.scheduler_config)
    if prediction == "auto":
        prediction = sched.get("prediction_type") or "epsilon"
    sched["prediction_type"] = prediction
    cfg = folder.unet_config
    extra = {"class_names": folder.class_names, "num_classes": folder.num_classes,
             "sample_channels": int(cfg.get("in_channels", 3)),
             "sample_size": cfg.get("sample_size"), "kind": "folder"}
    return ModelBundle(handle, PIXEL_FAMILY, prediction, sched, dt, dev, str(folder.path), extra)


def class_list(model) -> list[str]:
    """Class names of a MODEL, "0".."n-1" where the folder lists none, in label order."""
    n = int((model.extra or {}).get("num_classes") or 0)
    names = list((model.extra or {}).get("class_names") or [])
    return names + [str(i) for i in range(len(names), n)]


def parse_label(text: str, model) -> int:
    """A class label given as an index ("3") or as a name the model folder lists ("red
    circle", case and surrounding spaces ignored). ValueError lists what is valid."""
    n = int((model.extra or {}).get("num_classes") or 0)
    names = list((model.extra or {}).get("class_names") or [])
    return parse_class(text, n, names, "model")


def parse_class(text: str, n: int, names: list[str], what: str) -> int:
    """Index of a class of the `what` (model, classifier) with `n` classes, given as an index
    ("3"; -1 = the last) or as one of its `names`; ValueError lists what is valid."""
    value = str(text).strip()
    try:
        index = int(value)
    except ValueError:
        index = None
    if index is not None:
        if not -n <= index < n:
            raise ValueError(f"class {index} is out of range: the {what} has {n} classes "
                             f"(0..{n - 1}; -1 = the last)")
        return index % n
    lowered = [name.strip().lower() for name in names]
    if value.lower() in lowered:
        return lowered.index(value.lower())
    if not names:
        raise ValueError(f"{value!r} is not a class index, and the {what} folder lists no "
                         f"class names ({CLASS_NAMES_FILE}); give an index 0..{n - 1}")
    listed = ", ".join(f"{i}: {name}" for i, name in enumerate(names))
    raise ValueError(f"unknown class {value!r}; the {what}'s classes are {listed}")
