"""What a model file is, told from its header or config alone: no weights read, no torch.

`describe(kind, path)` is the model library's describer (engine.library; registered in
nodes/__init__.py): the family shown next to each file in `main.py models` and the editor's
model list. Pickled files (.ckpt / .pt / .pth / .bin) cannot be looked into without unpickling
or loading them, so they are listed without a family. The VAE helpers here are Load VAE's
torch-free half: what a path holds, which family's latent space a file is for, and the
AutoencoderKL configuration its weights' shapes describe.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.paths import PROJECT_ROOT
from nodes.lib.families import (
    FAMILY_TABLE,
    UnknownCheckpointError,
    detect_family,
    read_safetensors_header,
)
from nodes.lib.model_files import (
    SINGLE_FILE_SUFFIXES,
    CheckpointError,
    folder_family,
    read_json_object,
)
from nodes.lib.model_files import VAE as VAE_FIELDS

CONFIGS_DIR = PROJECT_ROOT / "resources" / "configs"
CONTEXT_FAMILIES = {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl_refiner"}
"""Cross-attention width -> family, for files that carry UNet attention weights."""


def _title(family: str) -> str:
    info = FAMILY_TABLE.get(family)
    return info.title if info is not None else family


def _header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]] | None:
    if path.suffix.lower() != ".safetensors":
        return None
    return read_safetensors_header(path)


def describe(kind: str, path: Path) -> dict[str, str]:
    """{"family": name, "title": text} of the model at `path` (empty when it cannot be told
    without loading it), plus "error" when the file is not what its folder says."""
    path = Path(path)
    try:
        fn = _DESCRIBERS.get(kind)
        return fn(path) if fn is not None else {"family": "", "title": ""}
    except (UnknownCheckpointError, CheckpointError, OSError, ValueError) as exc:
        return {"family": "", "title": "", "error": str(exc)}


def _checkpoint(path: Path) -> dict[str, str]:
    if path.is_dir():
        unet = path / "unet" / "config.json"
        if unet.is_file() and read_json_object(unet).get("_class_name") == "UNet2DModel":
            # a DDPM / DDIM pixel model, for Load Pixel Model (nodes.lib.pixel)
            return {"family": "pixel", "title": "Pixel-space UNet (DDPM / DDIM)"}
        fam = folder_family(path, read_json_object(path / "model_index.json"))
        return {"family": fam, "title": _title(fam)}
    head = _header(path)
    if head is None:
        return {"family": "", "title": ""}
    det = detect_family(*head)
    return {"family": det.family, "title": _title(det.family)}


def _context_family(shapes: Mapping[str, Sequence[int]], down: tuple[str, ...]) -> str:
    """The family from the width of a cross-attention key projection's input."""
    for k, s in shapes.items():
        if "attn2" in k and ("to_k" in k or "to_v" in k) and any(d in k for d in down) \
                and len(s) >= 2:
            fam = CONTEXT_FAMILIES.get(int(s[1]))
            if fam:
                return fam
    return ""


_LORA_DOWN = ("lora_down", "lora_A", "lora.down", "hada_w1_b", "lokr_w2")


def _lora(path: Path) -> dict[str, str]:
    head = _header(path)
    if head is None:
        return {"family": "", "title": ""}
    shapes = head[0]
    fam = _context_family(shapes, _LORA_DOWN)
    if not fam:
        if any(k.startswith(("lora_te2_", "lora_te1_", "text_encoder_2.", "te2.")) for k in shapes):
            fam = "sdxl"
        else:  # a text-encoder-only LoRA: the width of its encoder
            for k, s in shapes.items():
                if ("lora_te_" in k or k.startswith("text_encoder.")) and "mlp" in k \
                        and "fc1" in k and any(d in k for d in _LORA_DOWN) and len(s) >= 2:
                    fam = {768: "sd1", 1024: "sd2"}.get(int(s[1]), "")
                    break
    return {"family": fam, "title": f"{_title(fam)} LoRA" if fam else "LoRA"}


def _embedding(path: Path) -> dict[str, str]:
    head = _header(path)
    if head is None:
        return {"family": "", "title": ""}
    shapes = head[0]
    if "clip_g" in shapes or "clip_l" in shapes:
        return {"family": "sdxl", "title": "SDXL embedding"}
    widths = {int(s[-1]) for s in shapes.values() if len(s) >= 1}
    fam = {768: "sd1", 1024: "sd2"}.get(next(iter(widths)), "") if len(widths) == 1 else ""
    return {"family": fam, "title": f"{_title(fam)} embedding" if fam else "embedding"}


