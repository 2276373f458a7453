"""The model library: the folders where people keep their model files, as ComfyUI and
AUTOMATIC1111 users do, so that a path input can name a file by its name in them
(`Input(path=True, library="checkpoints")`: "sd15/dreamshaper.safetensors").

Kinds (ComfyUI's folder names): checkpoints, loras, embeddings, controlnet, vae, upscale_models.

Where the folders come from, in this order (the first folder holding a name wins):
1. The models folder: $LOOM_MODELS_DIR (several: os.pathsep-separated), else "models_dir" in
   the settings file, else `models/` in Loom's data folder. A folder is read by its layout: a
   models folder with the kinds as subfolders (Loom's, or ComfyUI's `models/`), a ComfyUI
   install (`models/checkpoints`, ... and its `extra_model_paths.yaml`) or an AUTOMATIC1111
   install (`models/Stable-diffusion`, `models/Lora`, `embeddings`, `models/ControlNet`,
   `models/VAE`, `models/ESRGAN`).
2. The installs the settings name: "comfyui": [folders], "a1111": [folders].
3. ComfyUI `extra_model_paths.yaml` files: $LOOM_EXTRA_MODEL_PATHS (os.pathsep-separated),
   then "extra_model_paths" in the settings.

Settings: `settings.json` in Loom's data folder ($LOOM_DATA_DIR, else the folder Qt gives the
editor: ~/.local/share/Loom/Loom on Linux ($XDG_DATA_HOME), ~/Library/Application
Support/Loom/Loom on macOS, %APPDATA%/Loom/Loom on Windows), e.g.
    {"models_dir": "/data/models", "comfyui": ["/opt/ComfyUI"], "a1111": [],
     "extra_model_paths": ["/opt/ComfyUI/extra_model_paths.yaml"]}

Portability: when a workflow is saved, each path input with a library kind whose file exists
gets a record in its node's `ui` (`ui.library.<input>`: the value, the file's name in its
library folder, its size and a content hash); when a workflow is opened and such a path is not
there, `relink` looks the file up by that name in this machine's library, then by content
(only files of the recorded size are hashed), and rewrites the value, returning a Problem
(code "relinked") that names the node and input.

Pure Python (no torch, no Qt). The family shown next to a file in listings comes from a
describer the node package registers (`register_describer`), which reads file headers only.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import LoomError, Problem
from engine.paths import DATA_DIR_ENV, user_data_dir

KINDS = ("checkpoints", "loras", "embeddings", "controlnet", "vae", "upscale_models")
ENV_MODELS = "LOOM_MODELS_DIR"
ENV_EXTRA = "LOOM_EXTRA_MODEL_PATHS"
ENV_DATA = DATA_DIR_ENV
SETTINGS_FILE = "settings.json"
RECORD_UI = "library"
"""The key of a node's `ui` holding the records of its library files, by input name."""

SUFFIXES: dict[str, tuple[str, ...]] = {
    "checkpoints": (".safetensors", ".ckpt", ".pt", ".pth", ".bin"),
    "loras": (".safetensors", ".pt", ".ckpt", ".bin", ".pth"),
    "embeddings": (".safetensors", ".pt", ".bin", ".pth", ".ckpt"),
    "controlnet": (".safetensors", ".pth", ".ckpt", ".bin", ".pt"),
    "vae": (".safetensors", ".pt", ".ckpt", ".bin", ".pth"),
    "upscale_models": (".pth", ".safetensors", ".pt", ".bin", ".ckpt"),
}
FOLDER_MARKERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("model_index.json",),
    "controlnet": ("config.json",),
    "vae": ("config.json",),
}
"""A folder holding one of these files is one model (a diffusers folder), listed as an entry."""

A1111_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("models/Stable-diffusion",),
    "loras": ("models/Lora", "models/LyCORIS"),
    "embeddings": ("embeddings",),
    "controlnet": ("models/ControlNet",),
    "vae": ("models/VAE",),
    "upscale_models": ("models/ESRGAN", "models/RealESRGAN"),
}
COMFY_KEYS: dict[str, str] = {k: k for k in KINDS}
"""extra_model_paths.yaml keys Loom reads, and the kind each fills (others are ignored)."""

