"""A document: one graph, its undo stack, its file, and its crash-recovery file.

The recovery file is rewritten (atomically) shortly after every edit and deleted on a clean
close. Each live document holds a lock file beside it, so a later start can tell a recovery file
left by a crashed process (lock stale) from one of a window still open (lock held).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from PySide6.QtCore import QBuffer, QIODevice, QLockFile, QObject, QTimer, Signal
from PySide6.QtGui import QImage, QUndoStack

from editor.places import data_dir, is_shipped, refuse_shipped
from engine.comfy import read_any
from engine.errors import LoomError
from engine.graph import Graph
from engine.paths import PROJECT_ROOT, path_problem, resolve_path
from engine.registry import Registry
from engine.workflow import (
    atomic_write_text,
    dumps,
    graph_from_document,
    graph_to_document,
    parse_document,
    relinked_files,
    save_workflow,
)

AUTOSAVE_DELAY_MS = 400


def image_bytes(image: QImage, fmt: str = "PNG") -> bytes:
    """`image` encoded in memory ("PNG", "JPG", "WEBP", ...), to be written with
    engine.files.write_atomic (never half a file) instead of QImage.save(path)."""
    buf = QBuffer()
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    if image.isNull() or not image.save(buf, fmt):
        raise ValueError(f"cannot encode the image as {fmt}")
    return bytes(buf.data())


def recovery_dir() -> Path:
    env = os.environ.get("LOOM_RECOVERY_DIR")
    d = Path(env) if env else data_dir() / "recovery"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _portable(target: Path, base: Path) -> str:
    """`target` as a workflow in `base` should name it: relative to `base` or to Loom's folder
    when inside one of them (in that order), else absolute."""
    for root in (base, PROJECT_ROOT):
        try:
            return target.relative_to(root.resolve()).as_posix()
        except ValueError:
            continue
    return str(target)


def moved_paths(graph: Graph, registry: Registry, old_base: Path,
                new_base: Path) -> dict[tuple[str, str], str]:
    """Relative file paths in `graph` that name an existing file from `old_base` (the folder
    the workflow came from) but would name another one, or none, from `new_base` (where it is
    being saved): {(node, input): the path rewritten for new_base}. Saving a bundled example
    into the user's folder keeps its input images."""
    out: dict[tuple[str, str], str] = {}
    if old_base.resolve() == new_base.resolve():
        return out
    for nid, n in graph.nodes.items():
        spec = registry.get(n.type)
        if spec is None:
            continue
        for name, inp in spec.inputs.items():
            value = n.values.get(name)
            if not inp.path or not isinstance(value, str) or not value \
                    or path_problem(value) is not None or Path(value).expanduser().is_absolute():
                continue
            try:
                old = resolve_path(value, {"base_dir": str(old_base)})
                if not old.exists():
                    continue
                new = resolve_path(value, {"base_dir": str(new_base)})
                if new.exists() and new.resolve() == old.resolve():
                    continue
                out[(nid, name)] = _portable(old.resolve(), new_base)
            except (OSError, ValueError, RuntimeError):
                continue
    return out


