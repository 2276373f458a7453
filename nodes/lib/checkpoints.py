"""Load Stable Diffusion checkpoints into Loom's bundles, fully offline.

Two sources are read:
- a diffusers folder (model_index.json with unet/, vae/, text_encoder(_2)/, tokenizer(_2)/,
  scheduler/): each component with diffusers' / transformers' `from_pretrained`, safetensors only;
- a single `.safetensors` (or `.ckpt`, read with `torch.load(weights_only=True)`, which refuses
  to run pickled code) in the original CompVis / Stability layout. The family is detected from
  the keys and shapes (nodes.lib.families), the components are built from the JSON configs
  shipped in resources/configs/<family>/ (or a given config folder) and the weights converted
  with diffusers' single-file conversion functions, then loaded strictly: a checkpoint that does
  not match its config is an error naming the keys, never a silently half-random model.

Loaded components live in the model manager (nodes.lib.model_manager), keyed by file identity,
component, dtype and device, so nodes and runs share them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Never contact a model hub: every config Loom needs is on disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

from engine.paths import PROJECT_ROOT, file_identity
from nodes.lib.bundles import ClipBundle, ModelBundle, VaeBundle
from nodes.lib.families import (
    DTYPES,
    FAMILIES,
    PREDICTIONS,
    SD1_CLIP_PREFIX,
    SD2_CLIP_PREFIX,
    SDXL_CLIP_G_PREFIX,
    SDXL_CLIP_L_PREFIX,
    SDXL_REFINER_CLIP_G_PREFIX,
    UNET_PREFIX,
    VAE_PREFIXES,
    Detection,
    UnknownCheckpointError,
    config_name,
    default_prediction,
    detect_family,
    read_safetensors_header,
    tensor_for_prediction_check,
)
from nodes.lib.model_files import (
    SINGLE_FILE_SUFFIXES,
    CheckpointError,
    folder_family,
    read_json_object,
)
from nodes.lib.model_manager import ModelHandle, ModelManager, manager
from nodes.lib.vram import stage

CONFIGS_DIR = PROJECT_ROOT / "resources" / "configs"
TOKENIZER_DIR = PROJECT_ROOT / "resources" / "tokenizers" / "clip"


# CheckpointError (a checkpoint that cannot be loaded; the message says what was expected)
# lives in the torch-free nodes.lib.model_files, which Load Checkpoint's pre-run check uses


LOAD_ERRORS = (CheckpointError, UnknownCheckpointError, FileNotFoundError)
"""What the loader raises for a path that is not a usable checkpoint."""


# ---- device and dtype -------------------------------------------------------------------------


def resolve_device(name: str | None = "auto") -> torch.device:
    """"auto": CUDA if available, else MPS, else the CPU."""
    name = (name or "auto").strip().lower()
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """"auto": fp16 on CUDA and MPS, fp32 on the CPU (CPU half precision is slow and lossy)."""
    name = (name or "auto").strip().lower()
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if name == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if name not in table:
        raise CheckpointError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return table[name]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---- what is at a path ------------------------------------------------------------------------


@dataclass
class CheckpointInfo:
    """What a path holds, before any weights are read."""

    path: Path
    kind: str  # "folder" | "single_file"
    identity: str
    family: str
    prediction_type: str
    config_dir: Path  # folder with model_index.json, unet/, vae/, ... configs
    detection: Detection | None = None
    model_index: dict[str, Any] = field(default_factory=dict)

    @property
    def has_component(self) -> dict[str, bool]:
        idx = self.model_index
        return {name: bool(idx.get(name)) and idx.get(name) != [None, None]
                for name in ("unet", "vae", "text_encoder", "text_encoder_2")}


_DETECTIONS: dict[tuple[str, str], Detection] = {}


def inspect_checkpoint(path: Path, family: str = "auto", prediction: str = "auto",
                       config_dir: Path | None = None) -> CheckpointInfo:
    """Classify the checkpoint at `path` (a diffusers folder or a single file)."""
    path = Path(path)
    if family not in ("auto", *FAMILIES):
        raise CheckpointError(f"unknown family {family!r}; use 'auto' or one of "
                              f"{', '.join(FAMILIES)}")
    if prediction not in ("auto", *PREDICTIONS):
        raise CheckpointError(f"unknown prediction type {prediction!r}; use 'auto' or one of "
                              f"{', '.join(PREDICTIONS)}")
    if not path.exists():
        raise FileNotFoundError(path)
    identity = file_identity(path)
    if path.is_dir():
        return _inspect_folder(path, identity, family, prediction, config_dir)
    return _inspect_file(path, identity, family, prediction, config_dir)


def _read_json(p: Path) -> dict[str, Any]:
    """A model's JSON file as an object, its known fields type-checked; anything malformed
    raises CheckpointError naming the file and the field (nodes.lib.model_files)."""
    return read_json_object(p)


def _inspect_folder(path: Path, identity: str, family: str, prediction: str,
                    config_dir: Path | None) -> CheckpointInfo:
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise CheckpointError(
            f"{path} is a folder without model_index.json; expected a diffusers pipeline folder "
            "(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) or a single "
            ".safetensors checkpoint file")
    index = _read_json(index_file)
    if family == "auto":
        family = _folder_family(path, index)
    sched_file = path / "scheduler" / "scheduler_config.json"
    sched = _read_json(sched_file) if sched_file.is_file() else {}
    if prediction == "auto":
        prediction = sched.get("prediction_type") or default_prediction(family)
    return CheckpointInfo(path, "folder", identity, family, prediction,
                          Path(config_dir) if config_dir else path, None, index)


# the family of a diffusers folder: torch-free, so the model library's listing uses it too
_folder_family = folder_family


def _inspect_file(path: Path, identity: str, family: str, prediction: str,
                  config_dir: Path | None) -> CheckpointInfo:
    suffix = path.suffix.lower()
    if suffix not in SINGLE_FILE_SUFFIXES:
        raise CheckpointError(
            f"{path.name}: expected a .safetensors (or .ckpt) checkpoint file or a diffusers "
            "folder")
    det = _DETECTIONS.get((identity, suffix))
    if det is None:
        if suffix == ".safetensors":
            shapes, metadata = read_safetensors_header(path)
            tensors = None
            key = tensor_for_prediction_check(shapes)
            if key is not None:
                from safetensors import safe_open

                with safe_open(str(path), framework="pt", device="cpu") as f:
                    tensors = {key: f.get_tensor(key)}
            det = detect_family(shapes, metadata, tensors)
        else:
            sd = _read_pickled_state_dict(path)
            det = detect_family({k: tuple(v.shape) for k, v in sd.items()}, {}, sd)
        _DETECTIONS[(identity, suffix)] = det
    fam = det.family if family == "auto" else family
    if prediction == "auto":
        prediction = det.prediction_type or default_prediction(fam)
    cdir = Path(config_dir) if config_dir else CONFIGS_DIR / config_name(fam, prediction)
    if not (cdir / "unet" / "config.json").is_file():
        raise CheckpointError(f"no configs for family {fam!r} in {cdir} (expected "
                              "unet/config.json, vae/config.json, ...)")
    index_file = cdir / "model_index.json"
    index = _read_json(index_file) if index_file.is_file() else {}
    return CheckpointInfo(path, "single_file", identity, fam, prediction, cdir, det, index)


# ---- reading original-layout weights ----------------------------------------------------------


def _read_pickled_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A .ckpt's state dict via `torch.load(weights_only=True)`: plain tensors and containers
    only; anything that would run code on unpickling is refused."""
    import pickle

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path.name} cannot be read safely: it contains pickled Python objects beyond "
            "plain tensors, and Loom never runs code from a model file "
            f"(torch.load weights_only=True refused it: {first}). Convert it to .safetensors "
            "with a tool you trust, or use the .safetensors release of this model.") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()
                                            if not isinstance(v, (int, float, str))):
        raise CheckpointError(f"{path.name} does not hold a state dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


class _StateDictReader:
    """Reads the tensors under some key prefixes from a single-file checkpoint, lazily."""

    def __init__(self, path: Path):
        self.path = path
        self._full: dict[str, torch.Tensor] | None = None

    def release(self) -> None:
        """Forget a pickled file's tensors once its components are built (a reload after an
        eviction reads the file again)."""
        self._full = None

    def subset(self, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
        if self.path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefixes)}
        if self._full is None:
            self._full = _read_pickled_state_dict(self.path)
        return {k: v for k, v in self._full.items() if k.startswith(prefixes)}