MAX_ENTRIES = 20000
"""Files and folders one listing of a kind reads, so a folder set to "/" stays quick."""
HASH_SAMPLE = 64 * 1024
HASH_SAMPLES = 16
HASH_WHOLE = 4 * 1024 * 1024
MAX_NAMES_SHOWN = 6


class LibraryError(LoomError):
    """A settings file or extra_model_paths.yaml that cannot be read."""


# ---- where Loom keeps the user's files ------------------------------------------------------


def data_dir() -> Path:
    """Loom's per-user data folder (engine.paths.user_data_dir: $LOOM_DATA_DIR, else the folder
    Qt's AppDataLocation gives the editor)."""
    return user_data_dir()


def settings_path() -> Path:
    return data_dir() / SETTINGS_FILE


def read_settings(path: Path | None = None) -> dict[str, Any]:
    """The settings file as a dict ({} when there is none). LibraryError if it is malformed."""
    path = path or settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise LibraryError(f"cannot read the settings file {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise LibraryError(f"the settings file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise LibraryError(f"the settings file {path} must hold a JSON object")
    return data


def write_settings(updates: dict[str, Any], path: Path | None = None) -> Path:
    """Merge `updates` into the settings file (atomically; a None value removes the key)."""
    from engine.files import write_text_atomic

    path = path or settings_path()
    data = read_settings(path)
    for k, v in updates.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    _CACHE.clear()
    return path


def _paths(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v]
    return []


def _expand(text: str) -> str:
    return os.path.expandvars(os.path.expanduser(text.strip()))


# ---- ComfyUI's extra_model_paths.yaml -------------------------------------------------------


def read_extra_model_paths(path: str | os.PathLike) -> list[tuple[str, Path, str]]:
    """(kind, folder, section) for each folder a ComfyUI `extra_model_paths.yaml` names, in
    file order. Its format: top-level sections, each with an optional `base_path` (relative to
    the file's folder when not absolute) and per-kind keys whose values are folders relative to
    it, several on separate lines (a YAML block `|`). Keys for kinds Loom does not use
    (clip, unet, hypernetworks, ...) and `is_default` are ignored."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LibraryError(f"cannot read {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LibraryError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return []
    if not isinstance(data, dict):
        raise LibraryError(f"{path}: expected sections (name: {{base_path: ..., checkpoints: "
                           "...}}), got a " + type(data).__name__)
    out: list[tuple[str, Path, str]] = []
    for section, conf in data.items():
        if not isinstance(conf, dict):
            continue
        base_text = conf.get("base_path")
        base = path.parent
        if isinstance(base_text, str) and base_text.strip():
            b = Path(_expand(base_text))
            base = b if b.is_absolute() else path.parent / b
        for key, value in conf.items():
            kind = COMFY_KEYS.get(str(key))
            if kind is None or not isinstance(value, str):
                continue
            for line in value.splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                folder = Path(_expand(line))
                out.append((kind, folder if folder.is_absolute() else base / folder,
                            str(section)))
    return out


# ---- the library ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One model in the library: a file, or a diffusers folder."""

    kind: str
    name: str  # relative to its library folder, "/"-separated: what a path input holds
    path: Path
    folder: Path  # the library folder it is in
    is_dir: bool
    size: int
    mtime_ns: int

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "path": str(self.path),
                "folder": str(self.folder), "is_dir": self.is_dir, "size": self.size}


