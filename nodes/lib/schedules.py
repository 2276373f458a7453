"""Scheduler descriptions (what travels on SCHEDULER edges) and the timestep plans of diffusers'
pipelines: plain steps, img2img `strength`, and SDXL's `denoising_start` / `denoising_end`.

Schedulers are stateful (step index, multistep history), so the edge carries a description and
the sampler builds a fresh scheduler for every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# name -> (diffusers class name, config overrides). "default" is the checkpoint's own scheduler.
SCHEDULERS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "default": (None, {}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler",
                 {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++", "solver_order": 2,
                         "use_karras_sigmas": True}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler",
                     {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                      "use_karras_sigmas": False}),
    "dpmpp_2m_sde_karras": ("DPMSolverMultistepScheduler",
                            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                             "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
}
SCHEDULER_NAMES = tuple(SCHEDULERS)


@dataclass(frozen=True)
class SchedulerSpec:
    """A sampling schedule: which scheduler, built from which config, over which timesteps."""

    name: str
    config: dict[str, Any]
    steps: int
    strength: float = 1.0
    start: float = 0.0  # diffusers' denoising_start (0 = from the beginning)
    end: float = 1.0  # diffusers' denoising_end (1 = to the end)
    overrides: dict[str, Any] = field(default_factory=dict)
    eta: float = 0.0  # DDIM / DDPM-style stochasticity (passed to step() where accepted)

    def __loom_cache_size__(self) -> int:
        return 1024

    @property
    def uses_start(self) -> bool:
        return 0.0 < self.start < 1.0

    @property
    def uses_end(self) -> bool:
        return 0.0 < self.end < 1.0

    def build(self) -> Any:
        """A fresh diffusers scheduler for this description."""
        import diffusers

        cls_name, overrides = SCHEDULERS[self.name]
        if cls_name is None:
            cls_name = self.config.get("_class_name") or "PNDMScheduler"
        cls = getattr(diffusers, cls_name, None)
        if cls is None:
            raise ValueError(f"diffusers has no scheduler class {cls_name!r}")
        return cls.from_config(dict(self.config), **{**overrides, **self.overrides})


@dataclass
class Plan:
    """The timesteps one sampler run goes through, and how its first latent is made."""

    scheduler: Any
    timesteps: Any  # 1-D tensor
    from_init: bool  # the first latent comes from an init latent (img2img / refiner)
    add_noise: bool  # ... noised to the first timestep (False for denoising_start)


def plan(spec: SchedulerSpec, device: Any, has_init: bool) -> Plan:
    """Set up a fresh scheduler and cut its timesteps like the diffusers pipelines do.

    strength < 1 follows StableDiffusionImg2ImgPipeline.get_timesteps; `start` follows
    StableDiffusionXLImg2ImgPipeline.get_timesteps(denoising_start=...); `end` follows the
    denoising_end cut of StableDiffusionXLPipeline.
    """
    sched = spec.build()
    sched.set_timesteps(spec.steps, device=device)
    timesteps = sched.timesteps
    order = getattr(sched, "order", 1)
    n_train = sched.config.num_train_timesteps
    from_init, add_noise = False, False
    if spec.uses_start and has_init:
        cutoff = int(round(n_train - spec.start * n_train))
        n = int((timesteps < cutoff).sum().item())
        if order == 2 and n % 2 == 0:
            n += 1  # do not stop between the two evaluations of a second-order step
        t_start = len(timesteps) - n
        timesteps = timesteps[t_start:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(t_start)
        from_init = True
    elif has_init:
        init_timestep = min(int(spec.steps * spec.strength), spec.steps)
        t_start = max(spec.steps - init_timestep, 0)
        timesteps = timesteps[t_start * order:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(t_start * order)
        from_init, add_noise = True, True
    if spec.uses_end:
        cutoff = int(round(n_train - spec.end * n_train))
        keep = len([t for t in timesteps if t >= cutoff])
        timesteps = timesteps[:keep]
    return Plan(sched, timesteps, from_init, add_noise)
