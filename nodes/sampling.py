"""Sampling, decomposed: a schedule, the model's one-step prediction, guidance, and the loop.

Values on DENOISER edges are functions (nodes.lib.denoise); the Sampler builds a fresh diffusers
scheduler from the SCHEDULER description on every run because schedulers keep state.
"""

from __future__ import annotations

from engine.errors import NodeInputError
from engine.node import Input, Output, RunContext, node
from engine.types import FLOAT, INT, STRING, TYPES
from nodes._types import (
    CONDITIONING,
    DENOISER,
    GUIDED_DENOISER,
    LATENT,
    MASK,
    MODEL,
    NOISE,
    RNG,
    SCHEDULER,
)
from nodes.lib.schedules import SCHEDULER_NAMES

IMAGE_COND = "IMAGE_COND"
"""nodes.lib.denoise.ImageConditioning: channels concatenated to the UNet input (inpainting
models' mask + masked-image latents, the x4 upscaler's low-res image) and class labels."""
TYPES.register(IMAGE_COND, "#aed581", description="image conditioning for the UNet")



@node("sampling.scheduler", title="Scheduler", category="sampling", version="1.0.0",
      outputs=[Output("scheduler", SCHEDULER)])
class SchedulerNode:
    """Which sampler algorithm, how many steps, and which part of the schedule to run
    (strength for img2img; start/end to hand off from an SDXL base to a refiner)."""

    model = Input(MODEL, description="the model whose scheduler config and prediction type to use")
    name = Input(STRING, default="euler", choices=SCHEDULER_NAMES,
                 description="'default' is the checkpoint's own scheduler")
    steps = Input(INT, default=20, min=1, max=1000)
    strength = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.01, widget="slider",
                     description="img2img: how much of the init image to repaint (1 = all)")
    start = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.01,
                  description="start this far into the schedule (refiner; overrides strength)")
    end = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.01,
                description="stop this far into the schedule (base model before a refiner)")
    eta = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.01,
                description="DDIM/DDPM stochasticity (ignored by other schedulers)")

    def run(self, ctx: RunContext):
        from nodes.lib.schedules import SchedulerSpec

        if 0.0 < self.start < 1.0 and 0.0 < self.end < 1.0 and self.start >= self.end:
            raise NodeInputError("start", f"start {self.start} must be below end {self.end}")
        if self.strength <= 0.0:
            raise NodeInputError("strength", "strength 0 would not change the image; use > 0")
        config = dict(self.model.scheduler_config or {})
        overrides = {}
        if self.model.prediction_type:
            overrides["prediction_type"] = self.model.prediction_type
        spec = SchedulerSpec(self.name, config, int(self.steps), float(self.strength),
                             float(self.start), float(self.end), overrides, float(self.eta))
        spec.build()  # fail here, naming this node, if the config does not fit the class
        return spec


@node("sampling.unet_step", title="UNet Step", category="sampling", version="1.0.0",
      outputs=[Output("denoiser", DENOISER)])
class UNetStepNode:
    """The model's one-step prediction for given latents, timestep and conditioning."""

    model = Input(MODEL)

    def run(self, ctx: RunContext):
        from nodes.lib.denoise import UNetDenoiser

        return UNetDenoiser(self.model)


@node("sampling.cfg_combine", title="CFG Combine", category="sampling", version="1.1.0",
      outputs=[Output("denoiser", GUIDED_DENOISER)])
class CFGCombineNode:
    """Push the prediction from the unconditional towards the conditional one."""

    denoiser = Input(DENOISER)
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING, optional=True, connection_only=True,
                     description="needed when scale > 1")
    scale = Input(FLOAT, default=7.0, min=0.0, max=30.0, step=0.1, description="guidance scale")
    rescale = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.01,
                    description="guidance rescale (fixes over-exposure, esp. v-prediction)")
    start = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.05,
                  description="guide from this point of the denoising on (0 = pure noise)")
    end = Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.05,
                description="guide up to this point (1 = the clean image); the steps "
                            "outside [start, end] run unguided, one UNet row instead of two")

    def run(self, ctx: RunContext):
        from nodes.lib.denoise import GuidedDenoiser

        if getattr(self.denoiser, "guided", False):
            raise NodeInputError("denoiser", "is already guided; connect a UNet Step")
        if self.scale > 1.0 and self.negative is None:
            raise NodeInputError("negative", "guidance scale > 1 needs a negative conditioning "
                                 "(Negative Prompt, or an empty prompt)")
        if self.start > self.end:
            raise NodeInputError("start", f"the guidance interval starts ({self.start}) after "
                                 f"it ends ({self.end})")
        return GuidedDenoiser(self.denoiser, self.positive, self.negative, self.scale,
                              self.rescale, self.start, self.end)


@node("sampling.sampler", title="Sampler", category="sampling", version="1.2.0",
      outputs=[Output("latent", LATENT),
               Output("rng", RNG, "the random stream after sampling (after the per-step "
                                  "noise of stochastic schedulers): a next stage drawn from "
                                  "the same generator continues it (Karlo's super-resolution)")])
class SamplerNode:
    """The denoising loop: start from noise (or a noised init latent), step the scheduler with
    the guided denoiser, blend the known region when inpainting with an ordinary model."""

    denoiser = Input(GUIDED_DENOISER,
                     description="a guided denoiser (CFG Combine; scale 1 for no guidance)")
    scheduler = Input(SCHEDULER)
    noise = Input(NOISE, optional=True, connection_only=True,
                  description="Latent Noise (unit noise and its random stream)")
    init = Input(LATENT, optional=True, connection_only=True,
                 description="img2img / inpaint: the image's latent")
    mask = Input(MASK, optional=True, connection_only=True,
                 description="inpaint with an ordinary model: 1 = repaint, 0 = keep")
    image_cond = Input(IMAGE_COND, optional=True, connection_only=True,
                       description="inpainting / upscaler model conditioning")
    rng = Input(RNG, optional=True, connection_only=True,
                description="random stream for stochastic schedulers' per-step noise (ancestral, "
                "SDE, DDPM); default: continue the image_cond's or the noise's stream, or seed 0")

    def run(self, ctx: RunContext):
        from nodes.lib.sampler import Hooks, SamplerInputError, sample

        if not getattr(self.denoiser, "guided", False):
            raise NodeInputError("denoiser", "connect it through CFG Combine, which supplies "
                                 "the prompts (use scale 1 for no guidance)")
        hooks = Hooks(progress=ctx.progress, check_cancelled=ctx.check_cancelled,
                      preview=bool(ctx.options.get("previews", True)))
        try:
            return sample(self.denoiser, self.scheduler, self.noise, self.init, self.mask,
                          self.image_cond, hooks, family=self.denoiser.model.family,
                          stream=self.rng, return_stream=True)
        except SamplerInputError as exc:
            raise NodeInputError(exc.input, str(exc)) from None
