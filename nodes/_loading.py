"""What the model loader nodes (Load Checkpoint, Load VAE, Load ControlNet, the unCLIP and Karlo
loaders) share: the pre-run check of a `path` input (with an optional `config` input, or a
folder of expected subfolders), the run-time resolving of the path with the same errors, the
device and precision, and the run's model memory budget. Torch-free at import."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import NodeInputError
from engine.paths import not_found_message, resolve_path


def path_config_preflight(values: dict[str, Any], ctx: Any, kind: str, choose: str,
                          problem: Callable[[Path, Path | None], tuple[str, str] | None]):
    """Preflight of a loader's `path` (a library `kind`) and optional `config` inputs: None
    when the path is linked (not known yet), the `choose` message when it is empty, else what
    `problem(path, config)` finds (no weights read)."""
    path = values.get("path")
    if not isinstance(path, str):
        return None
    if not path:
        return [("path", choose)]
    config = values.get("config")
    config_path = ctx.resolve(config) if isinstance(config, str) and config else None
    found = problem(ctx.resolve(path, kind), config_path)
    return [found] if found is not None else None


def existing_model_path(value: str, options: dict[str, Any], kind: str, choose: str) -> Path:
    """The `path` input resolved (workflow folder, model library `kind`); NodeInputError with
    `choose` when it is empty, with where it was looked for when there is nothing there."""
    if not value:
        raise NodeInputError("path", choose)
    path = resolve_path(value, options, kind)
    if not path.exists():
        raise NodeInputError("path", not_found_message(value, options, kind))
    return path


def apply_model_budget(options: dict[str, Any]) -> None:
    """A run's `model_memory_gb` option, when given, becomes the model manager's budget; its
    `vram` option (auto|high|low|none), the process's GPU memory mode (nodes.lib.vram)."""
    budget = options.get("model_memory_gb")
    if budget is not None:
        from nodes.lib.model_manager import manager

        manager().set_budget(int(float(budget) * 2**30))
    mode = options.get("vram")
    if mode:
        from nodes.lib import vram

        vram.set_mode(str(mode))  # ValueError names the modes


def subfolder_preflight(values: dict[str, Any], ctx: Any,
                        layouts: tuple[tuple[str, ...], ...], what: str):
    """Before anything runs (no weights read): the `path` folder exists and has one of the
    expected `layouts` of subfolders; None when the path is linked (not known yet)."""
    path = values.get("path")
    if not isinstance(path, str):
        return None
    if not path:
        return [("path", f"choose {what}")]
    folder = ctx.resolve(path, "checkpoints")  # where run() looks: folder, model library
    if not folder.is_dir():
        return [("path", f"{folder} is not a folder; expected {what}")]
    for layout in layouts:
        if all((folder / s).is_dir() for s in layout):
            return None
    wanted = " or ".join("/, ".join(layout) + "/" for layout in layouts)
    return [("path", f"{folder} is not {what}: expected subfolders {wanted}")]


def device_and_dtype(ctx: Any, dtype: str):
    """The run's device and the torch dtype a loader's `dtype` choice means on it."""
    from nodes.lib.checkpoints import resolve_device, resolve_dtype

    device = resolve_device(ctx.device)
    return device, resolve_dtype(dtype, device)


def load_or_path_error(ctx: Any, load: Callable[[], Any]) -> Any:
    """Runs a loader under the run's model budget, turning a folder that does not fit (a
    loader's folder error, a missing or unreadable file) into an error on `path`."""
    from nodes.lib.checkpoints import LOAD_ERRORS
    from nodes.lib.unclip import UnclipFolderError

    apply_model_budget(ctx.options)
    try:
        return load()
    except (UnclipFolderError, OSError, *LOAD_ERRORS) as exc:
        raise NodeInputError("path", str(exc)) from exc