@dataclass
class Library:
    """The library folders of each kind, in lookup order, and where each came from."""

    roots: dict[str, list[tuple[Path, str]]] = field(
        default_factory=lambda: {k: [] for k in KINDS})
    warnings: list[str] = field(default_factory=list)

    def add(self, kind: str, folder: Path, source: str) -> None:
        folder = Path(folder)
        if all(f != folder for f, _ in self.roots[kind]):
            self.roots[kind].append((folder, source))

    def folders(self, kind: str) -> list[Path]:
        _check_kind(kind)
        return [f for f, _ in self.roots[kind]]

    def entries(self, kind: str) -> list[Entry]:
        """The models of `kind` in its folders (subfolders too), sorted by name; a name in an
        earlier folder hides the same name in a later one."""
        _check_kind(kind)
        out: dict[str, Entry] = {}
        budget = [MAX_ENTRIES]
        for folder in self.folders(kind):
            for e in _walk(kind, folder, budget):
                out.setdefault(e.name, e)
        return sorted(out.values(), key=lambda e: (e.name.lower(), e.name))

    def find(self, kind: str, name: str) -> Path | None:
        """The file or folder `name` (relative to a library folder) names, or None."""
        for c in self.candidates(kind, name):
            try:
                if c.exists():
                    return c
            except (OSError, ValueError):
                continue
        return None

    def candidates(self, kind: str, name: str) -> list[Path]:
        """Where `name` would be in each folder of `kind` (backslashes read as separators
        too, for names written on Windows). Absolute names and names leaving the folder
        ("..") have none."""
        names = [name]
        if "\\" in name:
            names.append(name.replace("\\", "/"))
        out = []
        for n in names:
            p = Path(os.path.expanduser(n))
            if p.is_absolute() or ".." in p.parts or not p.parts:
                continue
            out += [f / p for f in self.folders(kind)]
        return out

    def name_of(self, path: Path, kind: str) -> tuple[str, Path] | None:
        """(name, library folder) of `path` when it is inside a folder of `kind` (as given,
        or with links resolved)."""
        p = Path(path)
        try:
            real: Path | None = Path(os.path.realpath(p))
        except (OSError, ValueError):
            real = None
        for folder in self.folders(kind):
            for cand, root in ((p, folder), (real, Path(os.path.realpath(folder)))):
                if cand is None:
                    continue
                try:
                    rel = cand.relative_to(root)
                except ValueError:
                    continue
                if rel.parts and ".." not in rel.parts:
                    return rel.as_posix(), folder
        return None

    def locate(self, kind: str, names: Iterable[str], size: int | None = None,
               digest: str | None = None) -> tuple[Entry | Path, str] | None:
        """Find a file that moved: by name (each of `names` relative to the folders, then
        the same file name anywhere in them: one match, or the one of `size` / `digest`),
        then by content (`digest`, hashing only the files of `size`). Returns (what was
        found, how: "same name" / "same file name" / "same content"), or None."""
        names = [n for n in names if isinstance(n, str) and n]
        for n in names:
            p = self.find(kind, n)
            if p is not None:
                return p, "same name"
        entries = None
        for n in names:
            base = n.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
            if not base:
                continue
            entries = self.entries(kind) if entries is None else entries
            same = [e for e in entries if e.path.name == base]
            if len(same) > 1 and size is not None:
                same = [e for e in same if e.size == size] or same
            if len(same) > 1 and digest:
                same = [e for e in same if content_hash(e.path) == digest] or same
            if same:
                return same[0], "same file name"
        if digest and size is not None:
            entries = self.entries(kind) if entries is None else entries
            for e in entries:
                if e.size == size and content_hash(e.path) == digest:
                    return e, "same content"
        return None


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")


def _walk(kind: str, folder: Path, budget: list[int]) -> Iterable[Entry]:
    """The models of `kind` under `folder` (hidden names skipped, symlinked folders followed
    once), reading at most budget[0] entries in all."""
    suffixes = SUFFIXES[kind]
    markers = FOLDER_MARKERS.get(kind, ())
    seen: set[str] = set()
    stack = [(folder, "")]
    while stack and budget[0] > 0:
        where, prefix = stack.pop()
        try:
            real = os.path.realpath(where)
            if real in seen:
                continue
            seen.add(real)
            with os.scandir(where) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subs = []
        for item in items:
            budget[0] -= 1
            if budget[0] < 0:
                return
            if item.name.startswith("."):
                continue
            try:
                is_dir = item.is_dir()
                if is_dir:
                    if markers and any(os.path.isfile(os.path.join(item.path, m))
                                       for m in markers):
                        st = item.stat()
                        yield Entry(kind, prefix + item.name, Path(item.path), folder, True,
                                    _folder_size(item.path), st.st_mtime_ns)
                    else:
                        subs.append((Path(item.path), prefix + item.name + "/"))
                elif item.name.lower().endswith(suffixes):
                    st = item.stat()
                    yield Entry(kind, prefix + item.name, Path(item.path), folder, False,
                                st.st_size, st.st_mtime_ns)
            except OSError:
                continue
        stack.extend(reversed(subs))


