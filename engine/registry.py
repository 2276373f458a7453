"""The registry of node types: discovers node modules under a package (by default `nodes`).

Discovery imports each top-level module of the package; node modules keep heavy imports (torch,
diffusers) inside their functions, so listing node types stays fast and loads no torch.

Every node type registered with a package (`PackageInfo`: Loom's built-in `nodes`, an installed
plugin distribution, a module of the user's nodes folder) knows where it came from
(`package_of`), and a type of one package never replaces a type of another (NodeTypeConflict
names both). engine.plugins loads the plugins into a registry and fills its `report` (the
packages found, and those that failed to load).
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from engine.errors import LoomError
from engine.node import NodeSpec, spec_of
from engine.types import TYPES, TypeRegistry

BUILTIN_PACKAGE = "nodes"
"""The Python package of Loom's own node modules."""


@dataclass(frozen=True)
class PackageInfo:
    """Where node types come from. kind: "builtin" (Loom's `nodes`), "plugin" (an installed
    distribution's `loom.nodes` entry point), "user" (a module in the user's nodes folder) or
    "module" (a module named by LOOM_EXTRA_NODES). `source` says where exactly (the entry
    point, the file, the module)."""

    name: str
    version: str | None
    kind: str
    source: str = ""

    def label(self) -> str:
        return f"{self.name} {self.version}" if self.version else self.name

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "version": self.version, "kind": self.kind}
        if self.source:
            d["source"] = self.source
        return d


@dataclass(frozen=True)
class PluginError:
    """A plugin (or one of its node types) that could not be loaded; Loom runs without it."""

    package: PackageInfo
    message: str
    traceback: str = ""
    type_id: str | None = None
    """Set when only this node type was refused (a conflict), not the whole package."""

    def __str__(self) -> str:
        where = f" ({self.package.source})" if self.package.source else ""
        return f"{self.package.label()}{where}: {self.message}"


@dataclass
class LoadReport:
    """What plugin loading found: packages with their node types, and what failed."""

    packages: list[tuple[PackageInfo, list[str]]] = field(default_factory=list)
    errors: list[PluginError] = field(default_factory=list)
    safe: bool = False
    """Started with --safe: only the built-in nodes were loaded."""
    user_dir: str | None = None

    def package(self, name: str) -> PackageInfo | None:
        return next((p for p, _ in self.packages if p.name == name), None)

    def error_of(self, name: str) -> PluginError | None:
        return next((e for e in self.errors if e.package.name == name and e.type_id is None),
                    None)


class NodeTypeConflict(LoomError, ValueError):
    """A node type id that another package already registered: the second one is refused."""

    def __init__(self, type_id: str, kept: PackageInfo | None, kept_cls: type,
                 refused: PackageInfo | None, refused_cls: type):
        self.type_id = type_id
        self.kept, self.refused = kept, refused

        def who(info: PackageInfo | None, cls: type) -> str:
            what = f"{cls.__module__}.{cls.__qualname__}"
            if info is None:
                return what
            kind = "built in" if info.kind == "builtin" else info.kind
            return f"{info.label()} ({kind}, {what})"

        super().__init__(f"node type {type_id!r} of {who(refused, refused_cls)} is already "
                         f"declared by {who(kept, kept_cls)}; the first one stays and "
                         f"{refused.name if refused else 'the second'}'s is not loaded (a "
                         "plugin cannot replace a node type of Loom or of another plugin)")


