"""Tests use tools/original_layout.py (the built-in model's single-file export uses it too)."""
from tools.original_layout import (  # noqa: F401
    clip_to_original,
    open_clip_to_original,
    pipeline_to_original,
    save_original,
    unet_to_original,
    vae_to_original,
)
