"""ComfyUI's sampler and scheduler names -> Loom's Scheduler choices (nodes/lib/schedules.py).

ComfyUI names a sampler (the integration method: euler, dpmpp_2m, ...) and a scheduler (the
noise levels: normal, karras, ...) separately; a Loom Scheduler choice is a diffusers scheduler
class with its settings, which fixes both. The method maps one to one where diffusers has it;
the noise levels never match exactly (docs/comfyui.md, "What differs numerically"): diffusers
places the steps by the checkpoint's scheduler config (SD 1.x: "leading", timesteps 951, 901,
... 1 for 20 steps) where ComfyUI's "normal" spreads them from sigma_max to sigma_min (timesteps
999 ... 0); Karras sigmas in diffusers span the spaced timesteps' sigmas, ComfyUI's the model's
whole range, and ComfyUI calls the model at the nearest whole timestep of each sigma.
"""

from __future__ import annotations

# ComfyUI sampler -> Loom scheduler choice with the same integration method
SAMPLERS: dict[str, str] = {
    "euler": "euler",
    "euler_ancestral": "euler_ancestral",
    "heun": "heun",
    "lms": "lms",
    "ddim": "ddim",
    "ddpm": "ddpm",
    "dpmpp_2m": "dpmpp_2m",
    "dpmpp_2m_sde": "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu": "dpmpp_2m_sde",
    "uni_pc": "unipc",
    "uni_pc_bh2": "unipc",
    "deis": "deis",
}

# ComfyUI samplers Loom has no counterpart of: the nearest choice, and why it differs
NEAREST: dict[str, tuple[str, str]] = {
    "euler_cfg_pp": ("euler", "CFG++ guidance is not in Loom"),
    "euler_ancestral_cfg_pp": ("euler_ancestral", "CFG++ guidance is not in Loom"),
    "heunpp2": ("heun", "Heun++ is not in Loom"),
    "dpm_2": ("heun", "DPM-2 is not in Loom; Heun is second-order too"),
    "dpm_2_ancestral": ("euler_ancestral", "DPM-2 ancestral is not in Loom"),
    "dpmpp_2s_ancestral": ("euler_ancestral", "DPM++ 2S ancestral is not in Loom"),
    "dpmpp_2s_ancestral_cfg_pp": ("euler_ancestral", "DPM++ 2S ancestral is not in Loom"),
    "dpmpp_sde": ("dpmpp_2m_sde", "DPM++ SDE (single-step) is not in Loom"),
    "dpmpp_sde_gpu": ("dpmpp_2m_sde", "DPM++ SDE (single-step) is not in Loom"),
    "dpmpp_2m_cfg_pp": ("dpmpp_2m", "CFG++ guidance is not in Loom"),
    "dpmpp_3m_sde": ("dpmpp_2m_sde", "DPM++ 3M SDE is not in Loom"),
    "dpmpp_3m_sde_gpu": ("dpmpp_2m_sde", "DPM++ 3M SDE is not in Loom"),
    "dpm_fast": ("dpmpp_2m", "DPM fast is not in Loom"),
    "dpm_adaptive": ("dpmpp_2m", "DPM adaptive (its own step count) is not in Loom"),
    "ipndm": ("pndm", "iPNDM is not in Loom; PNDM is the nearest multistep method"),
    "ipndm_v": ("pndm", "iPNDM-v is not in Loom; PNDM is the nearest multistep method"),
    "lcm": ("euler", "the LCM sampler is not in Loom (an LCM model needs it)"),
    "res_multistep": ("dpmpp_2m", "RES multistep is not in Loom"),
    "gradient_estimation": ("euler", "gradient estimation is not in Loom"),
}

# Loom choices that use Karras sigmas, by base choice
KARRAS: dict[str, str] = {
    "dpmpp_2m": "dpmpp_2m_karras",
    "dpmpp_2m_sde": "dpmpp_2m_sde_karras",
}

# ComfyUI schedulers whose noise levels Loom's plain choices approximate (diffusers' timestep
# spacing from the checkpoint's config); the others are approximated with a note
PLAIN_SCHEDULES = ("normal", "simple", "sgm_uniform", "ddim_uniform")
STOCHASTIC = ("euler_ancestral", "ddpm", "dpmpp_2m_sde", "dpmpp_2m_sde_karras")
"""Loom choices that draw noise on every step: ComfyUI draws that noise from its own seeded
generator (a Brownian tree for the SDE samplers), Loom continues the initial noise's stream as
diffusers does, so these never match ComfyUI's pictures step for step."""


def loom_scheduler(sampler: object, scheduler: object,
                   choices: tuple[str, ...] | None = None) -> tuple[str, list[str]]:
    """(Loom scheduler choice, notes) for a ComfyUI sampler_name and scheduler. Notes say
    what is approximated (each a sentence without the node's name)."""
    notes: list[str] = []
    sampler = str(sampler)
    scheduler = str(scheduler)
    if sampler in SAMPLERS:
        base = SAMPLERS[sampler]
    elif sampler in NEAREST:
        base, why = NEAREST[sampler]
        notes.append(f"sampler '{sampler}': {why}; imported as '{base}'")
    else:
        base = "euler"
        notes.append(f"sampler '{sampler}' is unknown to this importer; imported as 'euler'")
    name = base
    if scheduler == "karras":
        if base in KARRAS:
            name = KARRAS[base]
        else:
            notes.append(f"Loom has no Karras-sigma variant of '{base}'; imported with its "
                         "plain spacing")
    elif scheduler not in PLAIN_SCHEDULES:
        notes.append(f"scheduler '{scheduler}' is not in Loom; imported with '{base}''s plain "
                     "spacing")
    if choices is not None and name not in choices:
        notes.append(f"this Loom's Scheduler has no '{name}'; imported as 'euler'")
        name = "euler"
    return name, notes
