"""Reading a model's JSON files (model_index.json, <component>/config.json,
scheduler_config.json, loom.json, tokenizer settings) with errors that name the file and the
field and say what was expected, instead of a raw AttributeError or UnicodeDecodeError from deep
inside a loader. Torch-free: Load Checkpoint's pre-run check reads a folder's files with it
before anything runs; the loader (nodes.lib.checkpoints) reads them through it again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from nodes.lib.families import FAMILIES, PREDICTIONS

MAX_CONFIG_BYTES = 16 * 1024 * 1024
"""A config file is a few KB; anything over this is not one (and is not read into memory)."""
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says what was expected."""


# field kinds: (test, what a good value is) ---------------------------------------------------

Kind = tuple[Callable[[Any], bool], str]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and not (isinstance(v, float)
                                                          and not math.isfinite(v))


INT: Kind = (_is_int, "an integer")
NUM: Kind = (_is_num, "a number")
STR: Kind = (lambda v: isinstance(v, str), "text")
BOOL: Kind = (lambda v: isinstance(v, bool), "true or false")
INTS: Kind = (lambda v: isinstance(v, list) and bool(v) and all(map(_is_int, v)),
              "a list of integers")
STRS: Kind = (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
              "a list of texts")
INT_OR_INTS: Kind = (lambda v: INT[0](v) or INTS[0](v), "an integer or a list of integers")
COMPONENT: Kind = (lambda v: v is None or (isinstance(v, list) and len(v) == 2 and all(
    x is None or isinstance(x, str) for x in v)), 'a ["library", "ClassName"] pair')
TOKEN: Kind = (lambda v: isinstance(v, str) or (isinstance(v, dict) and isinstance(
    v.get("content"), str)), 'a token text or {"content": text}')


def opt(kind: Kind) -> Kind:
    return (lambda v: v is None or kind[0](v), f"{kind[1]} or null")


def one_of(*choices: str) -> Kind:
    return (lambda v: v in choices, "one of " + ", ".join(repr(c) for c in choices))


MODEL_INDEX: dict[str, Kind] = {
    "_class_name": STR, "_loom_family": STR, "force_zeros_for_empty_prompt": BOOL,
    "requires_aesthetics_score": BOOL, "max_noise_level": INT,
    **{name: COMPONENT for name in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer",
                                    "tokenizer_2", "scheduler", "low_res_scheduler")},
}
LOOM: dict[str, Kind] = {"family": STR}
UNET: dict[str, Kind] = {
    "_class_name": STR, "in_channels": INT, "out_channels": INT, "sample_size": INT_OR_INTS,
    "cross_attention_dim": INT_OR_INTS, "use_linear_projection": BOOL,
    "addition_embed_type": opt(STR), "block_out_channels": INTS,
    "layers_per_block": INT_OR_INTS, "attention_head_dim": opt(INT_OR_INTS),
    "norm_num_groups": opt(INT), "down_block_types": STRS, "up_block_types": STRS,
}
VAE: dict[str, Kind] = {
    "_class_name": STR, "in_channels": INT, "out_channels": INT, "latent_channels": INT,
    "block_out_channels": INTS, "layers_per_block": INT, "norm_num_groups": INT,
    "sample_size": INT_OR_INTS, "scaling_factor": NUM, "shift_factor": opt(NUM),
    "force_upcast": BOOL, "down_block_types": STRS, "up_block_types": STRS,
}
SCHEDULER: dict[str, Kind] = {
    "_class_name": STR, "prediction_type": one_of(*PREDICTIONS), "num_train_timesteps": INT,
    "beta_start": NUM, "beta_end": NUM, "beta_schedule": STR, "timestep_spacing": STR,
    "steps_offset": INT, "clip_sample": BOOL, "set_alpha_to_one": BOOL,
}
TEXT_ENCODER: dict[str, Kind] = {
    "architectures": STRS, "hidden_size": INT, "num_hidden_layers": INT,
    "num_attention_heads": INT, "intermediate_size": INT, "max_position_embeddings": INT,
    "vocab_size": INT, "projection_dim": INT, "hidden_act": STR,
}
TOKENIZER: dict[str, Kind] = {"model_max_length": NUM, "pad_token": opt(TOKEN)}


def schema_for(path: Path) -> dict[str, Kind]:
    """The fields checked in a file, by its name (and its folder's, for config.json)."""
    name, folder = path.name, path.parent.name
    if name == "model_index.json":
        return MODEL_INDEX
    if name == "loom.json":
        return LOOM
    if name == "scheduler_config.json":
        return SCHEDULER
    if name in ("tokenizer_config.json", "special_tokens_map.json"):
        return TOKENIZER
    if name == "config.json":
        if folder == "unet":
            return UNET
        if folder == "vae":
            return VAE
        if folder.startswith("text_encoder"):
            return TEXT_ENCODER
    return {}


def _describe(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True)
    text = text if len(text) <= 40 else text[:37] + "..."
    kind = {dict: "an object", list: "a list", str: "text", bool: "a boolean",
            type(None): "null", int: "an integer", float: "a number"}.get(type(value), "a value")
    return f"{kind} {text}" if value is not None else kind


