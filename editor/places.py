"""Where the editor reads and writes: Loom's shipped files are read-only to it; the user's files
go to the user's folders (from QStandardPaths, so they are right on Windows, macOS and Linux).

- `shipped_root()`: `resources/` of the install (bundled workflows, models, configs). A bundled
  workflow opens as an untitled copy; saving one asks where, and nothing is ever written there.
- `data_dir()`: the user's Loom data folder (masks painted for unsaved or bundled workflows,
  recovery files). `$LOOM_DATA_DIR` overrides it (tests, portable installs).
- `workflows_dir()`: where Save As suggests saving (`~/Documents/Loom` or the platform's
  equivalent; `$LOOM_WORKFLOWS_DIR`, or `$LOOM_DATA_DIR/workflows` when that is set).
- `default_output_dir()`: where a run's images go (`$LOOM_OUTPUT_DIR`, else the user's
  pictures folder, `Loom` inside it).
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QStandardPaths

from engine.errors import LoomError
from engine.paths import PROJECT_ROOT

APP_FOLDER = "Loom"


class ShippedFileError(LoomError):
    """A write aimed at a file that ships with Loom (it stays as installed)."""


def shipped_root() -> Path:
    return (PROJECT_ROOT / "resources").resolve()


def is_shipped(path: str | os.PathLike | None) -> bool:
    """Whether `path` is inside Loom's shipped `resources/` (after resolving links)."""
    if path is None:
        return False
    try:
        Path(path).resolve().relative_to(shipped_root())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def refuse_shipped(path: str | os.PathLike, what: str = "this file") -> None:
    """Raise ShippedFileError when `path` is one of Loom's shipped files."""
    if is_shipped(path):
        raise ShippedFileError(f"{Path(path).name} ships with Loom ({shipped_root()}): "
                               f"{what} is saved elsewhere, Loom's own files stay as installed")


def _standard(location: QStandardPaths.StandardLocation) -> Path | None:
    base = QStandardPaths.writableLocation(location)
    return Path(base) if base else None


def data_dir() -> Path:
    env = os.environ.get("LOOM_DATA_DIR")
    if env:
        return Path(env)
    base = _standard(QStandardPaths.StandardLocation.AppDataLocation)
    if base is None:
        return Path.home() / ".loom"
    # AppDataLocation already ends in the organisation/application names when they are set
    return base if base.name == APP_FOLDER else base / APP_FOLDER


def workflows_dir() -> Path:
    env = os.environ.get("LOOM_WORKFLOWS_DIR")
    if env:
        return Path(env)
    if os.environ.get("LOOM_DATA_DIR"):
        return data_dir() / "workflows"
    docs = _standard(QStandardPaths.StandardLocation.DocumentsLocation)
    return docs / APP_FOLDER if docs is not None else data_dir() / "workflows"


def masks_dir() -> Path:
    return data_dir() / "masks"


def default_output_dir() -> Path:
    env = os.environ.get("LOOM_OUTPUT_DIR")
    if env:
        return Path(env)
    if os.environ.get("LOOM_DATA_DIR"):
        return data_dir() / "outputs"
    pics = _standard(QStandardPaths.StandardLocation.PicturesLocation)
    return pics / APP_FOLDER if pics is not None else data_dir() / "outputs"


def ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
