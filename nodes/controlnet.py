"""ControlNet: load one, apply it to a UNet Step's denoiser (several stack), and make control
images (canny edges, content shuffle) with OpenCV.

Where it enters the sampling graph: Apply ControlNet takes the DENOISER a UNet Step makes and
returns one whose every UNet call adds the ControlNet's residuals, so it sits between UNet Step
and CFG Combine, and a second Apply ControlNet after the first adds its residuals to the first
one's (diffusers' MultiControlNetModel). The Sampler tells the denoiser the step index, so
start/end follow the pipelines' rule exactly (nodes.lib.controlnet). Torch and OpenCV are
imported only when a node runs.
"""

from __future__ import annotations

from engine.errors import NodeInputError
from engine.node import Input, Output, RunContext, node
from engine.paths import resolve_path
from engine.types import BOOLEAN, FLOAT, INT, STRING
from nodes._loading import apply_model_budget, existing_model_path, path_config_preflight
from nodes._types import CONTROL_NET, DENOISER, IMAGE
from nodes.lib.families import DTYPES

_WEIGHTS = "ControlNets (*.safetensors *.pth *.ckpt *.bin);;Diffusers folder (*)"


@node("loaders.controlnet", title="Load ControlNet", category="loaders", version="1.0.0",
      outputs=[Output("control_net", CONTROL_NET)])
class LoadControlNet:
    """Load a ControlNet for SD 1.x, 2.x or SDXL: a diffusers folder (config.json +
    diffusion_pytorch_model.safetensors), a pipeline folder's controlnet/, or a single file in
    the original ControlNet 1.x or the diffusers layout. The model manager keeps it, shared by
    every node that loads the same file."""

    path = Input(STRING, default="", path=True, widget="file", file_filter=_WEIGHTS,
                 library="controlnet",
                 description="a ControlNet .safetensors / .pth file or a diffusers folder; a "
                             "name in the model library's controlnet folders")
    dtype = Input(STRING, default="auto", choices=DTYPES,
                  description="weights precision; 'auto': fp16 on a GPU, fp32 on the CPU")
    config = Input(STRING, default="", path=True, widget="file", optional=True,
                   description="for single files of unusual shape (SDXL 'small'/'mid', shuffle): "
                               "a ControlNet config.json or its folder (default: derived from "
                               "the weights and Loom's model configs)")

    @classmethod
    def preflight(cls, values, ctx):
        """Before anything runs: the path exists and holds a ControlNet (folder config or
        safetensors header; no weights read, no torch)."""
        from nodes.lib.controlnet_files import controlnet_problem

        return path_config_preflight(
            values, ctx, "controlnet",
            "choose a ControlNet: a .safetensors / .pth file or a diffusers folder",
            controlnet_problem)

    def run(self, ctx: RunContext):
        from nodes.lib.checkpoints import LOAD_ERRORS
        from nodes.lib.controlnet import load_controlnet

        path = existing_model_path(self.path, ctx.options, "controlnet",
                                   "choose a ControlNet file or folder")
        config = None
        if self.config:
            from nodes.lib.controlnet_files import config_file

            config = resolve_path(self.config, ctx.options)
            if not config.exists():
                raise NodeInputError("config", f"no file or folder at {config}")
            if path.is_dir():
                raise NodeInputError("config", f"{path} is a folder with its own config; "
                                     "leave config empty (it is only for single files)")
            try:
                config_file(config)
            except LOAD_ERRORS as exc:
                raise NodeInputError("config", str(exc)) from exc
        apply_model_budget(ctx.options)
        try:
            bundle = load_controlnet(path, dtype=self.dtype, device=ctx.device, config=config)
        except LOAD_ERRORS as exc:
            raise NodeInputError("path", str(exc)) from exc
        ctx.set_ui(family=bundle.family)
        return bundle


