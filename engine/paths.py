"""Where relative paths in workflows point, and the identity of a file's content for cache keys."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def resolve_path(value: str, options: dict[str, Any] | None = None) -> Path:
    """Resolve a path from a workflow: absolute as is; a relative one against the workflow's
    folder (`options["base_dir"]`) first, then the current folder, then the project root (so
    `resources/...` always finds Loom's bundled files). Returns the first that exists, or the
    first candidate when none does (so the caller's error names a sensible path)."""
    p = Path(os.path.expanduser(value))
    if p.is_absolute():
        return p
    candidates = []
    base = (options or {}).get("base_dir")
    if base:
        candidates.append(Path(base) / p)
    candidates += [Path.cwd() / p, PROJECT_ROOT / p]
    for c in candidates:
        if c.exists():
            return c
    return candidates[0]


def file_identity(path: Path) -> str:
    """A cheap identity of a file's or folder's content: path, size and mtime of every file.

    Cheap enough to compute on every run (no hashing of multi-GB checkpoints); a changed file
    gets a new identity, so nodes that read it run again."""
    h = hashlib.sha256()
    try:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    f = Path(root) / name
                    st = f.stat()
                    h.update(f"{f.relative_to(path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        else:
            st = path.stat()
            h.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    except OSError:
        h.update(f"missing:{path}".encode())
    return h.hexdigest()
