"""Where relative paths in workflows point, and the identity of a file's content for cache keys."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import sys
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent

MAX_NAME_BYTES = 255
"""The longest file or folder name (one path component) common file systems accept."""
MAX_PATH_BYTES = 4096
"""The longest path Linux accepts (PATH_MAX); macOS and Windows accept less."""
MAX_DIR_ENTRIES = 512
"""How many entries of a folder (its top level and one level of subfolders) its identity reads:
enough for a diffusers model folder, bounded for a path that points at /usr."""

DATA_DIR_ENV = "LOOM_DATA_DIR"


def user_data_dir() -> Path:
    """Loom's per-user data folder: $LOOM_DATA_DIR, else where Qt's AppDataLocation puts it for
    the editor (organisation and application "Loom"), worked out here without Qt:
    ~/.local/share/Loom/Loom on Linux ($XDG_DATA_HOME), ~/Library/Application Support/Loom/Loom
    on macOS, %APPDATA%\\Loom\\Loom on Windows."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(os.path.expanduser(env))
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / "Loom" / "Loom"


def shown(value: Any, limit: int = 80) -> str:
    """A path for a message: repr-quoted (NULs and lone surrogates escaped), cut short."""
    r = repr(str(value))
    return r if len(r) <= limit else r[:limit - 4] + "...'"


def path_problem(value: Any) -> str | None:
    """Why `value` can never name a file here, or None. Text checks only, no file access:
    a NUL character, a lone surrogate or other text the file system encoding cannot hold, a
    name (one component) over MAX_NAME_BYTES or a path over MAX_PATH_BYTES."""
    if not isinstance(value, str):
        return f"expected a path as text, got {type(value).__name__}"
    if "\0" in value:
        return f"{shown(value)} contains a NUL character (\\0), which no file name can hold"
    bad = next((c for c in value if "\ud800" <= c <= "\udfff"), None)
    if bad is not None:
        return (f"{shown(value)} contains a lone surrogate (U+{ord(bad):04X}), which is not a "
                "character; file names must be valid Unicode text")
    try:
        encoded = os.fsencode(value)
    except UnicodeError:
        return f"{shown(value)} contains characters this system's file names cannot hold"
    if len(encoded) > MAX_PATH_BYTES:
        return f"the path is {len(encoded)} bytes long; paths can be at most {MAX_PATH_BYTES}"
    for part in encoded.replace(b"\\", b"/").split(b"/"):
        if len(part) > MAX_NAME_BYTES:
            name = part.decode("utf-8", "replace")
            return (f"the name {shown(name, 40)} is {len(part)} bytes long; file and folder "
                    f"names can be at most {MAX_NAME_BYTES} bytes")
    return None