def _folder_files(folder: str | os.PathLike, limit: int = 512) -> list[tuple[str, int]]:
    """(relative name, size) of the files of a model folder and of its subfolders (one level),
    at most `limit`, sorted: what a diffusers folder's identity and size are made of."""
    out: list[tuple[str, int]] = []
    todo = [(str(folder), "")]
    while todo and len(out) < limit:
        where, prefix = todo.pop(0)
        try:
            with os.scandir(where) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for item in items:
            if item.name.startswith(".") or len(out) >= limit:
                continue
            try:
                if item.is_dir():
                    if not prefix:
                        todo.append((item.path, item.name + "/"))
                else:
                    out.append((prefix + item.name, item.stat().st_size))
            except OSError:
                continue
    return sorted(out)


def _folder_size(folder: str | os.PathLike) -> int:
    return sum(size for _, size in _folder_files(folder))


# ---- building the library from the settings ------------------------------------------------


def _layout(folder: Path) -> tuple[str, Path]:
    """How a configured folder is laid out: ("a1111", install root), ("comfyui", install
    root) or ("models", folder) (the kinds as subfolders)."""
    try:
        if (folder / "models" / "Stable-diffusion").is_dir():
            return "a1111", folder
        if (folder / "Stable-diffusion").is_dir() and folder.name == "models":
            return "a1111", folder.parent
        if (folder / "models" / "checkpoints").is_dir() or \
                (folder / "extra_model_paths.yaml").is_file():
            return "comfyui", folder
    except OSError:
        pass
    return "models", folder


def _add_install(lib: Library, layout: str, root: Path, source: str) -> None:
    if layout == "a1111":
        for kind, subs in A1111_FOLDERS.items():
            for sub in subs:
                lib.add(kind, root / sub, f"AUTOMATIC1111 install ({source})")
    elif layout == "comfyui":
        for kind in KINDS:
            lib.add(kind, root / "models" / kind, f"ComfyUI install ({source})")
        yaml_file = root / "extra_model_paths.yaml"
        if yaml_file.is_file():
            _add_yaml(lib, yaml_file)
    else:
        for kind in KINDS:
            lib.add(kind, root / kind, f"models folder ({source})")


def _add_yaml(lib: Library, path: Path) -> None:
    try:
        for kind, folder, section in read_extra_model_paths(path):
            lib.add(kind, folder, f"{path} [{section}]")
    except LibraryError as exc:
        lib.warnings.append(str(exc))


def build_library(settings: dict[str, Any] | None = None,
                  environ: dict[str, str] | None = None) -> Library:
    """The library as the environment and the settings describe it (module docstring)."""
    env = os.environ if environ is None else environ
    lib = Library()
    if settings is None:
        try:
            settings = read_settings()
        except LibraryError as exc:
            lib.warnings.append(str(exc))
            settings = {}
    if env.get(ENV_MODELS):
        models = [(p, ENV_MODELS) for p in env[ENV_MODELS].split(os.pathsep) if p]
    elif _paths(settings.get("models_dir")):
        models = [(p, "settings models_dir") for p in _paths(settings.get("models_dir"))]
    else:
        models = [(str(data_dir() / "models"), "default")]
    for text, source in models:
        layout, root = _layout(Path(_expand(text)))
        _add_install(lib, layout, root, source)
    for key, layout in (("comfyui", "comfyui"), ("a1111", "a1111")):
        for text in _paths(settings.get(key)):
            _add_install(lib, layout, Path(_expand(text)), f"settings {key}")
    yamls = [p for p in env.get(ENV_EXTRA, "").split(os.pathsep) if p]
    yamls += _paths(settings.get("extra_model_paths"))
    for text in yamls:
        _add_yaml(lib, Path(_expand(text)))
    return lib


