"""Seeded random streams that match diffusers' pipelines draw for draw.

A diffusers pipeline draws everything from one CPU generator, in a fixed order (VAE sample,
initial noise, masked-image sample, per-step noise of ancestral schedulers). In Loom those draws
happen in different nodes, so a tensor made from a seeded draw carries the generator's state after
that draw (`loom_rng`), and the next node that draws can continue the same stream instead of
starting a new one. Noise is always drawn on the CPU so a seed gives the same image on any device.
"""

from __future__ import annotations

from typing import Any

import torch

_ATTR = "loom_rng"


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded like `torch.Generator("cpu").manual_seed(seed)` in diffusers."""
    return torch.Generator("cpu").manual_seed(int(seed))


def attach(tensor: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Record `gen`'s current state on `tensor` (the stream continues after this tensor)."""
    if gen is not None:
        setattr(tensor, _ATTR, gen.get_state())
    return tensor


def state_of(value: Any) -> torch.Tensor | None:
    return getattr(value, _ATTR, None)


def continue_from(value: Any) -> torch.Generator | None:
    """A generator continuing the stream recorded on `value`, or None if it carries none."""
    state = state_of(value)
    if state is None:
        return None
    gen = torch.Generator("cpu")
    gen.set_state(state)
    return gen


def stream(seed: int, after: Any = None) -> torch.Generator:
    """Continue the stream recorded on `after` when there is one, else start one from `seed`."""
    gen = continue_from(after) if after is not None else None
    return gen if gen is not None else generator(seed)


def randn(shape: tuple[int, ...], gen: torch.Generator, device: Any = "cpu",
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise drawn on the CPU from `gen`, then moved to `device` (as diffusers'
    `randn_tensor` does for a CPU generator and a single, non-list generator)."""
    return torch.randn(shape, generator=gen, device="cpu", dtype=dtype).to(device)