@node("controlnet.apply", title="Apply ControlNet", category="controlnet", version="1.0.0",
      outputs=[Output("denoiser", DENOISER, "the UNet Step's denoiser with this ControlNet")])
class ApplyControlNet:
    """Steer a UNet Step with a ControlNet and a control image (edges, depth, pose...): put it
    between UNet Step and CFG Combine. Chain several to combine ControlNets; their effects add
    up. As in diffusers' ControlNet pipelines, the ControlNet sees the prompt and the negative
    prompt alike (unless guess mode is on)."""

    denoiser = Input(DENOISER, description="a UNet Step, or another Apply ControlNet")
    control_net = Input(CONTROL_NET)
    image = Input(IMAGE, description="the control image, the size of the image being made "
                                     "(0..1 RGB, as the preprocessors make it)")
    strength = Input(FLOAT, default=1.0, min=0.0, max=10.0, step=0.05, widget="slider",
                     description="how strongly it steers (diffusers' conditioning scale)")
    start = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.01,
                  description="act from this fraction of the steps on (0 = the first step)")
    end = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.01,
                description="act up to this fraction of the steps (1 = the last step)")
    guess_mode = Input(BOOLEAN, default=False,
                       description="the ControlNet sees only the prompt's rows and works even "
                                   "without a prompt (diffusers' guess_mode)")

    def run(self, ctx: RunContext):
        from nodes.lib.controlnet import Control, compatibility_problem

        if not callable(getattr(self.denoiser, "with_control", None)):
            raise NodeInputError("denoiser", "connect a UNet Step (or another Apply ControlNet)")
        if self.start >= self.end:
            raise NodeInputError("start", f"the ControlNet's interval starts ({self.start}) at "
                                 f"or after its end ({self.end})")
        model = self.denoiser.model
        problem = compatibility_problem(self.control_net, self.denoiser.unet.config, model.family)
        if problem is not None:
            raise NodeInputError("control_net", problem)
        image = self.image
        if image.ndim != 4 or image.shape[1] != 3:
            raise NodeInputError("image", f"expected an RGB image [B, 3, H, W], got "
                                 f"{tuple(image.shape)}")
        control = Control(self.control_net, image, float(self.strength), float(self.start),
                          float(self.end), bool(self.guess_mode),
                          where=f"Apply ControlNet '{ctx.node_id}'")
        return self.denoiser.with_control(control)


@node("controlnet.canny", title="Canny Edges", category="controlnet", version="1.0.0",
      outputs=[Output("image", IMAGE, "white edges on black, for a canny ControlNet")])
class CannyEdges:
    """Edges of an image with OpenCV's Canny detector (what canny ControlNets were trained on):
    gradients above `high` start an edge, edges continue down to `low`."""

    image = Input(IMAGE)
    low = Input(INT, default=100, min=0, max=1000, description="lower hysteresis threshold")
    high = Input(INT, default=200, min=0, max=1000, description="upper hysteresis threshold")

    def run(self, ctx: RunContext):
        from nodes.lib.annotators import canny

        if self.low > self.high:
            raise NodeInputError("low", f"the low threshold {self.low} is above the high one "
                                 f"{self.high}")
        return canny(self.image, int(self.low), int(self.high))


@node("controlnet.shuffle", title="Content Shuffle", category="controlnet", version="1.0.0",
      outputs=[Output("image", IMAGE, "the image's colours and textures, rearranged")])
class ContentShuffle:
    """Warp an image along a smooth random flow (OpenCV remap), keeping its colours and
    textures but not its layout: the control image of a shuffle ControlNet."""

    image = Input(IMAGE)
    seed = Input(INT, default=0, min=0, max=2**63 - 1, widget="seed")
    cell = Input(INT, default=256, min=8, max=4096,
                 description="size in pixels of the flow's random features (smaller: finer "
                             "shuffling)")

    def run(self, ctx: RunContext):
        from nodes.lib.annotators import content_shuffle

        return content_shuffle(self.image, int(self.seed), int(self.cell))