# ---- building components ----------------------------------------------------------------------


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str,
               info: CheckpointInfo, dtype: torch.dtype) -> torch.nn.Module:
    target = model.state_dict()
    fixed: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k not in target:
            alt = k[len("text_model."):] if k.startswith("text_model.") else "text_model." + k
            if alt in target:
                k = alt
            else:
                continue  # reported below as unexpected only if it mattered
        fixed[k] = v.to(dtype) if v.is_floating_point() else v
    missing = [k for k in target if k not in fixed and not k.endswith("position_ids")]
    unexpected = [k for k in state if k not in target and
                  k.removeprefix("text_model.") not in target and "text_model." + k not in target]
    bad_shapes = [f"{k} {tuple(fixed[k].shape)} vs {tuple(target[k].shape)}"
                  for k in fixed if tuple(fixed[k].shape) != tuple(target[k].shape)]
    if missing or bad_shapes:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if bad_shapes:
            detail.append(f"{len(bad_shapes)} of another shape (e.g. {'; '.join(bad_shapes[:3])})")
        raise CheckpointError(
            f"{info.path.name}: the {what} weights do not fit the {info.family} configuration in "
            f"{info.config_dir}: {', '.join(detail)}. If the family was detected wrongly, choose "
            "it in the loader; for an unusual architecture give a config folder.")
    del unexpected  # extra keys (EMA copies, logit_scale, position ids) are harmless
    model.load_state_dict(fixed, strict=False, assign=True)
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.device.type == "meta":
            raise CheckpointError(f"{info.path.name}: {what} tensor {name} was not loaded")
    return model


