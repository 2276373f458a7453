"""Which model family a checkpoint is, told from its state-dict key names and tensor shapes.

Works on a mapping key -> shape, so a `.safetensors` file is classified from its header alone
(`read_safetensors_header`), without loading a byte of weights. Only structural facts are used
(which key prefixes exist, the UNet's input channels, linear vs convolutional attention
projections, which text encoders are present), so the same rules classify the real checkpoints
and the tiny ones the tests build. Pure Python: no torch here.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SD2_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
SDXL_REFINER_CLIP_G_PREFIX = "conditioner.embedders.0.model."



@dataclass(frozen=True)
class Family:
    """What Loom needs to know about one model family, in one place: the loaders, the nodes'
    choices and the sampling code read it from here instead of repeating family names."""

    name: str
    title: str
    default_prediction: str = "epsilon"
    sdxl_conditioning: bool = False
    """Two text encoders, pooled output and size/crop time ids (SDXL base and refiner)."""
    concat: str = ""
    """Channels the UNet takes besides the latents: "inpaint" (mask + masked-image latents),
    "upscale" (the low-resolution RGB image), "" for none."""
    single_file: bool = True
    """May be read from (or forced on) a single original-layout file."""


FAMILY_TABLE: dict[str, Family] = {f.name: f for f in (
    Family("sd1", "Stable Diffusion 1.x"),
    Family("sd2", "Stable Diffusion 2.x", default_prediction="v_prediction"),
    Family("sdxl", "SDXL base", sdxl_conditioning=True),
    Family("sdxl_refiner", "SDXL refiner", sdxl_conditioning=True),
    Family("sd_inpaint", "SD 1.x inpainting", concat="inpaint"),
    Family("sd2_inpaint", "SD 2.x inpainting", concat="inpaint"),
    Family("sd_x4_upscaler", "SD x4 upscaler", default_prediction="v_prediction",
           concat="upscale"),
    Family("sd_latent_upscaler", "SD latent x2 upscaler", default_prediction="sample",
           concat="upscale", single_file=False),
    Family("loom_builtin", "Loom's built-in model", single_file=False),
)}
FAMILIES = tuple(FAMILY_TABLE)
PREDICTIONS = ("epsilon", "v_prediction", "sample")
DTYPES = ("auto", "fp32", "fp16", "bf16")

# Families that may be forced by the loader's family override (single files and folders).
SINGLE_FILE_FAMILIES = tuple(n for n, f in FAMILY_TABLE.items() if f.single_file)


def family_info(name: str) -> Family:
    """The record of a family (a KeyError names an unknown one)."""
    try:
        return FAMILY_TABLE[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


class UnknownCheckpointError(ValueError):
    """The file is not a Stable Diffusion checkpoint Loom knows how to read."""


@dataclass
class Detection:
    family: str
    in_channels: int
    prediction_type: str | None = None  # None: the family's default
    prediction_source: str = ""  # how the prediction type was found (for messages/logs)
    notes: list[str] = field(default_factory=list)


def read_safetensors_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Key -> shape and the metadata of a .safetensors file, read from its JSON header only."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise UnknownCheckpointError(f"{path.name} is too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n <= 0 or n > 100_000_000:
            raise UnknownCheckpointError(f"{path.name} does not have a valid safetensors header")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise UnknownCheckpointError(
                f"{path.name} does not have a valid safetensors header ({exc})") from exc
    metadata = header.pop("__metadata__", None) or {} if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("shape", []), list)
            and all(isinstance(d, int) and not isinstance(d, bool) for d in v.get("shape", []))
            for v in header.values()):
        raise UnknownCheckpointError(
            f"{path.name} does not have a valid safetensors header (expected an object of "
            "tensors, each with a \"shape\" list of integers, and an object of metadata)")
    shapes = {k: tuple(v.get("shape", ())) for k, v in header.items() if isinstance(v, dict)}
    return shapes, {str(k): str(v) for k, v in metadata.items()}


def _has_prefix(keys: Sequence[str] | Mapping[str, object], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def detect_family(shapes: Mapping[str, Sequence[int]],
                  metadata: Mapping[str, str] | None = None,
                  tensors: Mapping[str, object] | None = None) -> Detection:
    """Classify an original-layout (CompVis / Stability) checkpoint.

    `shapes` maps every key to its shape; `tensors` (optional) gives values for the few keys a
    prediction-type heuristic reads (`tensor_for_prediction_check` names them)."""
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None:
        hint = ""
        if any(k.startswith(("down_blocks.", "unet.", "conv_in.")) for k in shapes):
            hint = (" It looks like a diffusers-layout file: point the loader at the whole "
                    "diffusers folder (the one with model_index.json) instead.")
        elif any(k.startswith(("model.diffusion_model.joint_blocks", "double_blocks",
                               "model.diffusion_model.double_blocks")) for k in shapes):
            hint = " It looks like an SD3 / Flux model, which Loom does not load yet."
        raise UnknownCheckpointError(
            "no Stable Diffusion UNet weights found (expected keys starting with "
            f"'{UNET_PREFIX}input_blocks').{hint}")
    in_channels = int(conv_in[1])
    metadata = metadata or {}
    own = metadata.get("loom_family")
    if own in FAMILIES and in_channels == 4:   # Loom's own models say what they are
        pred, _ = _prediction_from_markers(shapes, metadata)
        return Detection(own, in_channels, pred or default_prediction(own), "loom_family metadata")
    has_adm = UNET_PREFIX + "label_emb.0.0.weight" in shapes
    has_class_embed = UNET_PREFIX + "label_emb.weight" in shapes
    linear_attn = _linear_attention(shapes)
    context_dim = _context_dim(shapes)

    clip_kind = None
    if _has_prefix(shapes, SDXL_CLIP_G_PREFIX) or _has_prefix(shapes, SDXL_CLIP_L_PREFIX):
        clip_kind = "sdxl"
    elif _has_prefix(shapes, SDXL_REFINER_CLIP_G_PREFIX):
        clip_kind = "sdxl_refiner"
    elif _has_prefix(shapes, SD2_CLIP_PREFIX):
        clip_kind = "open_clip"
    elif _has_prefix(shapes, SD1_CLIP_PREFIX):
        clip_kind = "clip"

    if has_adm:
        if clip_kind == "sdxl_refiner":
            family = "sdxl_refiner"
        elif clip_kind == "sdxl":
            family = "sdxl"
        else:  # a UNet-only file: 5 time ids (refiner) or 6 (base), known by the real sizes
            adm = shapes[UNET_PREFIX + "label_emb.0.0.weight"][1]
            family = "sdxl_refiner" if adm == 2560 else "sdxl"
        if in_channels != 4:
            raise UnknownCheckpointError(
                f"an SDXL checkpoint with {in_channels} input channels (SDXL inpainting?) is not "
                "supported yet; SDXL base and refiner are")
        det = Detection(family, in_channels)
    elif in_channels == 7 and has_class_embed:
        det = Detection("sd_x4_upscaler", in_channels, "v_prediction", "x4 upscaler")
    else:
        sd2 = clip_kind == "open_clip" or (clip_kind is None and (
            context_dim == 1024 or (context_dim != 768 and linear_attn)))
        if in_channels == 9:
            family = "sd2_inpaint" if sd2 else "sd_inpaint"
        elif in_channels == 4:
            family = "sd2" if sd2 else "sd1"
        else:
            raise UnknownCheckpointError(
                f"a UNet with {in_channels} input channels is not a family Loom knows "
                "(4: text-to-image, 9: inpainting, 7: x4 upscaler)")
        det = Detection(family, in_channels)

    pred, source = _prediction_from_markers(shapes, metadata)
    if pred is not None:
        det.prediction_type, det.prediction_source = pred, source
    elif det.family == "sd2":
        det.prediction_type, det.prediction_source = _sd2_prediction(shapes, tensors)
    return det


def _linear_attention(shapes: Mapping[str, Sequence[int]]) -> bool:
    """SD2/SDXL use linear proj_in in their transformers; SD1 uses 1x1 convolutions."""
    for k, s in shapes.items():
        if k.startswith(UNET_PREFIX) and k.endswith(".proj_in.weight"):
            return len(s) == 2
    return False


def _context_dim(shapes: Mapping[str, Sequence[int]]) -> int | None:
    for k, s in shapes.items():
        if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight"):
            return int(s[-1])
    return None


def _prediction_from_markers(shapes: Mapping[str, Sequence[int]],
                             metadata: Mapping[str, str]) -> tuple[str | None, str]:
    """Explicit markers some trainers and tools write: a `v_pred` key, or metadata."""
    if "v_pred" in shapes:
        return "v_prediction", "the checkpoint's 'v_pred' key"
    spec = metadata.get("modelspec.prediction_type", "").strip().lower()
    if spec in ("v", "v_prediction", "v-prediction"):
        return "v_prediction", "metadata modelspec.prediction_type"
    if spec in ("epsilon", "eps"):
        return "epsilon", "metadata modelspec.prediction_type"
    if metadata.get("ss_v_parameterization", "").strip().lower() == "true":
        return "v_prediction", "metadata ss_v_parameterization"
    return None, ""


_OUT_NORM = re.compile(
    re.escape(UNET_PREFIX) + r"output_blocks\.(\d+)\.1\.transformer_blocks\.0\.norm1\.bias$")


def tensor_for_prediction_check(shapes: Mapping[str, Sequence[int]]) -> str | None:
    """The key whose values tell SD 2.x v-prediction from epsilon: the first LayerNorm bias of
    the last output block's transformer (as ComfyUI does: its spread is large in 768-v models,
    small in 512-base ones)."""
    found = [(int(m.group(1)), k) for k in shapes if (m := _OUT_NORM.match(k))]
    return max(found)[1] if found else None


def _sd2_prediction(shapes: Mapping[str, Sequence[int]],
                    tensors: Mapping[str, object] | None) -> tuple[str | None, str]:
    key = tensor_for_prediction_check(shapes)
    if key is None or tensors is None or key not in tensors:
        return None, ""
    t = tensors[key]
    std = float(t.float().std(unbiased=False))  # type: ignore[attr-defined]
    if std > 0.09:
        return "v_prediction", f"SD 2.x heuristic (spread {std:.3f} of {key[len(UNET_PREFIX):]})"
    return "epsilon", f"SD 2.x heuristic (spread {std:.3f} of {key[len(UNET_PREFIX):]})"


def default_prediction(family: str) -> str:
    info = FAMILY_TABLE.get(family)
    return info.default_prediction if info is not None else "epsilon"


def config_name(family: str, prediction_type: str | None) -> str:
    """The folder under resources/configs describing a family (SD 2.x: 768-v or 512-base)."""
    if family == "sd2":
        return "sd2" if (prediction_type or "v_prediction") == "v_prediction" else "sd2_base"
    return family
