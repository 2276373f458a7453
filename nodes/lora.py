"""LoRA: low-rank patches to a checkpoint's UNet and text encoders (nodes.lib.lora). Torch is
imported only when the node runs."""

from __future__ import annotations

from engine.errors import NodeInputError
from engine.node import Input, Output, RunContext, node
from engine.paths import resolve_path
from engine.types import FLOAT, STRING
from nodes._types import CLIP, MODEL

LORA_FILES = ("LoRA (*.safetensors *.pt *.ckpt *.bin *.pth);;All files (*)")
_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin", ".pth")  # nodes.lib.lora.LORA_SUFFIXES


@node("loaders.lora", title="Load LoRA", category="loaders", version="1.0.0",
      outputs=[Output("model", MODEL, "the UNet with the LoRA merged in",
                      inputs=("model", "path", "strength_model")),
               Output("clip", CLIP, "the text encoders with the LoRA merged in",
                      inputs=("clip", "path", "strength_clip"))])
class LoadLora:
    """Apply a LoRA (kohya / A1111, diffusers / PEFT or LyCORIS LoCon file) to a model and its
    text encoders, each with its own strength. Chain several to combine them. The checkpoint's
    own weights are never changed: strength 0 gives the original model exactly, and changing
    one strength re-runs only what uses that output."""

    model = Input(MODEL)
    clip = Input(CLIP)
    path = Input(STRING, default="", path=True, widget="file", file_filter=LORA_FILES,
                 library="loras",
                 description="a LoRA file (.safetensors; .pt/.ckpt are read without running "
                             "code, plain tensors only)")
    strength_model = Input(FLOAT, default=1.0, min=-10.0, max=10.0, step=0.05,
                           description="how much of the LoRA to add to the UNet (0: none)")
    strength_clip = Input(FLOAT, default=1.0, min=-10.0, max=10.0, step=0.05,
                          description="how much of the LoRA to add to the text encoder(s)")

    @classmethod
    def preflight(cls, values, ctx):
        """Before anything runs: a LoRA file is chosen, exists and has a LoRA file's suffix."""
        path = values.get("path")
        if not isinstance(path, str):
            return None
        if not path:
            return [("path", "choose a LoRA file (.safetensors)")]
        p = ctx.resolve(path, "loras")
        if not p.is_file():
            return [("path", f"no file at {p}; expected a LoRA .safetensors file")]
        if p.suffix.lower() not in _SUFFIXES:
            return [("path", f"{p.name} is not a LoRA file (expected {', '.join(_SUFFIXES)})")]
        return None

    def run(self, ctx: RunContext):
        from nodes.lib.lora import LoraError, apply_lora

        path = resolve_path(self.path, ctx.options, "loras")
        if not path.is_file():
            raise NodeInputError("path", f"no file at {path}; expected a LoRA .safetensors file")
        try:
            model, clip, report = apply_lora(self.model, self.clip, path,
                                             float(self.strength_model),
                                             float(self.strength_clip))
        except LoraError as exc:
            raise NodeInputError("path", str(exc)) from exc
        ctx.set_ui(**report.as_ui())
        return model, clip