def _empty(build):
    try:
        from accelerate import init_empty_weights
    except ImportError:  # pragma: no cover
        return build()
    with init_empty_weights():
        return build()


def _unet_from_single_file(info: CheckpointInfo, reader: _StateDictReader,
                           dtype: torch.dtype, device: torch.device):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = _read_json(info.config_dir / "unet" / "config.json")
    if info.detection is not None and info.detection.in_channels != config.get("in_channels"):
        config["in_channels"] = info.detection.in_channels
    raw = reader.subset((UNET_PREFIX,))
    converted = convert_ldm_unet_checkpoint(raw, config)
    del raw
    model = _empty(lambda: UNet2DConditionModel.from_config(config))
    return stage(_load_into(model, converted, "UNet", info, dtype), device)


def _vae_from_single_file(info: CheckpointInfo, reader: _StateDictReader,
                          dtype: torch.dtype, device: torch.device):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = _read_json(info.config_dir / "vae" / "config.json")
    raw = reader.subset(VAE_PREFIXES)
    if not raw:
        raise CheckpointError(f"{info.path.name} has no VAE weights (keys starting with "
                              "'first_stage_model.'); load a VAE separately")
    converted = convert_ldm_vae_checkpoint(raw, config)
    del raw
    model = _empty(lambda: AutoencoderKL.from_config(config))
    return stage(_load_into(model, converted, "VAE", info, dtype), device)


def _text_encoder_class(config: dict[str, Any]):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    arch = (config.get("architectures") or ["CLIPTextModel"])[0]
    return CLIPTextModelWithProjection if arch == "CLIPTextModelWithProjection" else CLIPTextModel


def _text_encoder_from_single_file(info: CheckpointInfo, reader: _StateDictReader, sub: str,
                                   dtype: torch.dtype, device: torch.device):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_open_clip_checkpoint,
    )
    from transformers import CLIPTextConfig

    config_dict = _read_json(info.config_dir / sub / "config.json")
    cls = _text_encoder_class(config_dict)
    config = CLIPTextConfig.from_dict(config_dict)
    model = _empty(lambda: cls(config))
    fam = info.family
    if fam == "sdxl" and sub == "text_encoder":
        prefix, open_clip = SDXL_CLIP_L_PREFIX, False
    elif fam == "sdxl":
        prefix, open_clip = SDXL_CLIP_G_PREFIX, True
    elif fam == "sdxl_refiner":
        prefix, open_clip = SDXL_REFINER_CLIP_G_PREFIX, True
    elif any_key(reader, SD2_CLIP_PREFIX):
        prefix, open_clip = SD2_CLIP_PREFIX, True
    else:
        prefix, open_clip = SD1_CLIP_PREFIX, False
    raw = reader.subset((prefix,))
    if not raw:
        raise CheckpointError(f"{info.path.name} has no text encoder weights (keys starting "
                              f"with '{prefix}')")
    if open_clip:
        converted = convert_open_clip_checkpoint(model, raw, prefix=prefix)
        # SD 2.x keeps 23 of OpenCLIP-H's 24 layers (it reads the penultimate one): drop
        # layers beyond the config's count.
        n = config.num_hidden_layers
        converted = {k: v for k, v in converted.items()
                     if (_layer_index(k) is None or _layer_index(k) < n)}  # type: ignore
    else:
        converted = convert_ldm_clip_checkpoint(raw, remove_prefix=prefix)
    del raw
    return stage(_load_into(model, converted, f"text encoder ({sub})", info, dtype), device)


