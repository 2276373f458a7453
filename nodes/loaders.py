"""Loading models: a checkpoint (diffusers folder or single .safetensors file) into the MODEL,
CLIP and VAE that the other nodes use. Torch is imported only when a node runs."""

from __future__ import annotations

from engine.errors import NodeInputError
from engine.node import Input, Output, RunContext, node
from engine.paths import not_found_message, resolve_path
from engine.types import STRING
from nodes._loading import apply_model_budget, existing_model_path, path_config_preflight
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
                 library="checkpoints",
                 description="a .safetensors checkpoint or a diffusers folder (model_index.json); "
                             "a name in the model library's checkpoints folders")
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

        return path_config_preflight(
            values, ctx, "checkpoints",
            "choose a checkpoint: a .safetensors file or a diffusers folder", checkpoint_problem)

    def run(self, ctx: RunContext):
        from nodes.lib.checkpoints import LOAD_ERRORS, load_checkpoint

        path = resolve_path(self.path, ctx.options, "checkpoints")
        if not path.exists():
            raise NodeInputError("path", not_found_message(self.path, ctx.options, "checkpoints")
                                 + "; expected a .safetensors checkpoint or a diffusers folder "
                                 "with model_index.json")
        config_dir = None
        if self.config:
            config_dir = resolve_path(self.config, ctx.options)
            if not (config_dir / "unet" / "config.json").is_file():
                raise NodeInputError("config", f"{config_dir} is not a diffusers folder with "
                                               "unet/config.json")
        apply_model_budget(ctx.options)
        try:
            loaded = load_checkpoint(path, family=self.family, prediction=self.prediction,
                                     dtype=self.dtype, device=ctx.device, config_dir=config_dir,
                                     progress=lambda done, total: ctx.progress(done, total))
        except LOAD_ERRORS as exc:
            raise NodeInputError("path", str(exc)) from exc
        info = loaded.info
        ctx.set_ui(family=info.family, prediction_type=info.prediction_type, kind=info.kind)
        return loaded.model, loaded.clip, loaded.vae


VAE_FAMILY_CHOICES = ("auto", "sd1", "sdxl")


@node("loaders.vae", title="Load VAE", category="loaders", version="1.0.0",
      outputs=[Output("vae", VAE, "the image autoencoder, for VAE Decode / Encode")])
class LoadVae:
    """Load a VAE on its own, to use instead of a checkpoint's (wire it into VAE Decode):
    a diffusers AutoencoderKL folder, or a single .safetensors / .pt file in the original
    layout (a whole checkpoint's `first_stage_model.` keys, or bare keys as in
    sd-vae-ft-mse) or the diffusers one. The model manager keeps it, shared by every node that
    loads the same file."""

    path = Input(STRING, default="", path=True, widget="file", library="vae",
                 file_filter="VAE (*.safetensors *.pt *.ckpt *.bin *.pth);;Diffusers folder (*)",
                 description="a VAE .safetensors / .pt file or a diffusers AutoencoderKL folder; "
                             "a name in the model library's vae folders")
    family = Input(STRING, default="auto", choices=VAE_FAMILY_CHOICES,
                   description="the latent space it is for (scaling factor): sd1 (SD 1.x / "
                               "2.x) or sdxl; 'auto': a folder's config, else SDXL when the "
                               "file is a whole SDXL checkpoint or its name says 'xl'")
    dtype = Input(STRING, default="auto", choices=DTYPE_CHOICES,
                  description="weights precision; 'auto': fp16 on a GPU, fp32 on the CPU")
    config = Input(STRING, default="", path=True, widget="file", optional=True,
                   description="for single files of unusual shape: an AutoencoderKL "
                               "config.json or its folder (default: Loom's SD / SDXL VAE "
                               "config, sized from the weights)")

    @classmethod
    def preflight(cls, values, ctx):
        """Before anything runs: the path holds a VAE (folder config or safetensors header;
        no weights read, no torch)."""
        from nodes.lib.model_info import vae_problem

        return path_config_preflight(
            values, ctx, "vae", "choose a VAE: a .safetensors file or a diffusers folder",
            vae_problem)

    def run(self, ctx: RunContext):
        from nodes.lib.checkpoints import LOAD_ERRORS
        from nodes.lib.vae_loader import load_vae

        path = existing_model_path(self.path, ctx.options, "vae", "choose a VAE file or folder")
        config = resolve_path(self.config, ctx.options) if self.config else None
        if config is not None:
            from nodes.lib.model_info import read_vae_config_file

            try:
                read_vae_config_file(config)
            except LOAD_ERRORS as exc:
                raise NodeInputError("config", str(exc)) from exc
        apply_model_budget(ctx.options)
        try:
            bundle = load_vae(path, family=self.family, dtype=self.dtype, device=ctx.device,
                              config=config)
        except LOAD_ERRORS as exc:
            raise NodeInputError("path", str(exc)) from exc
        ctx.set_ui(family=bundle.family, scaling_factor=bundle.scaling_factor)
        return bundle