_CACHE: dict[Any, Library] = {}
_LOCK = threading.Lock()


def _stat_key(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_mtime_ns, st.st_size


def current_library() -> Library:
    """The library now (rebuilt when the environment, the settings file or a named
    extra_model_paths.yaml changes; cheap otherwise)."""
    env = tuple(os.environ.get(k, "") for k in (ENV_MODELS, ENV_EXTRA, ENV_DATA))
    sp = settings_path()
    key = (env, str(sp), _stat_key(sp), sys.platform,
           tuple(_stat_key(p) for p in env[1].split(os.pathsep) if p))
    with _LOCK:
        lib = _CACHE.get(key)
        if lib is None:
            lib = build_library()
            _CACHE.clear()
            _CACHE[key] = lib
        return lib


def library_candidates(kind: str, name: str) -> list[Path]:
    """Where the library folders of `kind` would hold `name` (for engine.paths)."""
    try:
        return current_library().candidates(kind, name)
    except (OSError, ValueError, LoomError):
        return []


# ---- content hashes --------------------------------------------------------------------------

_HASHES: dict[tuple[str, Any, int], str] = {}
_HASH_LOCK = threading.Lock()


def content_hash(path: str | os.PathLike) -> str:
    """A content hash that stays the same when a model is copied to another machine, and is
    cheap for multi-GB files: a file's size, its safetensors header (every tensor's name,
    dtype, shape and place, and the metadata) and 16 samples of 64 KiB spread over the file,
    whole for files up to 4 MiB ("sample1:"); a folder's file names and sizes and its JSON
    files' contents ("dir1:"). Two fine-tunes of one architecture share a header but differ
    in the sampled weights. Cached by (real path, size, mtime); a folder by its files'."""
    real = os.path.realpath(path)
    st = os.stat(real)
    import errno
    import stat

    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        # /dev/zero or a FIFO: reading would never end (or block); never a model file
        raise OSError(errno.EINVAL, "not a regular file or a folder", real)
    if os.path.isdir(real):  # a folder's own mtime misses a file changed inside it
        from engine.paths import file_identity

        key: tuple[str, Any, int] = (real, file_identity(Path(real)), 0)
    else:
        key = (real, st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        found = _HASHES.get(key)
    if found is not None:
        return found
    h = hashlib.sha256()
    if os.path.isdir(real):
        h.update(b"loom-dir-1\n")
        for rel, size in _folder_files(real):
            h.update(f"{rel}|{size}\n".encode("utf-8", "surrogateescape"))
            if rel.endswith(".json") and size <= 1024 * 1024:
                with open(os.path.join(real, rel), "rb") as f:
                    h.update(f.read())
        digest = "dir1:" + h.hexdigest()
    else:
        size = st.st_size
        h.update(f"loom-file-1|{size}\n".encode())
        with open(real, "rb") as f:
            if size <= HASH_WHOLE:
                h.update(f.read())
            else:
                head = f.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else 0
                if real.lower().endswith(".safetensors") and 0 < n <= min(size - 8,
                                                                           100_000_000):
                    h.update(head + f.read(n))
                for i in range(HASH_SAMPLES):
                    f.seek(i * (size - HASH_SAMPLE) // (HASH_SAMPLES - 1))
                    h.update(f.read(HASH_SAMPLE))
        digest = "sample1:" + h.hexdigest()
    with _HASH_LOCK:
        _HASHES[key] = digest
    return digest


# ---- what a file is (family), for listings -------------------------------------------------

_DESCRIBER: list[str | Callable[[str, Path], dict[str, str]]] = []
_DESCRIPTIONS: dict[tuple[str, str, int, int], dict[str, str]] = {}


def register_describer(fn: str | Callable[[str, Path], dict[str, str]]) -> None:
    """Tell the library how to describe a model file: `fn(kind, path)` returns {"family":
    name, "title": text} from the file's header or config only (no weights, no torch), or
    "package.module:function" imported on first use. The node package registers one."""
    _DESCRIBER[:] = [fn]


def describe(entry: Entry) -> dict[str, str]:
    """{"family", "title"} of a library entry ("" when unknown; "error" when unreadable),
    cached by (path, size, mtime)."""
    key = (entry.kind, str(entry.path), entry.size, entry.mtime_ns)
    with _HASH_LOCK:
        found = _DESCRIPTIONS.get(key)
    if found is not None:
        return found
    info: dict[str, str] = {"family": "", "title": ""}
    if _DESCRIBER:
        fn = _DESCRIBER[0]
        try:
            if isinstance(fn, str):
                module, _, name = fn.partition(":")
                fn = getattr(importlib.import_module(module), name)
                _DESCRIBER[:] = [fn]
            got = fn(entry.kind, entry.path)
            info = {"family": str(got.get("family", "")), "title": str(got.get("title", ""))}
            if got.get("error"):
                info["error"] = str(got["error"])
        except Exception as exc:  # noqa: BLE001 - a listing never fails on one odd file
            info["error"] = f"{type(exc).__name__}: {exc}"
    with _HASH_LOCK:
        _DESCRIPTIONS[key] = info
    return info


# ---- portability: records on save, relinking on open -----------------------------------------


def _spec_inputs(graph: Any, node_type: str) -> dict[str, Any]:
    registry = getattr(graph, "registry", None)
    spec = registry.get(node_type) if registry is not None else None
    return spec.inputs if spec is not None else {}


def _base_options(graph: Any, options: dict[str, Any] | None) -> dict[str, Any]:
    if options is not None:
        return options
    source = graph.ui.get("_source") if isinstance(getattr(graph, "ui", None), dict) else None
    return {"base_dir": str(Path(source).parent)} if isinstance(source, str) and source else {}


def file_record(value: str, kind: str, options: dict[str, Any] | None = None
                ) -> dict[str, Any] | None:
    """What a saved workflow records of the file a library path input names: {"value",
    "kind", "name" (relative to its library folder, else the file's own name), "size",
    "hash"}; None when there is nothing to record (no such file, or a relative path outside
    the library, which travels with the workflow or with Loom)."""
    from engine.paths import path_problem, resolve_path

    if not isinstance(value, str) or not value or path_problem(value) is not None:
        return None
    try:
        path = resolve_path(value, options, kind)
        if not path.exists():
            return None
        lib = current_library()
        where = lib.name_of(path, kind)
        if where is None and not Path(os.path.expanduser(value)).is_absolute():
            return None
        size = _folder_size(path) if path.is_dir() else path.stat().st_size
        return {"value": value, "kind": kind, "name": where[0] if where else path.name,
                "size": size, "hash": content_hash(path)}
    except (OSError, ValueError, RuntimeError, LoomError):
        return None


def saved_ui(graph: Any, node_id: str) -> dict[str, Any]:
    """The `ui` of a node as a saved workflow holds it: with a fresh record of each library
    file its inputs name (a record kept from the file the graph was read from while the value
    is unchanged and the file is not on this machine)."""
    node = graph.nodes[node_id]
    inputs = _spec_inputs(graph, node.type)
    kinds = {n: i.library for n, i in inputs.items()
             if getattr(i, "library", None) and getattr(i, "path", False)}
    if not kinds:
        return node.ui
    old = node.ui.get(RECORD_UI)
    old = old if isinstance(old, dict) else {}
    options = _base_options(graph, None)
    records: dict[str, Any] = {}
    for name, kind in kinds.items():
        if (node_id, name) in graph.links:
            continue
        value = node.values.get(name)
        rec = file_record(value, kind, options)
        if rec is None and isinstance(old.get(name), dict) and old[name].get("value") == value:
            rec = old[name]
        if rec is not None:
            records[name] = rec
    ui = {k: v for k, v in node.ui.items() if k != RECORD_UI}
    if records:
        ui[RECORD_UI] = records
    return ui


def relink(graph: Any, options: dict[str, Any] | None = None) -> list[Problem]:
    """Point the library path inputs of a just-opened workflow whose file is not here at the
    same file in this machine's library (by name, then by content), rewriting each value to
    its library name. One Problem per input rewritten (code "relinked") or recorded but found
    nowhere (code "file_not_found"), naming the node and input."""
    from engine.paths import path_problem, resolve_path, shown

    options = _base_options(graph, options)
    notes: list[Problem] = []
    for nid, node in list(graph.nodes.items()):
        inputs = _spec_inputs(graph, node.type)
        records = node.ui.get(RECORD_UI) if isinstance(node.ui.get(RECORD_UI), dict) else {}
        for name, inp in inputs.items():
            kind = getattr(inp, "library", None)
            value = node.values.get(name)
            if not kind or not getattr(inp, "path", False) or (nid, name) in graph.links \
                    or not isinstance(value, str) or not value or path_problem(value):
                continue
            try:
                if resolve_path(value, options, kind).exists():
                    continue
                rec = records.get(name)
                rec = rec if isinstance(rec, dict) and rec.get("value") == value else {}
                size = rec.get("size") if isinstance(rec.get("size"), int) else None
                digest = rec.get("hash") if isinstance(rec.get("hash"), str) else None
                names = [rec.get("name"), value]
                lib = current_library()
                found = lib.locate(kind, names, size, digest)
            except (OSError, ValueError, RuntimeError, LoomError):
                continue
            if found is None:
                if rec:
                    notes.append(Problem(
                        "file_not_found", f"{shown(value)} is not on this machine, and no file "
                        f"of that name or content ({rec.get('name')!r}, {size} bytes) is in the "
                        f"{kind} folders ({', '.join(map(str, lib.folders(kind))) or 'none'})",
                        nid, node.type, name))
                continue
            target, how = found
            path = target.path if isinstance(target, Entry) else target
            where = lib.name_of(path, kind)
            new = where[0] if where else str(path)
            graph.set_value(nid, name, new)
            notes.append(Problem(
                "relinked", f"{shown(value)} is not on this machine; using {new!r} from the "
                f"{kind} folder {where[1] if where else path.parent} ({how})",
                nid, node.type, name))
    return notes


# ---- the `models` command ---------------------------------------------------------------------


def _size_text(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def listing(kinds: Iterable[str] = KINDS, lib: Library | None = None) -> dict[str, Any]:
    """Every model of `kinds` with its detected family, and the folders searched: what
    `main.py models --json` prints."""
    lib = lib or current_library()
    out: dict[str, Any] = {"kinds": {}, "warnings": list(lib.warnings)}
    for kind in kinds:
        files = []
        for e in lib.entries(kind):
            files.append({**e.to_json(), **describe(e)})
        out["kinds"][kind] = {
            "folders": [{"folder": str(f), "source": s, "exists": f.is_dir()}
                        for f, s in lib.roots[kind]],
            "files": files}
    return out


def print_listing(data: dict[str, Any], write: Callable[[str], Any] = print) -> None:
    """The listing as text: per kind, the folders, then each file with its family."""
    for kind, part in data["kinds"].items():
        files = part["files"]
        write(f"{kind}: {len(files)} file{'s' if len(files) != 1 else ''}")
        for f in part["folders"]:
            write(f"  folder {f['folder']}{'' if f['exists'] else ' (missing)'}"
                  f"  [{f['source']}]")
        width = max((len(f["name"]) for f in files), default=0)
        for f in files:
            family = f.get("title") or f.get("family") or \
                ("unreadable" if f.get("error") else "?")
            write(f"  {f['name']:<{width}}  {family:<24}  {_size_text(f['size'])}")
    for w in data.get("warnings") or ():
        write(f"warning: {w}")


def models_command(kind: str | None = None, as_json: bool = False,
                   write: Callable[[str], Any] = print) -> int:
    """`main.py models [--kind K] [--json]`: the library's files with their families."""
    kinds = [kind] if kind else list(KINDS)
    data = listing(kinds)
    if as_json:
        write(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print_listing(data, write)
    return 0