def read_json_object(path: str | Path, fields: dict[str, Kind] | None = None) -> dict[str, Any]:
    """A JSON object from `path`, its known fields (`fields`, by default by the file's name:
    schema_for) checked. Anything wrong raises CheckpointError naming the file and, where it
    applies, the field: unreadable, too large, not UTF-8, invalid JSON, not an object, a field
    of the wrong type."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise CheckpointError(f"{p}: {size} bytes is too large for a config file")
        data = p.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {p}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{p}: not UTF-8 text (a bad byte at offset {exc.start}); a config "
                              "file must be JSON written in UTF-8") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p}: invalid JSON at line {exc.lineno}, column {exc.colno}: "
                              f"{exc.msg}") from None
    except (RecursionError, ValueError) as exc:
        raise CheckpointError(f"{p}: invalid JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{p}: expected a JSON object {{...}} of settings, found "
                              f"{_describe(doc)}")
    for name, (test, what) in (schema_for(p) if fields is None else fields).items():
        if name in doc and not test(doc[name]):
            raise CheckpointError(f"{p}: field '{name}' must be {what}, got "
                                  f"{_describe(doc[name])}")
    return doc


def folder_files(folder: Path, index: dict[str, Any]) -> Iterable[Path]:
    """The JSON files of a diffusers folder that the loader reads, those that exist."""
    candidates = [folder / "loom.json", folder / "scheduler" / "scheduler_config.json",
                  folder / "low_res_scheduler" / "scheduler_config.json"]
    for sub in COMPONENTS:
        candidates.append(folder / sub / "config.json")
    for sub in ("tokenizer", "tokenizer_2"):
        candidates += [folder / sub / "tokenizer_config.json",
                       folder / sub / "special_tokens_map.json"]
    for f in candidates:
        if f.is_file():
            yield f


def checkpoint_problem(path: Path, config_dir: Path | None = None) -> tuple[str, str] | None:
    """(input, message) of what is surely wrong with a Load Checkpoint's `path` (and `config`)
    before any weights are read, or None: missing, a folder without model_index.json, a JSON
    file that cannot be read or has a field of the wrong type, an unknown file type."""
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError):
        exists = is_dir = False
    if not exists:
        return "path", (f"no file or folder at {path}; expected a .safetensors checkpoint or a "
                        "diffusers folder with model_index.json")
    try:
        if is_dir:
            index_file = path / "model_index.json"
            if not index_file.is_file():
                return "path", (f"{path} is a folder without model_index.json; expected a "
                                "diffusers pipeline folder (model_index.json, unet/, vae/, "
                                "text_encoder/, tokenizer/, scheduler/) or a single .safetensors "
                                "checkpoint file")
            index = read_json_object(index_file)
            for f in folder_files(path, index):
                read_json_object(f)
        elif path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            return "path", (f"{path.name}: expected a .safetensors (or .ckpt) checkpoint file or "
                            "a diffusers folder")
    except CheckpointError as exc:
        return "path", str(exc)
    if config_dir is not None:
        if not (config_dir / "unet" / "config.json").is_file():
            return "config", f"{config_dir} is not a diffusers folder with unet/config.json"
        try:
            for f in folder_files(config_dir, {}):
                read_json_object(f)
            if (config_dir / "model_index.json").is_file():
                read_json_object(config_dir / "model_index.json")
        except CheckpointError as exc:
            return "config", str(exc)
    return None


def folder_family(path: Path, index: dict[str, Any]) -> str:
    """The family of a diffusers folder from its pipeline class and UNet config. Loom's own
    models say so in model_index.json ("_loom_family") or a loom.json next to it."""
    if index.get("_loom_family") in FAMILIES:
        return index["_loom_family"]
    loom = path / "loom.json"
    if loom.is_file():
        fam = read_json_object(loom).get("family")
        if fam in FAMILIES:
            return fam
    cls = str(index.get("_class_name", ""))
    unet_cfg_file = path / "unet" / "config.json"
    unet_cfg = read_json_object(unet_cfg_file) if unet_cfg_file.is_file() else {}
    if unet_cfg.get("_class_name") == "UNet2DModel":
        raise CheckpointError(f"{path}: a {cls or 'diffusers'} folder with a UNet2DModel (no "
                              "text conditioning): load it with Load Pixel Model")
    in_ch = int(unet_cfg.get("in_channels", 4))
    cross = unet_cfg.get("cross_attention_dim")
    sd2 = cross == 1024 or (cross != 768 and bool(unet_cfg.get("use_linear_projection")))
    if cls == "StableDiffusionLatentUpscalePipeline":
        return "sd_latent_upscaler"
    if cls == "StableDiffusionUpscalePipeline" or in_ch == 7:
        return "sd_x4_upscaler"
    if cls.startswith("StableDiffusionXL") or unet_cfg.get("addition_embed_type") == "text_time":
        if in_ch != 4:
            raise CheckpointError(f"{path}: SDXL with {in_ch} input channels (SDXL inpainting?) "
                                  "is not supported yet; SDXL base and refiner are")
        te1 = index.get("text_encoder")
        return "sdxl" if te1 and te1 != [None, None] else "sdxl_refiner"
    if in_ch == 9:
        return "sd2_inpaint" if sd2 else "sd_inpaint"
    if in_ch == 4 and cls in ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline",
                              "StableDiffusionInpaintPipeline", ""):
        return "sd2" if sd2 else "sd1"
    if in_ch == 4:
        return "sd2" if sd2 else "sd1"
    raise CheckpointError(f"{path}: a {cls or 'diffusers'} folder with a {in_ch}-channel UNet "
                          "is not a family Loom knows")