def _controlnet(path: Path) -> dict[str, str]:
    from nodes.lib.controlnet_files import (
        config_family,
        family_from_shapes,
        layout_of,
        locate,
        read_config,
    )

    src = locate(path)
    if src.kind == "folder":
        fam = config_family(read_config(src.path / "config.json"))
    else:
        head = _header(src.path)
        if head is None:
            return {"family": "", "title": ""}
        layout_of(head[0])
        fam = family_from_shapes(head[0])
    return {"family": fam, "title": f"{_title(fam)} ControlNet"}


def _vae(path: Path) -> dict[str, str]:
    src = locate_vae(path)
    if src.kind == "folder":
        cfg = read_json_object(src.config, VAE_FIELDS)
        fam = vae_family_of_config(cfg)
    else:
        head = _header(src.path)
        if head is None:
            return {"family": "", "title": ""}
        shapes, metadata = head
        vae_layout(shapes)  # not a VAE: an error
        fam = guess_vae_family(src.path, shapes, metadata)
    return {"family": fam, "title": "SDXL VAE" if fam == "sdxl" else "SD 1.x / 2.x VAE"}


_RRDB = re.compile(r"(^|\.)(RRDB_trunk|body)\.\d+\.(rdb|RDB)\d\.")


def _upscaler(path: Path) -> dict[str, str]:
    head = _header(path)
    if head is None:
        return {"family": "", "title": ""}
    shapes = head[0]
    if any(_RRDB.search(k) for k in shapes) or any(".sub." in k and "RDB" in k for k in shapes):
        return {"family": "esrgan", "title": "ESRGAN (RRDBNet)"}
    return {"family": "", "title": ""}


_DESCRIBERS = {"checkpoints": _checkpoint, "loras": _lora, "embeddings": _embedding,
               "controlnet": _controlnet, "vae": _vae, "upscale_models": _upscaler}


# ---- VAE files --------------------------------------------------------------------------------

VAE_PREFIXES = ("first_stage_model.", "vae.")
VAE_FAMILIES = ("sd1", "sdxl")
"""The latent spaces a 4-channel AutoencoderKL is used with: SD 1.x / 2.x (scaling factor
0.18215) and SDXL (0.13025); their VAEs have the same architecture."""
VAE_HINT = ("expected a VAE: a diffusers AutoencoderKL folder (config.json + "
            "diffusion_pytorch_model.safetensors), a pipeline folder with a vae/ component, or a "
            "single .safetensors / .pt file (original `first_stage_model.` or bare keys, or "
            "diffusers keys)")


@dataclass(frozen=True)
class VaeSource:
    kind: str  # "folder" | "single_file"
    path: Path  # the AutoencoderKL folder (a pipeline's vae/) or the weights file
    config: Path | None = None  # a folder's config.json


def locate_vae(path: Path) -> VaeSource:
    """What `path` holds (CheckpointError saying what was expected; FileNotFoundError if
    nothing is there)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    if path.is_dir():
        for folder in (path, path / "vae"):
            cfg = folder / "config.json"
            if cfg.is_file():
                config = read_json_object(cfg, VAE_FIELDS)
                cls = config.get("_class_name", "AutoencoderKL")
                if cls != "AutoencoderKL":
                    raise CheckpointError(f"{cfg}: a {cls} config, not an AutoencoderKL; "
                                          + VAE_HINT)
                return VaeSource("folder", folder, cfg)
        raise CheckpointError(f"{path} is a folder without config.json or vae/config.json; "
                              + VAE_HINT)
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise CheckpointError(f"{path.name}: not a weights file; " + VAE_HINT)
    return VaeSource("single_file", path)


def vae_layout(keys: Mapping[str, Any] | Sequence[str]) -> tuple[str, str]:
    """(layout, prefix) of a VAE state dict: layout "ldm" (the original `encoder.down.0...`) or
    "diffusers" (`encoder.down_blocks.0...`), prefix "first_stage_model." / "vae." / ""."""
    keys = list(keys)
    for prefix in (*VAE_PREFIXES, ""):
        if any(k.startswith(prefix + "encoder.down_blocks.") or
               k.startswith(prefix + "decoder.up_blocks.") for k in keys):
            return "diffusers", prefix
        if any(k.startswith(prefix + "encoder.down.") or k.startswith(prefix + "decoder.up.")
               for k in keys):
            return "ldm", prefix
    raise CheckpointError("no VAE weights found (no encoder.down / decoder.up keys, bare or "
                          "under first_stage_model.); " + VAE_HINT)


def vae_family_of_config(config: Mapping[str, Any]) -> str:
    return "sdxl" if abs(float(config.get("scaling_factor", 0.18215)) - 0.13025) < 1e-6 \
        else "sd1"


def guess_vae_family(path: Path, shapes: Mapping[str, Sequence[int]],
                     metadata: Mapping[str, str] | None = None) -> str:
    """Which latent space a single-file VAE is for, which its weights cannot tell (SD and SDXL
    VAEs have the same shapes): a whole checkpoint's family; else SDXL when the metadata's
    architecture or the file's name says "xl" (sdxl_vae.safetensors, sdxl-vae-fp16-fix);
    else SD 1.x / 2.x. Load VAE's `family` input overrides it."""
    try:
        det = detect_family(shapes, metadata or {})
        return "sdxl" if det.family in ("sdxl", "sdxl_refiner") else "sd1"
    except UnknownCheckpointError:
        pass
    arch = (metadata or {}).get("modelspec.architecture", "").lower()
    if "xl" in arch or "xl" in Path(path).name.lower():
        return "sdxl"
    return "sd1"