def any_key(reader: _StateDictReader, prefix: str) -> bool:
    if reader.path.suffix.lower() == ".safetensors":
        shapes, _ = read_safetensors_header(reader.path)
        return any(k.startswith(prefix) for k in shapes)
    return bool(reader.subset((prefix,)))


def _layer_index(key: str) -> int | None:
    marker = "encoder.layers."
    i = key.find(marker)
    if i < 0:
        return None
    return int(key[i + len(marker):].split(".", 1)[0])


def load_tokenizer(folder: Path):
    """A CLIPTokenizer from `folder`; a config folder holding only the special-token settings
    gets its vocab.json / merges.txt from resources/tokenizers/clip."""
    from transformers import CLIPTokenizer

    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    settings: dict[str, Any] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).is_file():
            settings.update(_read_json(folder / name))
    kwargs = {k: settings[k] for k in ("pad_token", "model_max_length") if k in settings}
    if isinstance(kwargs.get("pad_token"), dict):
        kwargs["pad_token"] = kwargs["pad_token"].get("content")
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True, **kwargs)


def _text_subfolders(info: CheckpointInfo) -> list[str]:
    subs = []
    for sub in ("text_encoder", "text_encoder_2"):
        if info.kind == "folder":
            entry = info.model_index.get(sub)
            if entry and entry != [None, None] and (info.path / sub).is_dir():
                subs.append(sub)
        elif (info.config_dir / sub / "config.json").is_file():
            subs.append(sub)
    if not subs:
        raise CheckpointError(f"{info.path}: no text encoder in this checkpoint")
    return subs


# ---- diffusers folders ------------------------------------------------------------------------


def _variant(folder: Path, stem: str) -> str | None:
    """None when the plain `<stem>.safetensors` exists; "fp16" when only that variant does."""
    if (folder / f"{stem}.safetensors").is_file() or \
            (folder / f"{stem}.safetensors.index.json").is_file():
        return None
    if (folder / f"{stem}.fp16.safetensors").is_file() or \
            (folder / f"{stem}.safetensors.index.fp16.json").is_file():
        return "fp16"
    pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.ckpt")]
    hint = (f" (found only {', '.join(pickled)}: pickled weights, which Loom does not load; "
            "convert them to safetensors)") if pickled else ""
    raise CheckpointError(f"{folder}: no {stem}.safetensors weights{hint}")


def _folder_component(info: CheckpointInfo, sub: str, dtype: torch.dtype,
                      device: torch.device):
    folder = info.path / sub
    if not folder.is_dir():
        raise CheckpointError(f"{info.path}: the diffusers folder has no {sub}/ component")
    if (folder / "config.json").is_file():
        _read_json(folder / "config.json")  # a malformed config named before diffusers reads it
    if sub == "unet":
        from diffusers import UNet2DConditionModel

        model = UNet2DConditionModel.from_pretrained(
            str(info.path), subfolder="unet", torch_dtype=dtype, use_safetensors=True,
            local_files_only=True, variant=_variant(folder, "diffusion_pytorch_model"))
    elif sub == "vae":
        from diffusers import AutoencoderKL

        model = AutoencoderKL.from_pretrained(
            str(info.path), subfolder="vae", torch_dtype=dtype, use_safetensors=True,
            local_files_only=True, variant=_variant(folder, "diffusion_pytorch_model"))
    else:
        cls = _text_encoder_class(_read_json(folder / "config.json"))
        model = cls.from_pretrained(str(folder), dtype=dtype, use_safetensors=True,
                                    local_files_only=True, variant=_variant(folder, "model"))
    return stage(model, device)


# ---- the loader -------------------------------------------------------------------------------


@dataclass
class LoadedCheckpoint:
    model: ModelBundle
    clip: ClipBundle
    vae: VaeBundle
    info: CheckpointInfo


