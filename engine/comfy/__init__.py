"""Opening ComfyUI workflows: the UI format (`nodes` / `links`), the API format (keyed by node
id), and ComfyUI's PNGs (their `workflow` / `prompt` text chunks) become Loom workflows
(engine.comfy.convert maps the nodes; docs/comfyui.md has the table). Imports neither torch nor
Qt, and runs nothing: a workflow is data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.comfy.convert import ImportOptions, ImportReport, convert
from engine.comfy.read import comfy_format, read_comfy
from engine.errors import WorkflowError

__all__ = ["ImportOptions", "ImportReport", "comfy_format", "convert", "read_comfy",
           "import_document", "import_file", "read_any"]


def import_document(doc: Any, registry: Any = None, options: ImportOptions | None = None,
                    source: str | None = None) -> tuple[dict[str, Any], ImportReport]:
    """A Loom workflow document (and the import report) for a parsed ComfyUI document.
    Relative file names are looked at (for an image's size) in options.base_dir, by default
    the folder of `source`."""
    if source and (options is None or options.base_dir is None):
        from dataclasses import replace

        options = replace(options or ImportOptions(), base_dir=str(Path(source).parent))
    try:
        doc_out, report = convert(read_comfy(doc, source), registry, options)
    except WorkflowError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError,
            RecursionError) as exc:  # a file of the right shape with odd contents
        raise WorkflowError(f"cannot read this ComfyUI workflow: {type(exc).__name__}: {exc}",
                            source) from None
    if source:
        doc_out["ui"]["comfy_import"]["source"] = Path(source).name
        doc_out["ui"].setdefault("title", f"Imported from {Path(source).name}")
    return doc_out, report


def _png_prompt(path: Path) -> Any:
    """ComfyUI's API-format `prompt` chunk of a PNG, or None."""
    from engine.comfy.read import parse_text
    from engine.workflow import MAX_FILE_BYTES, png_text_chunks

    try:
        if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
            return None
        data = path.read_bytes()
    except (OSError, ValueError):
        return None
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    text = png_text_chunks(data, str(path)).get("prompt")
    if text is None:
        return None
    try:
        doc = parse_text(text, str(path))
    except WorkflowError:
        return None
    return doc if comfy_format(doc) == "api" else None


def read_any(path: str | os.PathLike, registry: Any = None,
             options: ImportOptions | None = None) -> tuple[dict[str, Any], ImportReport | None]:
    """The Loom document of a file that is a Loom workflow (.json, or a PNG Loom saved) or a
    ComfyUI one (.json in either format, or a PNG ComfyUI saved: its `workflow` chunk, the UI
    format, else its `prompt` chunk, the API format), with the import report (None for a Loom
    workflow). Raises WorkflowError on anything else."""
    from engine.workflow import read_document

    p = Path(path)
    try:
        doc = read_document(p)
    except WorkflowError:
        prompt = _png_prompt(p)
        if prompt is None:
            raise
        return import_document(prompt, registry, options, str(p))
    if comfy_format(doc) is not None:
        return import_document(doc, registry, options, str(p))
    return doc, None


def import_file(path: str | os.PathLike, registry: Any = None,
                options: ImportOptions | None = None) -> tuple[dict[str, Any], ImportReport]:
    """The Loom document of a ComfyUI workflow file (.json or PNG); WorkflowError if the file
    is not one."""
    doc, report = read_any(path, registry, options)
    if report is None:
        raise WorkflowError("this is a Loom workflow, not a ComfyUI one", str(path))
    return doc, report
