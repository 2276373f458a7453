"""What a ControlNet path holds, told without torch: a diffusers ControlNetModel folder, a pipeline
folder with a controlnet/ component, or a single weights file in the original (lllyasviel /
ControlNet 1.x: `input_hint_block`, `zero_convs`, `middle_block_out`; optionally under
`control_model.`) or the diffusers layout (`controlnet_cond_embedding`, `controlnet_down_blocks`).

Load ControlNet's pre-run check uses this before anything runs; the loader
(nodes.lib.controlnet) uses it again. A single file says nothing of its configuration, so the
family is read from its key names and shapes (SDXL: an added time embedding; else the
cross-attention width: 768 SD 1.x, 1024 SD 2.x) and the configuration built from that family's
UNet config in resources/configs, as ControlNetModel.from_unet builds one from a UNet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodes.lib.families import read_safetensors_header
from nodes.lib.model_files import (
    BOOL,
    INT,
    INT_OR_INTS,
    INTS,
    SINGLE_FILE_SUFFIXES,
    STR,
    STRS,
    CheckpointError,
    opt,
    read_json_object,
)

CONTROLNET_FIELDS = {
    "_class_name": STR, "in_channels": INT, "conditioning_channels": INT,
    "block_out_channels": INTS, "layers_per_block": INT, "down_block_types": STRS,
    "cross_attention_dim": INT_OR_INTS, "addition_embed_type": opt(STR),
    "conditioning_embedding_out_channels": INTS, "global_pool_conditions": BOOL,
    "controlnet_conditioning_channel_order": STR, "use_linear_projection": BOOL,
    "attention_head_dim": opt(INT_OR_INTS),
}
"""The fields of a ControlNetModel config.json that Loom reads, with their kinds."""

# Models with "ControlNet" in their name that are not the SD 1.x / 2.x / SDXL ControlNetModel
OTHER_CLASSES = {
    "ControlNetUnionModel": "a ControlNet Union (ProMax) model",
    "ControlNetXSAdapter": "a ControlNet-XS adapter",
    "SD3ControlNetModel": "a Stable Diffusion 3 ControlNet",
    "FluxControlNetModel": "a Flux ControlNet",
    "SparseControlNetModel": "a SparseCtrl (AnimateDiff) ControlNet",
    "HunyuanDiT2DControlNetModel": "a Hunyuan-DiT ControlNet",
    "T2IAdapter": "a T2I-Adapter (not a ControlNet)",
}
PIPELINE_HINT = ("expected a ControlNet: a diffusers ControlNetModel folder (config.json + "
                 "diffusion_pytorch_model.safetensors), a pipeline folder with a controlnet/ "
                 "component, or a single .safetensors / .pth ControlNet file")

LDM_PREFIX = "control_model."
FAMILY_CONFIG_DIRS = {"sd1": "sd1", "sd2": "sd2", "sdxl": "sdxl"}
"""The resources/configs folder whose UNet a single-file ControlNet of each family copies."""


@dataclass(frozen=True)
class ControlNetSource:
    """Where a ControlNet's weights (and, for a folder, its config) are."""

    kind: str  # "folder" | "single_file"
    path: Path  # the ControlNetModel folder (a pipeline's controlnet/) or the weights file


