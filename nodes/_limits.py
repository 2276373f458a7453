"""Limits the nodes check before a run (their `preflight` hooks), so that an absurd value is
refused in a moment with a message instead of allocating for minutes and failing: image sizes
against the memory they need, and prompt lengths. Torch-free: pre-run checks never import it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.preflight import format_bytes, memory_problem

MAX_PROMPT_CHUNKS = 16
"""The longest prompt the text encoders take, in CLIP chunks of 75 tokens (1,200 tokens): A1111
users rarely pass 3; every chunk is a full text-encoder pass."""
MAX_PROMPT_CHARS = 20_000
"""The character cap checked before a run (the token count needs the tokenizer, which is only
loaded by the run): far above MAX_PROMPT_CHUNKS chunks of ordinary words (about 5,000
characters), so it only refuses text that is surely too long; the token limit is checked when
the prompt is tokenized."""

# What one decoded image needs, per pixel, in bytes (see image_memory):
_VAE_CHANNELS = 128  # channels of the last decoder block of SD 1.x / 2.x / XL VAEs
_UNET_CHANNELS = 320  # channels of the first UNet block (at latent resolution)


def image_memory(width: int, height: int, batch: int, latent_channels: int = 4,
                 on_cpu: bool = True) -> tuple[int, int]:
    """(main-memory bytes, compute-device bytes) that making a batch of `batch` images of
    width x height through the usual pipeline (noise -> UNet -> VAE decode -> save) needs at
    least. Deliberately conservative, a lower bound: only what must exist at the same time is
    counted, so a refusal means the run would surely fail (a run that passes may still run out
    of memory).

    main memory: the latents (float32), the decoded images as float32 [B, 3, H, W] twice (the
    decoder's output and the 0..1 copy the nodes pass on) and once as 8-bit for saving;
    compute device: one UNet activation of 320 channels at latent size for the batch and its
    unconditional twin (CFG), and one VAE decoder activation of 128 channels at full size, in
    fp16 on a GPU, fp32 on the CPU. Where the compute device is the CPU both are main memory.
    """
    pixels = int(width) * int(height) * int(batch)
    latent = pixels // 64 * int(latent_channels) * 4
    cpu = latent + pixels * 3 * 4 * 2 + pixels * 3
    per_value = 4 if on_cpu else 2
    device = 2 * (pixels // 64) * _UNET_CHANNELS * per_value + pixels * _VAE_CHANNELS * per_value
    return cpu, device


def image_size_problems(values: dict[str, Any], device: str, what: str = "images",
                        batch: int | None = None
                        ) -> Iterable[tuple[str, str]]:
    """Preflight of a node that sets an image size (width, height, and batch when given):
    refuse a size whose estimated memory (image_memory) does not fit. Linked inputs (absent
    from `values`) are not known before the run and are not checked."""
    from engine.preflight import runs_on_cpu

    w, h = values.get("width"), values.get("height")
    b = values.get("batch", 1) if batch is None else batch
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h, b)):
        return
    ch = values.get("channels", 4)
    ch = ch if isinstance(ch, int) and not isinstance(ch, bool) and ch > 0 else 4
    on_cpu = runs_on_cpu(device)
    cpu, dev = image_memory(w, h, b, ch, on_cpu)
    size = f"{w}x{h}" + (f" (a batch of {b})" if b > 1 else "")
    advice = "lower the width and height (render smaller, then upscale)"
    if b > 1:
        advice = "make the batch smaller, or " + advice
    why = memory_problem(f"{what} of {size}", cpu, dev, device, advice)
    if why is not None:
        # name the batch when one image alone would fit, else the size
        one = memory_problem("", *image_memory(w, h, 1, ch, on_cpu), device, "")
        yield ("batch" if b > 1 and "batch" in values and one is None else "width"), why


def pixels_problem(what: str, width: int, height: int, batch: int, copies: int,
                   input_name: str) -> tuple[str, str] | None:
    """A plain image operation (load, resize) on a float [batch, 3, H, W] image that keeps
    about `copies` copies of it alive at once: refused when those do not fit in memory."""
    need = int(width) * int(height) * int(batch) * 3 * 4 * copies
    why = memory_problem(f"{what} of {width}x{height}", need, 0, "cpu",
                         "choose a smaller size")
    return (input_name, why) if why is not None else None


def image_file_problems(value: Any, ctx: Any, input_name: str) -> Iterable[tuple[str, str]]:
    """Preflight of a node that loads an image file: a file is chosen, exists, is an image
    Pillow can read (its header only is read here), and its pixels fit in memory."""
    if not isinstance(value, str):
        return
    if not value:
        yield input_name, "choose an image file"
        return
    path = ctx.resolve(value)
    try:
        is_file = path.is_file()
    except (OSError, ValueError):
        is_file = False
    if not is_file:
        kind = "a folder" if _is_dir(path) else "no such file"
        yield input_name, (f"{path} is a folder; choose an image file" if kind == "a folder"
                           else f"no such file: {path}")
        return
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:
        yield input_name, f"{path.name} is too large an image to open safely: {exc}"
        return
    except Exception as exc:  # noqa: BLE001 - whatever the file holds, say it is not an image
        yield input_name, f"cannot read {path.name} as an image: {exc}"
        return
    problem = pixels_problem(f"loading {path.name}", width, height, 1, 4, input_name)
    if problem is not None:
        yield problem


def _is_dir(path: Any) -> bool:
    try:
        return bool(path.is_dir())
    except (OSError, ValueError):
        return False


class PromptTooLongError(ValueError):
    """A prompt over MAX_PROMPT_CHUNKS chunks, found when it is tokenized."""


def prompt_problem(text: Any) -> str | None:
    """Why a prompt is too long to encode, checked before the run (characters only)."""
    if isinstance(text, str) and len(text) > MAX_PROMPT_CHARS:
        return (f"the prompt is {len(text):,} characters long; the limit is {MAX_PROMPT_CHARS:,} "
                f"characters (and {MAX_PROMPT_CHUNKS} chunks of 75 tokens); shorten it")
    return None


__all__ = ["MAX_PROMPT_CHARS", "MAX_PROMPT_CHUNKS", "PromptTooLongError", "format_bytes",
           "image_memory", "image_size_problems", "prompt_problem"]