def vae_config(family: str) -> dict[str, Any]:
    """Loom's AutoencoderKL config for a family's latent space (resources/configs)."""
    folder = "sdxl" if family == "sdxl" else "sd1"
    return json.loads((CONFIGS_DIR / folder / "vae" / "config.json").read_text(encoding="utf-8"))


def vae_config_from_shapes(shapes: Mapping[str, Sequence[int]], base: dict[str, Any]
                           ) -> dict[str, Any]:
    """`base` (a family's config) with the sizes a single-file VAE's weights show: channels
    per level, resnets per level, latent, input and output channels. The number of groups of
    its GroupNorms cannot be read from weights (SD's 32 stays; give a config otherwise)."""
    layout, prefix = vae_layout(shapes)
    sub = {k[len(prefix):]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}
    if layout == "ldm":
        level = re.compile(r"encoder\.down\.(\d+)\.block\.(\d+)\.conv1\.weight$")
    else:
        level = re.compile(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.conv1\.weight$")
    channels: dict[int, int] = {}
    per_level: dict[int, set[int]] = {}
    for k, s in sub.items():
        m = level.match(k)
        if m and len(s) == 4:
            i, j = int(m.group(1)), int(m.group(2))
            per_level.setdefault(i, set()).add(j)
            if j == 0:
                channels[i] = int(s[0])
    cfg = dict(base)
    if channels and sorted(channels) == list(range(len(channels))):
        n = len(channels)
        cfg["block_out_channels"] = [channels[i] for i in range(n)]
        cfg["down_block_types"] = ["DownEncoderBlock2D"] * n
        cfg["up_block_types"] = ["UpDecoderBlock2D"] * n
        cfg["layers_per_block"] = len(per_level.get(0, ())) or cfg.get("layers_per_block", 2)
    conv_in = sub.get("encoder.conv_in.weight")
    if conv_in is not None and len(conv_in) == 4:
        cfg["in_channels"] = int(conv_in[1])
    dec_in = sub.get("decoder.conv_in.weight")
    if dec_in is not None and len(dec_in) == 4:
        cfg["latent_channels"] = int(dec_in[1])
    dec_out = sub.get("decoder.conv_out.weight")
    if dec_out is not None and len(dec_out) == 4:
        cfg["out_channels"] = int(dec_out[0])
    return cfg


def vae_problem(path: Path, config: Path | None = None) -> tuple[str, str] | None:
    """Load VAE's pre-run check: (input, message) when `path` (or `config`) cannot be a VAE;
    reads configs and safetensors headers only."""
    try:
        src = locate_vae(path)
    except FileNotFoundError:
        return "path", f"no file or folder at {path}"
    except (CheckpointError, OSError, ValueError) as exc:
        return "path", str(exc)
    if config is not None:
        if src.kind == "folder":
            return "config", (f"{src.path} is a folder with its own config.json; leave config "
                              "empty (it is only for single files)")
        try:
            read_vae_config_file(config)
        except (CheckpointError, OSError, ValueError) as exc:
            return "config", str(exc)
    if src.kind == "single_file":
        try:
            head = _header(src.path)
            if head is not None:
                vae_layout(head[0])
        except (UnknownCheckpointError, CheckpointError, OSError, ValueError) as exc:
            return "path", f"{src.path.name}: {exc}"
    return None


def read_vae_config_file(config: Path) -> dict[str, Any]:
    """An AutoencoderKL config.json given for a single file (a file, a VAE folder or a
    pipeline folder with vae/)."""
    config = Path(config)
    if config.is_dir():
        for cand in (config / "config.json", config / "vae" / "config.json"):
            if cand.is_file():
                config = cand
                break
        else:
            raise CheckpointError(f"{config} has no config.json or vae/config.json")
    if not config.is_file():
        raise CheckpointError(f"no file or folder at {config}")
    cfg = read_json_object(config, VAE_FIELDS)
    cls = cfg.get("_class_name", "AutoencoderKL")
    if cls != "AutoencoderKL":
        raise CheckpointError(f"{config}: a {cls} config, not an AutoencoderKL")
    return cfg
