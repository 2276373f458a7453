"""Loading models: a checkpoint (diffusers folder or single .safetensors file) into the MODEL,
CLIP and VAE that the other nodes use. Torch is imported only when a node runs."""

from __future__ import annotations

from engine.errors import NodeInputError
from engine.node import Input, Output, RunContext, node
from engine.paths import resolve_path
from engine.types import STRING
from nodes._types import CLIP, MODEL, VAE
from nodes.lib.families import DTYPES, FAMILIES, PREDICTIONS

# The one list of families, prediction types and dtypes (nodes.lib.families), as choices
FAMILY_CHOICES = ("auto", *FAMILIES)
PREDICTION_CHOICES = ("auto", *PREDICTIONS)
DTYPE_CHOICES = DTYPES


@node("loaders.checkpoint", title="Load Checkpoint", category="loaders", version="1.0.0",
      outputs=[Output("model", MODEL, "the denoising UNet with its scheduler config"),
               Output("clip", CLIP, "tokenizers and text encoders"),
               Output("vae", VAE, "the image autoencoder")])
class LoadCheckpoint:
    """Load a Stable Diffusion checkpoint (SD 1.x, 2.x, SDXL base / refiner, inpainting, x4
    upscaler; latent x2 upscaler as a folder) from a diffusers folder or a single .safetensors
    file. Loaded models stay in memory and are shared by every node that loads the same file."""

    path = Input(STRING, default="resources/models/loom-shapes", path=True, widget="file",
                 file_filter="Checkpoints (*.safetensors *.ckpt);;Diffusers folder (*)",
                 description="a .safetensors checkpoint or a diffusers folder (model_index.json)")
    family = Input(STRING, default="auto", choices=FAMILY_CHOICES,
                   description="model family; 'auto' detects it from the weights")
    prediction = Input(STRING, default="auto", choices=PREDICTION_CHOICES,
                       description="what the UNet predicts; 'auto' reads it from the checkpoint "
                                   "(SD 2.x 768-v: v_prediction)")
    dtype = Input(STRING, default="auto", choices=DTYPE_CHOICES,
                  description="weights precision; 'auto': fp16 on a GPU, fp32 on the CPU")
    config = Input(STRING, default="", path=True, widget="folder", optional=True,
                   description="for single files of unusual shape: a diffusers folder whose "
                               "configs describe the checkpoint (default: Loom's own configs)")

    @classmethod
    def preflight(cls, values, ctx):
        """Before anything runs: the checkpoint exists, and a diffusers folder's JSON files
        (model_index.json, configs) can be read and have fields of the right types. Reads no
        weights and imports no torch (nodes.lib.model_files)."""
        from nodes.lib.model_files import checkpoint_problem

        path = values.get("path")
        if not isinstance(path, str):
            return None
        if not path:
            return [("path", "choose a checkpoint: a .safetensors file or a diffusers folder")]
        config = values.get("config")
        config_dir = ctx.resolve(config) if isinstance(config, str) and config else None
        problem = checkpoint_problem(ctx.resolve(path), config_dir)
        return [problem] if problem is not None else None

    def run(self, ctx: RunContext):
        from nodes.lib.checkpoints import LOAD_ERRORS, load_checkpoint
        from nodes.lib.model_manager import manager

        path = resolve_path(self.path, ctx.options)
        if not path.exists():
            raise NodeInputError("path", f"no file or folder at {path}; expected a .safetensors "
                                         "checkpoint or a diffusers folder with model_index.json")
        config_dir = None
        if self.config:
            config_dir = resolve_path(self.config, ctx.options)
            if not (config_dir / "unet" / "config.json").is_file():
                raise NodeInputError("config", f"{config_dir} is not a diffusers folder with "
                                               "unet/config.json")
        budget = ctx.options.get("model_memory_gb")
        if budget is not None:
            manager().set_budget(int(float(budget) * 2**30))
        try:
            loaded = load_checkpoint(path, family=self.family, prediction=self.prediction,
                                     dtype=self.dtype, device=ctx.device, config_dir=config_dir,
                                     progress=lambda done, total: ctx.progress(done, total))
        except LOAD_ERRORS as exc:
            raise NodeInputError("path", str(exc)) from exc
        info = loaded.info
        ctx.set_ui(family=info.family, prediction_type=info.prediction_type, kind=info.kind)
        return loaded.model, loaded.clip, loaded.vae