def load_checkpoint(path: Path | str, family: str = "auto", prediction: str = "auto",
                    dtype: str = "auto", device: str = "auto", config_dir: Path | None = None,
                    models: ModelManager | None = None,
                    components: tuple[str, ...] = ("unet", "clip", "vae"),
                    progress: Callable[[int, int], None] | None = None) -> LoadedCheckpoint:
    """Load (or take from the model manager) the UNet, text encoders and VAE at `path`.
    `progress(done, total)` is called before the first component and after each one (the
    editor shows it on the node: loading 1/3 ...)."""
    models = manager() if models is None else models
    info = inspect_checkpoint(Path(path), family, prediction, config_dir)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    reader = _StateDictReader(info.path) if info.kind == "single_file" else None
    cfg_key = str(info.config_dir) if info.kind == "single_file" else ""

    def key(component: str) -> tuple[str, str, str, str]:
        return (info.identity, f"{component}@{info.family}@{cfg_key}", _dtype_name(dt), str(dev))

    def build_unet():
        if reader is not None:
            return _unet_from_single_file(info, reader, dt, dev)
        return _folder_component(info, "unet", dt, dev)

    def build_vae():
        if reader is not None:
            return _vae_from_single_file(info, reader, dt, dev)
        return _folder_component(info, "vae", dt, dev)

    def build_clip():
        subs = _text_subfolders(info)
        encoders = []
        tokenizers = []
        for sub in subs:
            tsub = sub.replace("text_encoder", "tokenizer")
            tdir = (info.path / tsub) if info.kind == "folder" else (info.config_dir / tsub)
            tokenizers.append(load_tokenizer(tdir))
            if reader is not None:
                encoders.append(_text_encoder_from_single_file(info, reader, sub, dt, dev))
            else:
                encoders.append(_folder_component(info, sub, dt, dev))
        return tokenizers, encoders

    # Load now (errors and time belong to this node), but hand on handles: the bundles and the
    # results cached with them must not keep the weights alive once the manager lets them go
    unet_h = ModelHandle(models, key("unet"), build_unet) if "unet" in components else None
    clip_h = ModelHandle(models, key("clip"), build_clip) if "clip" in components else None
    vae_h = ModelHandle(models, key("vae"), build_vae) if "vae" in components else None
    total = sum(h is not None for h in (unet_h, clip_h, vae_h))
    done = 0

    def loaded() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    unet = unet_h.preload() if unet_h is not None else None
    if unet_h is not None:
        loaded()
    if clip_h is not None:
        clip_h.preload()
        loaded()
    vae = vae_h.preload() if vae_h is not None else None
    if vae_h is not None:
        loaded()
    if reader is not None:
        reader.release()

    source = str(info.path)
    sched = _scheduler_config(info)
    extra: dict[str, Any] = {"in_channels": unet.config.in_channels if unet is not None else None,
                             "config_dir": str(info.config_dir), "kind": info.kind}
    low_res = info.config_dir / "low_res_scheduler" / "scheduler_config.json"
    if info.family == "sd_x4_upscaler" and low_res.is_file():
        extra["low_res_scheduler"] = _read_json(low_res)
        extra["max_noise_level"] = int(info.model_index.get("max_noise_level", 350))
    if info.model_index.get("requires_aesthetics_score") is not None:
        extra["requires_aesthetics_score"] = bool(info.model_index["requires_aesthetics_score"])
    model_bundle = ModelBundle(unet_h, info.family, info.prediction_type, sched, dt, dev, source,
                               extra)
    clip_bundle = None
    if clip_h is not None:
        clip_bundle = ClipBundle(
            clip_h.part(0), clip_h.part(1), info.family, dt, dev, source,
            force_zeros_for_empty_prompt=bool(
                info.model_index.get("force_zeros_for_empty_prompt", False)))
    vae_bundle = None
    if vae is not None:
        vae_bundle = VaeBundle(vae_h, info.family, float(vae.config.scaling_factor), dt, dev,
                               source,
                               force_upcast=bool(getattr(vae.config, "force_upcast", False)),
                               shift_factor=getattr(vae.config, "shift_factor", None))
    return LoadedCheckpoint(model_bundle, clip_bundle, vae_bundle, info)


def _scheduler_config(info: CheckpointInfo) -> dict[str, Any]:
    """The checkpoint's own diffusers scheduler config, with the prediction type in force."""
    f = (info.path if info.kind == "folder" else info.config_dir) / "scheduler" / \
        "scheduler_config.json"
    if not f.is_file():
        f = CONFIGS_DIR / config_name(info.family, info.prediction_type) / "scheduler" / \
            "scheduler_config.json"
    cfg = _read_json(f) if f.is_file() else {}
    cfg["prediction_type"] = info.prediction_type
    return cfg