def locate(path: Path) -> ControlNetSource:
    """What `path` is, or CheckpointError saying what was expected (FileNotFoundError if
    nothing is there)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            check_config(read_config(path / "config.json"), path / "config.json")
            return ControlNetSource("folder", path)
        if (path / "model_index.json").is_file():
            index = read_json_object(path / "model_index.json")
            sub = path / "controlnet"
            if (sub / "config.json").is_file():
                check_config(read_config(sub / "config.json"), sub / "config.json")
                return ControlNetSource("folder", sub)
            raise CheckpointError(
                f"{path} is a {index.get('_class_name') or 'diffusers pipeline'} folder without "
                "a controlnet/ component; load it with Load Checkpoint. " + PIPELINE_HINT)
        raise CheckpointError(f"{path} is a folder without config.json; " + PIPELINE_HINT)
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise CheckpointError(f"{path.name}: not a weights file; " + PIPELINE_HINT)
    return ControlNetSource("single_file", path)


def read_config(path: Path) -> dict[str, Any]:
    return read_json_object(path, CONTROLNET_FIELDS)


def check_config(config: dict[str, Any], where: Path) -> None:
    """A config that is not an SD/SDXL ControlNetModel is refused, naming what it is."""
    cls = config.get("_class_name", "ControlNetModel")
    if cls in OTHER_CLASSES:
        raise CheckpointError(f"{where}: this is {OTHER_CLASSES[cls]}, which Loom does not "
                              "support; Loom loads ControlNets for SD 1.x, 2.x and SDXL "
                              "(ControlNetModel)")
    if cls != "ControlNetModel":
        raise CheckpointError(f"{where}: a {cls} config, not a ControlNetModel; "
                              + PIPELINE_HINT)


def config_family(config: dict[str, Any]) -> str:
    """The model family a ControlNet config is made for: "sdxl" (added time embedding),
    "sd2" (cross-attention width 1024) or "sd1" (anything else, tiny test models included)."""
    if config.get("addition_embed_type") == "text_time":
        return "sdxl"
    cross = config.get("cross_attention_dim")
    return "sd2" if cross == 1024 else "sd1"


# ---- single files ---------------------------------------------------------------------------


def layout_of(keys: list[str] | set[str] | dict[str, Any]) -> str:
    """ "ldm" (original ControlNet 1.x layout, prefix stripped), "ldm_prefixed"
    (`control_model.` keys) or "diffusers"; CheckpointError for anything else."""
    keys = list(keys)
    if any(k.startswith("controlnet_cond_embedding.") for k in keys):
        return "diffusers"
    if any(k.startswith("input_hint_block.") for k in keys):
        return "ldm"
    if any(k.startswith(LDM_PREFIX + "input_hint_block.") for k in keys):
        return "ldm_prefixed"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        raise CheckpointError("this is a Stable Diffusion checkpoint, not a ControlNet; load it "
                              "with Load Checkpoint")
    if any(k.startswith(("lora_", "lora_controlnet")) or ".lora_" in k for k in keys):
        raise CheckpointError("this looks like a Control-LoRA, which Loom does not load; "
                              + PIPELINE_HINT)
    raise CheckpointError("no ControlNet weights found (no input_hint_block or "
                          "controlnet_cond_embedding keys); " + PIPELINE_HINT)


def family_from_shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    """The family of a single-file ControlNet from its keys and shapes (any layout)."""
    if any("label_emb." in k or k.startswith("add_embedding.") for k in shapes):
        return "sdxl"
    for k, shape in shapes.items():
        if k.endswith("attn2.to_k.weight") and len(shape) == 2:
            return "sd2" if shape[1] == 1024 else "sd1"
    return "sd1"


def header_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Key -> shape of a .safetensors file from its header (None for pickled files)."""
    if path.suffix.lower() != ".safetensors":
        return None
    shapes, _ = read_safetensors_header(path)
    return shapes


def controlnet_problem(path: Path, config: Path | None = None) -> tuple[str, str] | None:
    """(input, message) of what is surely wrong with a Load ControlNet's `path` (and `config`)
    before any weights are read, or None."""
    try:
        exists = path.exists()
    except (OSError, ValueError):
        exists = False
    if not exists:
        return "path", f"no file or folder at {path}; " + PIPELINE_HINT
    try:
        src = locate(path)
        shapes = header_shapes(src.path) if src.kind == "single_file" else None
        if shapes is not None:
            layout_of(shapes)
    except (CheckpointError, ValueError) as exc:
        return "path", str(exc)
    if config is not None:
        try:
            config_file(config)
        except CheckpointError as exc:
            return "config", str(exc)
    return None


def config_file(config: Path) -> dict[str, Any]:
    """A `config` input's ControlNet config: a config.json, or a folder holding one (or a
    pipeline folder with controlnet/config.json)."""
    config = Path(config)
    candidates = [config] if config.is_file() else [config / "config.json",
                                                    config / "controlnet" / "config.json"]
    for f in candidates:
        if f.is_file():
            cfg = read_config(f)
            check_config(cfg, f)
            return cfg
    raise CheckpointError(f"{config}: no ControlNet config.json there (a ControlNetModel "
                          "folder's config.json, or the file itself)")
