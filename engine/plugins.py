"""Node plugins: node types from installed Python distributions and from the user's folder.

A node package is an installable distribution that declares its node modules under the
`loom.nodes` entry point group (as pytest plugins use `pytest11`):

    [project.entry-points."loom.nodes"]
    example = "loom_example_nodes.nodes"

The value names a module (every @node class defined in it is registered; a package's public
top-level modules too), or `module:attribute` for a list of node classes or modules. The user's
nodes folder (`user_nodes_dir()`) holds plain modules (`name.py`) or packages (`name/`), read
the same way. `load_registry()` builds the registry Loom starts with: the built-in `nodes`
first, then every plugin, then the user's folder, then the modules LOOM_EXTRA_NODES names.

What can go wrong is contained: a plugin that fails to import (or does not declare node classes)
is recorded in `registry.report.errors` and Loom starts without it; a node type whose id another
package already registered is refused (NodeTypeConflict names both), the plugin's other types
load. Nothing here runs because a workflow asks: workflows only *name* packages (their
`node_packages` section), which `Registry.why_missing` turns into a message. `safe=True`
(`main.py --safe`, LOOM_SAFE=1) loads the built-in nodes only.

Imports neither torch nor Qt (a plugin's own modules may, as Loom's node modules do: lazily).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import traceback
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.errors import LoomError
from engine.paths import user_data_dir
from engine.registry import (
    BUILTIN_PACKAGE,
    NodeTypeConflict,
    PackageInfo,
    PluginError,
    Registry,
    builtin_package,
    node_classes,
)

ENTRY_POINT_GROUP = "loom.nodes"
USER_MODULE_PREFIX = "loom_user_nodes"
"""User-folder modules are imported as `loom_user_nodes.<name>` (never clashing with a module
of the same name elsewhere on sys.path)."""
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def safe_mode() -> bool:
    """Whether LOOM_SAFE asks for the built-in nodes only (main.py --safe sets it)."""
    return os.environ.get("LOOM_SAFE", "").strip().lower() in ("1", "true", "yes", "on")


def user_nodes_dir() -> Path:
    """The user's nodes folder: $LOOM_USER_NODES, else `nodes` in the user's Loom data folder
    ($LOOM_DATA_DIR, else the platform's: ~/.local/share/Loom/Loom on Linux,
    ~/Library/Application Support/Loom/Loom on macOS, %APPDATA%\\Loom\\Loom on Windows -- the
    folder the editor keeps its own data in)."""
    env = os.environ.get("LOOM_USER_NODES")
    if env:
        return Path(env).expanduser()
    return user_data_dir() / "nodes"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _register_all(registry: Registry, items: Iterable[Any], info: PackageInfo) -> list[str]:
    """Register node classes (or the node classes of modules) from `items`: conflicts are
    recorded as errors of single types, the rest are registered. Returns the type ids."""
    found: list[str] = []
    classes: list[type] = []
    for item in items:
        if isinstance(item, types.ModuleType):
            classes.extend(node_classes(item))
        elif isinstance(item, type) and getattr(item, "__loom_spec__", None) is not None:
            classes.append(item)
        else:
            raise TypeError(f"{item!r} is neither a node class (@node) nor a module")
    for cls in classes:
        try:
            found.append(registry.register(cls, info).type_id)
        except NodeTypeConflict as exc:
            registry.report.errors.append(PluginError(info, str(exc), type_id=exc.type_id))
    return found


def _modules_of(module: types.ModuleType) -> list[types.ModuleType]:
    """A module, or a package with its public top-level modules (imported)."""
    out = [module]
    path = getattr(module, "__path__", None)
    if path is not None:
        import pkgutil

        for info in pkgutil.iter_modules(path):
            if not info.name.startswith("_") and not info.ispkg:
                out.append(importlib.import_module(f"{module.__name__}.{info.name}"))
    return out


def _load_target(target: Any) -> list[Any]:
    if isinstance(target, types.ModuleType):
        return _modules_of(target)
    if isinstance(target, (list, tuple)):
        out: list[Any] = []
        for item in target:
            out.extend(_modules_of(item) if isinstance(item, types.ModuleType) else [item])
        return out
    return [target]


def _load(registry: Registry, info: PackageInfo, loader: Any) -> None:
    """Run `loader()` (an import) and register what it gives; any failure becomes a
    PluginError and leaves the registry as it was for this package."""
    before = len(registry.report.errors)
    try:
        target = loader()
        found = _register_all(registry, _load_target(target), info)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a plugin must not stop Loom
        # a broken plugin may have registered some types before failing: keep none of them
        for type_id, pkg in list(registry._packages.items()):
            if pkg == info:
                registry._specs.pop(type_id, None)
                registry._packages.pop(type_id, None)
        del registry.report.errors[before:]
        registry.report.errors.append(PluginError(info, _one_line(exc), traceback.format_exc()))
        return
    if not found and len(registry.report.errors) == before:
        registry.report.errors.append(PluginError(info, "declares no node classes (@node)"))
    registry.report.packages.append((info, found))


def plugin_entry_points(path: list[str] | None = None
                        ) -> list[tuple[PackageInfo, importlib.metadata.EntryPoint]]:
    """The `loom.nodes` entry points of the distributions on `path` (default sys.path), with
    the package each comes from; a distribution found twice counts once (the first, as
    Python's own import would pick), sorted by distribution name."""
    seen: set[str] = set()
    out = []
    for dist in importlib.metadata.distributions(path=path if path is not None else sys.path):
        # entry_points.txt first: most distributions have none of ours, and reading their
        # METADATA (for the name) is what costs
        try:
            eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
        except Exception:  # noqa: BLE001 - a broken distribution is not ours to report
            continue
        if not eps:
            continue
        try:
            name = dist.metadata["Name"]
        except (KeyError, TypeError):
            continue
        if not name:
            continue
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        for ep in eps:
            info = PackageInfo(name, dist.version, "plugin", f"entry point {ep.name} = {ep.value}")
            out.append((info, ep))
    out.sort(key=lambda pair: (pair[0].name.lower(), pair[1].name))
    return out


def load_entry_points(registry: Registry, path: list[str] | None = None) -> None:
    for info, ep in plugin_entry_points(path):
        _load(registry, info, ep.load)


def user_modules(folder: Path) -> list[Path]:
    """The node modules in the user's folder: `name.py` files and `name/` packages (with an
    __init__.py), names starting with '_' or '.' left out, sorted."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    out = []
    for p in entries:
        if p.name.startswith(("_", ".")):
            continue
        if (p.is_file() and p.suffix == ".py") or (p.is_dir() and (p / "__init__.py").is_file()):
            out.append(p)
    return out


def _import_file(path: Path) -> types.ModuleType:
    stem = path.stem if path.is_file() else path.name
    if not _IDENT.fullmatch(stem):
        raise ImportError(f"{path.name!r} is not a Python module name (letters, digits, '_')")
    if USER_MODULE_PREFIX not in sys.modules:
        parent = types.ModuleType(USER_MODULE_PREFIX)
        parent.__path__ = []  # a namespace for the user's modules
        sys.modules[USER_MODULE_PREFIX] = parent
    name = f"{USER_MODULE_PREFIX}.{stem}"
    if path.is_dir():
        spec = importlib.util.spec_from_file_location(
            name, path / "__init__.py", submodule_search_locations=[str(path)])
    else:
        spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_user_folder(registry: Registry, folder: Path) -> None:
    for path in user_modules(folder):
        stem = path.stem if path.is_file() else path.name
        info = PackageInfo(f"user:{stem}", None, "user", str(path))
        try:
            module = _import_file(path)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a user module must not stop Loom
            registry.report.errors.append(PluginError(info, _one_line(exc),
                                                      traceback.format_exc()))
            continue
        version = getattr(module, "__version__", None)
        if isinstance(version, str) and version:
            info = PackageInfo(info.name, version, "user", info.source)
        _load(registry, info, lambda module=module: module)


def load_extra_modules(registry: Registry, names: Iterable[str]) -> None:
    """Modules named by LOOM_EXTRA_NODES (developers' and tests' nodes): an explicit request,
    so one that cannot be imported stops start-up with a LoomError, as before plugins."""
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise LoomError(f"LOOM_EXTRA_NODES: cannot import node module '{name}': "
                            f"{exc}") from None
        info = PackageInfo(name, getattr(module, "__version__", None) or None, "module", name)
        found = _register_all(registry, [module], info)
        registry.report.packages.append((info, found))


def extra_module_names() -> list[str]:
    return [n.strip() for n in os.environ.get("LOOM_EXTRA_NODES", "").split(",") if n.strip()]


def load_registry(safe: bool | None = None, entry_point_path: list[str] | None = None,
                  user_dir: Path | None = None,
                  extra_modules: Iterable[str] | None = None) -> Registry:
    """The registry Loom starts with: built-in nodes, then (unless `safe`, default LOOM_SAFE)
    the plugins' entry points, the user's nodes folder and LOOM_EXTRA_NODES. Failures of
    plugins and user modules are in `registry.report.errors`; a LOOM_EXTRA_NODES module that
    cannot be imported raises LoomError."""
    registry = Registry().discover(BUILTIN_PACKAGE)
    registry.report.packages.append((builtin_package(), [s.type_id for s in registry]))
    safe = safe_mode() if safe is None else safe
    registry.report.safe = safe
    folder = user_dir if user_dir is not None else user_nodes_dir()
    registry.report.user_dir = str(folder)
    if safe:
        return registry
    load_entry_points(registry, entry_point_path)
    load_user_folder(registry, folder)
    load_extra_modules(registry, extra_modules if extra_modules is not None
                       else extra_module_names())
    return registry


def describe_report(registry: Registry) -> list[str]:
    """Lines for the command line: each package with its node count, then each error."""
    report = registry.report
    lines = []
    for info, found in report.packages:
        kind = {"builtin": "built in", "plugin": "plugin", "user": "user folder",
                "module": "LOOM_EXTRA_NODES"}.get(info.kind, info.kind)
        lines.append(f"{info.label()} ({kind}): {len(found)} node type"
                     f"{'s' if len(found) != 1 else ''}")
    if report.safe:
        lines.append("safe mode (--safe): plugins, the user's nodes folder and "
                     "LOOM_EXTRA_NODES were not loaded")
    return lines
