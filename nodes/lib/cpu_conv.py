"""Which CPU convolution kernel each of a UNet's convolutions runs on.

PyTorch sends a float CPU convolution to oneDNN, which lays the weights out again on every call
(no prepacking outside torch.compile or IPEX). That costs time in proportion to the weights,
while the useful work is weights × output pixels: for the wide convolutions of a UNet's lowest
levels (SD's 1280 → 1280 and 2560 → 1280 3×3 at 4×4-16×16 latents) the re-layout dominates and
PyTorch's own im2col + GEMM path is 1.5-3.5× faster. Measured per convolution on a 2-core
Xeon (benchmarks/bench_sd.py reports the effect on whole images):

- latents of at most 8×8 pixels (the built-in model's 64×64 images): the native path for every
  convolution, 17-23 % faster per UNet call;
- weights of at least 12 M values with at most 512 output pixels in the batch (N·H·W): native,
  e.g. 2560 → 1280 at 4×4, batch 2: 14.8 ms against 56 ms; at 32×32 or at batch 8 and 8×8 the
  two are even or oneDNN wins, and below 12 M weights oneDNN mostly wins or ties.

One SD 1.5 UNet call at batch 2 (a CFG step), routed / all oneDNN: 0.66× at 16×16 latents
(128 px images), 0.72× at 32×32 (256 px), 0.95× at 64×64 (512 px).

Only float32 is routed: in bf16 and fp16 oneDNN is the fast path (AMX / AVX512-BF16), and the
native kernel is many times slower. Both paths compute the same convolution; they differ by float
rounding (about 1e-6 relative), so images agree with diffusers' pipelines within a level. The
choice is a fixed rule of the shapes, not a timing, so one seed gives the same image in every run.

The routing is a torch function mode (per thread); the switch inside it is PyTorch's
process-wide oneDNN flag, set around the one convolution and restored after; the engine runs one
node at a time, so nothing else convolves meanwhile.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

SMALL_LATENT_PIXELS = 64
"""Latents of at most this many pixels (8×8) run every convolution on the native path."""

HEAVY_WEIGHTS = 12_000_000
HEAVY_MAX_OUTPUT_PIXELS = 512
"""On larger latents, a convolution with at least HEAVY_WEIGHTS weights (out · in · kh · kw)
and at most HEAVY_MAX_OUTPUT_PIXELS output pixels over the batch (N · H · W) runs natively."""

_CONVS = (F.conv2d, torch.conv2d)


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _pair(v: Any, i: int) -> int:
    return int(v[i] if isinstance(v, (tuple, list)) else v)


def prefers_native(x: torch.Tensor, weight: torch.Tensor, stride: Any = 1, padding: Any = 0,
                   dilation: Any = 1) -> bool:
    """Whether a 2-D convolution of x [N, C, H, W] with `weight` [O, C/g, kh, kw] runs faster
    on PyTorch's native CPU kernel than on oneDNN (the rule above)."""
    if x.ndim != 4 or weight.ndim != 4 or isinstance(padding, str):
        return False
    kh, kw = weight.shape[-2:]
    h = _out_size(x.shape[-2], kh, _pair(stride, 0), _pair(padding, 0), _pair(dilation, 0))
    w = _out_size(x.shape[-1], kw, _pair(stride, 1), _pair(padding, 1), _pair(dilation, 1))
    return weight.numel() >= HEAVY_WEIGHTS and x.shape[0] * h * w <= HEAVY_MAX_OUTPUT_PIXELS


class _Routing(TorchFunctionMode):
    """Runs each 2-D convolution that `prefers_native` on the native kernel; every other call
    passes through untouched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONVS and torch._C._get_mkldnn_enabled():
            named = dict(zip(("input", "weight", "bias", "stride", "padding", "dilation"), args))
            named.update(kwargs)
            x, weight = named.get("input"), named.get("weight")
            rest = {k: named[k] for k in ("stride", "padding", "dilation") if k in named}
            if isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) \
                    and x.device.type == "cpu" and x.dtype == torch.float32 \
                    and prefers_native(x, weight, **rest):
                torch._C._set_mkldnn_enabled(False)
                try:
                    return func(*args, **kwargs)
                finally:
                    torch._C._set_mkldnn_enabled(True)
        return func(*args, **kwargs)


def conv_backend(x: torch.Tensor):
    """The context to run a UNet (and its ControlNets) on latents x in: nothing changes off the
    CPU; small CPU latents turn oneDNN off for the whole call (PyTorch's own flag context, which
    restores the previous settings); larger ones route each convolution by its shape."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return contextlib.nullcontext()
    if x.shape[-2] * x.shape[-1] <= SMALL_LATENT_PIXELS:
        return torch.backends.mkldnn.flags(enabled=False, deterministic=None, allow_tf32=None,
                                           fp32_precision=None)
    if not torch.backends.mkldnn.enabled:
        return contextlib.nullcontext()
    return _Routing()
