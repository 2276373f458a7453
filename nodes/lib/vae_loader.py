"""Load a VAE on its own (to swap a checkpoint's): a diffusers AutoencoderKL folder (or a
pipeline folder's vae/), or a single file in the original layout (`first_stage_model.` keys, as
in a whole checkpoint, or bare `encoder.down.0...` keys, as in sd-vae-ft-mse's
.safetensors), or in the diffusers layout. Weights only from safetensors or
torch.load(weights_only=True). The model manager owns the weights; the VAE edge carries a
handle (nodes.lib.model_manager).

A single file carries no config: its sizes are read from the weights' shapes on top of Loom's
SD (or SDXL) VAE config (nodes.lib.model_info.vae_config_from_shapes); weights that do not fit
are an error naming the keys. The latent space (scaling factor) is the family's: SD 1.x / 2.x
or SDXL (`family`; "auto" reads a folder's config, a checkpoint's family, or "xl" in the
name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.paths import file_identity
from nodes.lib.bundles import VaeBundle
from nodes.lib.checkpoints import (
    _dtype_name,
    _empty,
    _read_pickled_state_dict,
    _variant,
    resolve_device,
    resolve_dtype,
)
from nodes.lib.model_files import VAE as VAE_FIELDS
from nodes.lib.model_files import CheckpointError, read_json_object
from nodes.lib.model_info import (
    VAE_FAMILIES,
    guess_vae_family,
    locate_vae,
    read_vae_config_file,
    vae_config,
    vae_config_from_shapes,
    vae_family_of_config,
    vae_layout,
)
from nodes.lib.model_manager import ModelHandle, ModelManager, manager
from nodes.lib.vram import stage

SCALING = {"sd1": 0.18215, "sdxl": 0.13025}


def _header_info(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    if path.suffix.lower() == ".safetensors":
        from nodes.lib.families import read_safetensors_header

        return read_safetensors_header(path)
    return {}, {}


def _read_vae_state(path: Path) -> dict[str, torch.Tensor]:
    """The VAE tensors of a single file (of a whole checkpoint: only its VAE's)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            _layout, prefix = vae_layout(keys)
            return {k: f.get_tensor(k) for k in keys if k.startswith(prefix)}
    state = _read_pickled_state_dict(path)
    _layout, prefix = vae_layout(state)
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], name: str,
                 dtype: torch.dtype) -> torch.nn.Module:
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in target
           if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or bad:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if bad:
            detail.append(f"{len(bad)} of another shape (e.g. {'; '.join(bad[:3])})")
        raise CheckpointError(f"{name}: the VAE weights do not fit its configuration: "
                              f"{', '.join(detail)}. For a VAE of unusual shape give its "
                              "config.json as `config`.")
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v
                           for k, v in state.items()}, strict=True, assign=True)
    return model


def load_vae(path: Path | str, family: str = "auto", dtype: str = "auto",
             device: str = "auto", config: Path | str | None = None,
             models: ModelManager | None = None) -> VaeBundle:
    """Load (or take from the model manager) the VAE at `path` (module docstring)."""
    if family not in ("auto", *VAE_FAMILIES):
        raise CheckpointError(f"unknown VAE family {family!r}; use 'auto' or one of "
                              f"{', '.join(VAE_FAMILIES)}")
    models = manager() if models is None else models
    src = locate_vae(Path(path))
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    given: dict[str, Any] | None = None
    if config:
        if src.kind == "folder":
            raise CheckpointError(f"{src.path} is a VAE folder with its own config.json; a "
                                  "config is only for single files")
        given = read_vae_config_file(Path(config))
    if src.kind == "folder":
        own = read_json_object(src.config, VAE_FIELDS)
        fam = vae_family_of_config(own) if family == "auto" else family
    else:
        shapes, metadata = _header_info(src.path)
        if family != "auto":
            fam = family
        elif given is not None:
            fam = vae_family_of_config(given)
        else:
            fam = guess_vae_family(src.path, shapes, metadata)
    cfg_key = file_identity(Path(config)) if config else ""
    key = (file_identity(src.path), f"vae@{fam}@{cfg_key}", _dtype_name(dt), str(dev))

    def build():
        from diffusers import AutoencoderKL

        if src.kind == "folder":
            vae = AutoencoderKL.from_pretrained(
                str(src.path), torch_dtype=dt, use_safetensors=True, local_files_only=True,
                variant=_variant(src.path, "diffusion_pytorch_model"))
            return stage(vae, dev)
        state = _read_vae_state(src.path)
        cfg = dict(given) if given is not None else vae_config_from_shapes(
            {k: tuple(v.shape) for k, v in state.items()}, vae_config(fam))
        layout, prefix = vae_layout(state)
        if layout == "ldm":
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

            state = convert_ldm_vae_checkpoint(state, cfg)
        else:
            state = {k[len(prefix):]: v for k, v in state.items()}
        try:
            model = _empty(lambda: AutoencoderKL.from_config(cfg))
        except (ValueError, RuntimeError, TypeError) as exc:
            raise CheckpointError(
                f"{src.path.name}: Loom's {fam} VAE configuration does not fit the shapes of "
                f"its weights ({exc}); give the VAE's config.json as `config`") from exc
        return stage(_load_strict(model, state, src.path.name, dt), dev)

    handle = ModelHandle(models, key, build)
    # load now (errors and time belong to the loader node); the bundle keeps only the handle
    vae_cfg = handle.preload().config
    scaling = float(vae_cfg.scaling_factor) if family == "auto" else SCALING[fam]
    force_upcast = bool(getattr(vae_cfg, "force_upcast", fam == "sdxl"))
    return VaeBundle(handle, fam, scaling, dt, dev, str(src.path), force_upcast=force_upcast,
                     shift_factor=getattr(vae_cfg, "shift_factor", None))
