"""Seeded random streams that match diffusers' pipelines draw for draw, as explicit values.

A diffusers pipeline draws everything from one CPU generator, in a fixed order (VAE sample,
initial noise, masked-image sample, per-step noise of ancestral schedulers). In Loom those draws
happen in different nodes, so the stream travels on edges as a value of its own:

- `RandomStream` (socket type RNG): the generator's state after the draws so far. VAE Encode and
  Latent Noise output one; Latent Noise, Inpaint Conditioning and the Sampler can continue it.
- `Noise` (socket type NOISE): unit Gaussian noise *and* the stream after it, what Latent Noise
  hands to the Sampler (whose stochastic schedulers continue the stream for their per-step noise).

Nothing rides on tensor attributes, so no tensor operation can drop a stream. Noise is always
drawn on the CPU so a seed gives the same image on any device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True, eq=False)
class RandomStream:
    """A position in a seeded CPU random stream: `seed` it started from, `draws` how many
    tensors were drawn from it so far, `state` the generator state after them."""

    seed: int
    draws: int
    state: torch.Tensor

    def generator(self) -> torch.Generator:
        """A fresh generator at this position (the stream value itself never changes)."""
        gen = torch.Generator("cpu")
        gen.set_state(self.state)
        return gen

    def __loom_cache_size__(self) -> int:
        return int(self.state.numel()) + 64

    def __repr__(self) -> str:
        return f"RandomStream(seed={self.seed}, draws={self.draws})"


@dataclass(frozen=True, eq=False)
class Noise:
    """Unit Gaussian noise `samples` [B, C, h, w] and the stream that continues after it."""

    samples: torch.Tensor
    stream: RandomStream

    @property
    def shape(self) -> torch.Size:
        return self.samples.shape

    def __loom_cache_size__(self) -> int:
        return int(self.samples.element_size() * self.samples.nelement()) + 64


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded like `torch.Generator("cpu").manual_seed(seed)` in diffusers."""
    return torch.Generator("cpu").manual_seed(int(seed))


class Stream:
    """A generator being drawn from inside one node; `position()` is the value to hand on."""

    def __init__(self, seed: int, draws: int, gen: torch.Generator):
        self.seed, self.draws, self.gen = int(seed), int(draws), gen

    @classmethod
    def start(cls, seed: int) -> Stream:
        return cls(seed, 0, generator(seed))

    @classmethod
    def resume(cls, stream: RandomStream) -> Stream:
        return cls(stream.seed, stream.draws, stream.generator())

    @classmethod
    def of(cls, seed: int, after: RandomStream | None) -> Stream:
        """Continue `after` when given, else start from `seed`."""
        return cls.resume(after) if after is not None else cls.start(seed)

    def randn(self, shape: tuple[int, ...], device: Any = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal noise drawn on the CPU, then moved to `device` (as diffusers'
        `randn_tensor` does for a single CPU generator)."""
        self.draws += 1
        return torch.randn(shape, generator=self.gen, device="cpu", dtype=dtype).to(device)

    def used(self) -> None:
        """Count a draw made by someone else with `self.gen` (a VAE sample, a scheduler)."""
        self.draws += 1

    def position(self) -> RandomStream:
        return RandomStream(self.seed, self.draws, self.gen.get_state())
