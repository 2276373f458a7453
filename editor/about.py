"""What Help > About shows: versions of Loom and of the libraries it runs on, and the device in
use. Read from package metadata (importlib.metadata), so torch is never imported by the GUI for
it; the device is resolved only once a run has loaded torch (on the worker thread)."""

from __future__ import annotations

import importlib.metadata
import platform
import re
import sys

from engine.paths import PROJECT_ROOT


def loom_version() -> str:
    try:
        text = (PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8")
        m = re.search(r'^\[project\][^\[]*?^version\s*=\s*"([^"]+)"', text, re.M | re.S)
        if m:
            return m.group(1)
    except OSError:
        pass
    try:
        return importlib.metadata.version("loom")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def device_in_use(setting: str = "auto") -> str:
    """The device runs use. "auto" is decided by torch, which the GUI does not import: until a
    run has loaded it (on the worker thread) this says so instead of guessing."""
    torch = sys.modules.get("torch")
    if setting not in ("auto", "", None):
        return setting
    if torch is None:
        return "auto (CUDA, then MPS, then the CPU; decided when the first run loads torch)"
    try:
        if torch.cuda.is_available():
            return f"cuda ({torch.cuda.get_device_name(0)})"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
    except Exception:  # noqa: BLE001 - a broken driver must not break the About box
        pass
    return "cpu"


def versions(device: str = "auto") -> list[tuple[str, str]]:
    from PySide6 import __version__ as pyside_version
    from PySide6.QtCore import qVersion

    return [("Loom", loom_version()),
            ("torch", package_version("torch")),
            ("diffusers", package_version("diffusers")),
            ("transformers", package_version("transformers")),
            ("Device", device_in_use(device)),
            ("Python", platform.python_version()),
            ("Qt", f"{qVersion()} (PySide6 {pyside_version})")]
