"""PNG files as Save Image writes them: the image and its text chunks (the embedded workflow),
encoded in memory, kept within what Loom reads back, and written through engine.files (a new
numbered name claimed atomically, never a partial file). Pillow only, no torch."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from engine.files import write_numbered


def encode_png(arr: np.ndarray, text: dict[str, str]) -> bytes:
    """H x W x 3 (or H x W) uint8 -> PNG bytes with `text` as uncompressed text chunks
    (tEXt, or iTXt for text beyond Latin-1), which engine.workflow.png_text_chunks reads."""
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def encode_png_within(arr: np.ndarray, text: dict[str, str], max_bytes: int,
                      droppable: tuple[str, ...] = ("workflow",)) -> tuple[bytes, list[str]]:
    """PNG bytes no larger than `max_bytes` if dropping the `droppable` text keys gets there;
    returns the data and the keys left out (empty when everything fit). The image itself is
    never dropped: a PNG too large even without them is still returned (an image is worth
    keeping even when it cannot carry a workflow)."""
    data = encode_png(arr, text)
    if len(data) <= max_bytes:
        return data, []
    dropped = [k for k in text if k in droppable]
    if not dropped:
        return data, []
    return encode_png(arr, {k: v for k, v in text.items() if k not in dropped}), dropped


def save_png(arr: np.ndarray, out_dir: Path, prefix: str, text: dict[str, str]) -> Path:
    """Write `arr` as a new `prefix_NNNNN.png` in `out_dir` (numbered after the highest
    existing one, never replacing anything)."""
    return write_numbered(out_dir, prefix, ".png", encode_png(arr, text))