class Document(QObject):
    changed = Signal()
    """The modified state, the file or the title changed."""
    groups_changed = Signal()
    graph_replaced = Signal()
    autosaved = Signal(str)

    def __init__(self, registry: Registry, parent: QObject | None = None):
        super().__init__(parent)
        self.registry = registry
        self.graph = Graph(registry)
        self.path: Path | None = None
        self.source: Path | None = None
        """The file the graph was read from: `path`, a bundled workflow (opened as an untitled
        copy) or a PNG. Relative paths in the graph resolve against its folder."""
        self.undo = QUndoStack(self)
        self.undo.cleanChanged.connect(self._clean_changed)
        self.undo.indexChanged.connect(self._schedule_autosave)
        self._autosave = QTimer(self)
        self._autosave.setSingleShot(True)
        self._autosave.setInterval(AUTOSAVE_DELAY_MS)
        self._autosave.timeout.connect(self.write_recovery)
        self._recovery_path: Path | None = None
        self._lock: QLockFile | None = None
        self.viewport_getter = None  # set by the window: () -> {"center": [x, y], "zoom": z}

    # state ----------------------------------------------------------------------------------
    @property
    def modified(self) -> bool:
        return not self.undo.isClean()

    @property
    def bundled(self) -> bool:
        """An untitled copy of a workflow that ships with Loom."""
        return self.path is None and is_shipped(self.source)

    def title(self) -> str:
        name = self.path.name if self.path else "Untitled"
        if self.bundled:
            name += f" (copy of {self.source.name})"
        return f"{name}{' •' if self.modified else ''} — Loom"

    def base_dir(self) -> Path:
        """The folder relative paths in the graph resolve against (as the engine does)."""
        source = self.graph.ui.get("_source")
        return Path(source).parent if isinstance(source, str) and source else Path.cwd()

    def _sync_viewport(self) -> None:
        if self.viewport_getter is not None:
            vp = self.viewport_getter()
            if vp:
                self.graph.ui["viewport"] = vp

    # files ----------------------------------------------------------------------------------
    def set_graph(self, graph: Graph, path: Path | None, source: Path | None = None) -> None:
        self.graph = graph
        self.path = path
        self.source = source if source is not None else path
        if self.source is not None:
            graph.ui["_source"] = str(self.source.resolve())
        self.undo.clear()
        self.undo.setClean()
        self.graph_replaced.emit()
        self.changed.emit()

    def new(self) -> None:
        self.set_graph(Graph(self.registry), None)

    def load(self, path: str | os.PathLike) -> None:
        """Open a workflow (.json, or .png carrying one). Raises LoomError (WorkflowError) on
        a file that cannot be read; a graph with problems still opens (they are listed). A
        workflow that ships with Loom opens as an untitled copy: saving it asks where."""
        p = Path(path)
        # a Loom workflow, or a ComfyUI one (UI / API format, or a ComfyUI PNG) converted by
        # engine.comfy; an import opens untitled (Save asks where: the ComfyUI file stays)
        doc, imported = read_any(p, self.registry)
        graph = graph_from_document(doc, self.registry, str(p), check=False)
        relinked_files(graph, str(p.resolve().parent))  # model files moved: engine.library
        own = p.suffix.lower() == ".json" and not is_shipped(p) and imported is None
        self.set_graph(graph, p if own else None, source=p)

    def load_text(self, text: str, path: Path | None = None, modified: bool = False,
                  source: Path | None = None) -> None:
        graph = graph_from_document(parse_document(text), self.registry, None, check=False)
        own = path if path is not None and not is_shipped(path) else None
        self.set_graph(graph, own, source=source or path)
        if modified:
            # a restored document differs from its file: make it "modified" until saved
            self.undo.resetClean()
            self.changed.emit()

    def save(self, path: str | os.PathLike | None = None) -> None:
        """Save atomically. Raises OSError/LoomError; the old file is left untouched then."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise LoomError("no file name: use Save As")
        refuse_shipped(target, "your workflow")
        self._sync_viewport()
        save_workflow(self.graph, target)
        self.path = self.source = target
        self.graph.ui["_source"] = str(target.resolve())
        self.undo.setClean()
        self.changed.emit()
        self.write_recovery()

    def to_text(self) -> str:
        self._sync_viewport()
        return dumps(self.graph)

    # recovery -------------------------------------------------------------------------------
    def _clean_changed(self, _clean: bool) -> None:
        self.changed.emit()

    def _schedule_autosave(self, _index: int = 0) -> None:
        self._autosave.start()

    def _ensure_recovery_file(self) -> Path:
        if self._recovery_path is None:
            name = f"loom-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self._recovery_path = recovery_dir() / f"{name}.json"
            self._lock = QLockFile(str(self._recovery_path) + ".lock")
            self._lock.setStaleLockTime(0)
            self._lock.tryLock(0)
        return self._recovery_path

    def write_recovery(self) -> None:
        """Write the recovery file now (the debounced autosave calls this)."""
        self._autosave.stop()
        if not self.modified:
            self.discard_recovery(keep_lock=True)
            return
        self._sync_viewport()
        path = self._ensure_recovery_file()
        payload = {"loom_recovery": 1, "saved_at": time.time(),
                   "path": str(self.path) if self.path else None,
                   "source": str(self.source) if self.source else None,
                   "workflow": graph_to_document(self.graph)}
        try:
            atomic_write_text(path, json.dumps(payload, ensure_ascii=False))
            self.autosaved.emit(str(path))
        except OSError:
            pass  # autosave must never interrupt the user; the next edit tries again

    def discard_recovery(self, keep_lock: bool = False) -> None:
        if self._recovery_path is not None:
            try:
                self._recovery_path.unlink()
            except OSError:
                pass
        if not keep_lock and self._lock is not None:
            self._lock.unlock()
            self._lock = None
            self._recovery_path = None

    @property
    def recovery_path(self) -> Path | None:
        return self._recovery_path


def find_orphaned_recoveries() -> list[Path]:
    """Recovery files whose writer is gone (crashed or killed), newest first."""
    found = []
    for p in recovery_dir().glob("loom-*.json"):
        lock = QLockFile(str(p) + ".lock")
        lock.setStaleLockTime(0)
        if lock.tryLock(0):
            lock.unlock()
            found.append(p)
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return found


def read_recovery(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "workflow" not in data:
        raise LoomError(f"{path}: not a Loom recovery file")
    return data