class Registry:
    def __init__(self, types: TypeRegistry = TYPES):
        self.types = types
        self._specs: dict[str, NodeSpec] = {}
        self._packages: dict[str, PackageInfo] = {}
        self.report = LoadReport()

    def register(self, cls: type, package: PackageInfo | None = None) -> NodeSpec:
        """Register a node class, from `package` (None: unspecified, as in tests). A type id
        already registered by another class raises: NodeTypeConflict when either side names its
        package (a plugin never replaces another package's type), ValueError otherwise."""
        spec = spec_of(cls)
        old = self._specs.get(spec.type_id)
        if old is not None and old.cls is not cls:
            old_package = self._packages.get(spec.type_id)
            if (package is not None or old_package is not None) and package != old_package:
                raise NodeTypeConflict(spec.type_id, old_package, old.cls, package, cls)
            if old.cls.__qualname__ != cls.__qualname__:
                raise ValueError(f"node type {spec.type_id!r} is declared twice")
        self._specs[spec.type_id] = spec
        if package is not None:
            self._packages[spec.type_id] = package
        return spec

    def register_module(self, module: ModuleType,
                        package: PackageInfo | None = None) -> list[NodeSpec]:
        found = []
        for value in node_classes(module):
            found.append(self.register(value, package))
        return found

    def discover(self, package: str = BUILTIN_PACKAGE,
                 info: PackageInfo | None = None) -> Registry:
        """Import every public module of `package` and register the node classes they define
        (as coming from `info`; Loom's own `nodes` as the built-in package by default)."""
        if info is None and package == BUILTIN_PACKAGE:
            info = builtin_package()
        pkg = importlib.import_module(package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            if mod.name.startswith("_") or mod.ispkg:
                continue
            self.register_module(importlib.import_module(f"{package}.{mod.name}"), info)
        return self

    def package_of(self, type_id: str) -> PackageInfo | None:
        """The package a registered node type came from (None when registered without one)."""
        return self._packages.get(type_id)

    def why_missing(self, type_id: str, recorded: Any = None) -> str:
        """Why `type_id` is not registered, for a message, using what a workflow `recorded`
        about its package ({"package", "version", "kind"}) and what plugin loading found.
        Nothing is installed or imported: this only names the package."""
        if type_id.startswith(PLACEHOLDER_PREFIX):
            return (f"the ComfyUI node type {type_id[len(PLACEHOLDER_PREFIX):]!r} has no Loom "
                    "equivalent; imported as a placeholder that keeps its values: replace it "
                    "with Loom nodes")
        name = recorded.get("package") if isinstance(recorded, dict) else None
        if not isinstance(name, str) or not name:
            why = "a node plugin that is not installed, or a misspelt type"
            return why + ("; Loom runs in safe mode (--safe), without plugins"
                          if self.report.safe else "")
        version = recorded.get("version")
        version = version if isinstance(version, str) and version else None
        saved = f"{name} {version}" if version else name
        if self.report.safe:
            return f"from package {saved}; Loom runs in safe mode (--safe), without plugins"
        error = self.report.error_of(name)
        if error is not None:
            return f"from package {saved}, which failed to load: {error.message}"
        found = self.report.package(name)
        if found is not None:
            return (f"from package {saved}; the installed {found.label()} does not provide it"
                    if found.version != version else
                    f"from package {saved}, which is loaded but does not provide it")
        if recorded.get("kind") == "user":
            return (f"from {saved} in the user's nodes folder, which is not there "
                    f"({self.report.user_dir or 'no user folder'})")
        pin = f"=={version}" if version else ""
        return (f"from package {saved}, which is not installed; Loom never installs packages "
                f"itself: if you trust it, `pip install \"{name}{pin}\"` and restart Loom")

    def get(self, type_id: str) -> NodeSpec | None:
        return self._specs.get(type_id)

    def __contains__(self, type_id: str) -> bool:
        return type_id in self._specs

    def __iter__(self) -> Iterable[NodeSpec]:
        return iter(sorted(self._specs.values(), key=lambda s: (s.category, s.title)))

    def __len__(self) -> int:
        return len(self._specs)

    def catalogue(self) -> list[dict]:
        """The node catalogue as plain data (for `main.py nodes --json` and the editor), each
        node type with its package ({"name", "version", "kind"}) where known."""
        out = []
        for spec in self:
            d = spec.to_json()
            info = self._packages.get(spec.type_id)
            if info is not None:
                d["package"] = {"name": info.name, "version": info.version, "kind": info.kind}
            out.append(d)
        return out


PLACEHOLDER_PREFIX = "comfyui."
"""Node types of imported ComfyUI nodes that have no Loom equivalent (engine.comfy): kept in the
graph with their values, never registered (a registered type id is lower case)."""


def node_classes(module: ModuleType) -> list[type]:
    """The node classes (@node) defined in `module` itself, in definition order."""
    return [v for v in vars(module).values()
            if isinstance(v, type) and getattr(v, "__loom_spec__", None) is not None
            and v.__module__ == module.__name__]


def loom_version() -> str | None:
    """Loom's version, from its pyproject.toml (None when it cannot be read)."""
    global _version
    if _version is None:
        from engine.paths import PROJECT_ROOT

        try:
            import tomllib

            with open(PROJECT_ROOT / "pyproject.toml", "rb") as f:
                _version = str(tomllib.load(f)["project"]["version"])
        except (OSError, KeyError, ValueError, ImportError):
            _version = ""
    return _version or None


_version: str | None = None


def builtin_package() -> PackageInfo:
    return PackageInfo("loom", loom_version(), "builtin", BUILTIN_PACKAGE)


_default: Registry | None = None
_lock = threading.Lock()


def default_registry() -> Registry:
    """The registry of Loom's own node types (discovered once per process)."""
    global _default
    with _lock:
        if _default is None:
            _default = Registry().discover("nodes")
        return _default