def path_access_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be looked at (a symlink loop, a name too long for this file system,
    no permission to look) or read as a file or folder (a device such as /dev/zero, a FIFO,
    a socket: reading one may never end), or None; a path that does not exist is not a
    problem here."""
    try:
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return (f"{shown(path)} is not a regular file or a folder (a device, a FIFO or a "
                    "socket)")
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{shown(path)} is a symlink loop (links that point at each other)"
        if exc.errno == errno.ENAMETOOLONG:
            return f"{shown(path)} is too long for this file system"
        if exc.errno == errno.ENOTDIR:
            return None  # a file where a folder is expected: reported as "no such file"
        return f"cannot look at {shown(path)}: {exc.strerror or exc}"
    except (ValueError, UnicodeError):
        return path_problem(str(path)) or f"{shown(path)} is not a usable path"
    return None


def resolve_path(value: str, options: dict[str, Any] | None = None,
                 library: str | None = None) -> Path:
    """Resolve a path from a workflow: absolute as is; a relative one against the workflow's
    folder (`options["base_dir"]`) first, then (for a path input with a `library` kind) the
    model library's folders of that kind (engine.library), then the current folder, then the
    project root (so `resources/...` always finds Loom's bundled files). Returns the first
    that exists, or the first candidate when none does (`where_looked` lists them all for an
    error message). Never raises for odd text (a NUL, a lone surrogate, an over-long name):
    such a value is returned as a Path unresolved, and `path_problem` says what is wrong."""
    candidates = where_looked(value, options, library)
    if len(candidates) == 1:
        return candidates[0]
    for c in candidates:
        try:
            if c.exists():
                return c
        except (OSError, ValueError):
            continue
    return candidates[0]


def where_looked(value: str, options: dict[str, Any] | None = None,
                 library: str | None = None) -> list[Path]:
    """Every place `resolve_path` tries for `value`, in order."""
    if path_problem(value) is not None:
        return [Path(value)]
    p = Path(os.path.expanduser(value))
    if p.is_absolute():
        return [p]
    candidates = []
    base = (options or {}).get("base_dir")
    if base:
        candidates.append(Path(base) / p)
    if library:
        from engine.library import library_candidates

        candidates += library_candidates(library, value)
    candidates += [Path.cwd() / p, PROJECT_ROOT / p]
    unique: list[Path] = []
    for c in candidates:
        if c not in unique:
            unique.append(c)
    return unique


def not_found_message(value: str, options: dict[str, Any] | None = None,
                      library: str | None = None, limit: int = 6) -> str:
    """"no file or folder ...; looked at: ..." for a path input whose value names nothing,
    listing where `resolve_path` looked (and, for a library kind, where such files go)."""
    looked = where_looked(value, options, library)
    shown_paths = ", ".join(str(c) for c in looked[:limit])
    if len(looked) > limit:
        shown_paths += f" and {len(looked) - limit} more"
    text = f"no file or folder {shown(value)}; looked at: {shown_paths}"
    if library and not Path(os.path.expanduser(value)).is_absolute():
        text += (f". Put it in a {library} folder of the model library (`python main.py "
                 "models` lists them) or give its full path")
    return text


def file_identity(path: Path) -> str:
    """A cheap identity of a file's or folder's content, for cache keys.

    A file: its real path (symlinks resolved), size and mtime. A folder: its real path and
    mtime, and the name, kind, size and mtime of its entries and of the entries of its
    subfolders (one level: a diffusers folder's model_index.json, unet/config.json, weights),
    at most MAX_DIR_ENTRIES in all, so a path pointing at a huge tree (/usr) is identified in
    milliseconds instead of walking it. The real path keeps two copies of a folder apart.
    Cheap enough to compute on every run (no hashing of multi-GB checkpoints); a changed file
    gets a new identity, so nodes that read it run again. Never raises: a path that cannot be
    read (missing, a symlink loop, a NUL) gets a "missing" or "bad path" identity."""
    h = hashlib.sha256()
    text = str(path)
    if path_problem(text) is not None:
        h.update(b"bad-path:" + text.encode("utf-8", "surrogatepass"))
        return h.hexdigest()
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
        if stat.S_ISDIR(st.st_mode):
            h.update(f"dir|{real}|{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
            _folder_entries(real, h)
        else:
            h.update(f"{real}|{st.st_size}|{st.st_mtime_ns}".encode("utf-8", "surrogateescape"))
    except (OSError, ValueError, RuntimeError):
        h = hashlib.sha256(b"missing:" + text.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _folder_entries(folder: str, h: Any, limit: int = MAX_DIR_ENTRIES) -> int:
    """Fold the entries of `folder` and of its subfolders (one level) into `h`, reading at
    most `limit` entries; returns how many were read. A folder's entries are read in the file
    system's order and sorted among those read (a folder over the limit is identified by its
    first entries and its mtime, which changes whenever an entry is added or removed)."""
    seen, subfolders = _scan(folder, "", h, limit, 0)
    for prefix, where in subfolders:
        if seen >= limit:
            h.update(b"...more\n")
            break
        seen, _ = _scan(where, prefix, h, limit - seen, seen)
    return seen


def _scan(where: str, prefix: str, h: Any, budget: int, seen: int) -> tuple[int, list]:
    rows: list[tuple[str, str]] = []
    subs: list[tuple[str, str]] = []
    try:
        with os.scandir(where) as it:
            for entry in it:
                if len(rows) >= budget:
                    rows.append(("~", "...more"))
                    break
                try:
                    is_dir = entry.is_dir()
                    st = entry.stat()
                    row = f"{'d' if is_dir else 'f'}|{st.st_size if not is_dir else 0}|" \
                          f"{st.st_mtime_ns}"
                except OSError:
                    is_dir, row = False, "unreadable"
                rows.append((prefix + entry.name, row))
                if is_dir and not prefix:
                    subs.append((entry.name + "/", entry.path))
    except OSError as exc:
        rows.append((prefix, f"unreadable folder: {exc.errno}"))
    for name, row in sorted(rows):
        h.update(f"{name}|{row}\n".encode("utf-8", "surrogateescape"))
    return seen + len(rows), sorted(subs)
