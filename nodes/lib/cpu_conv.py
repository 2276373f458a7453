"""Which CPU convolution kernel each of a UNet's (or VAE decoder's) convolutions runs on.

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

Inside the routing, a 3×3 convolution of a nearest 2× upsampling (the upsamplers of UNets and VAE
decoders) is computed from the source as four 2×2 convolutions, one per output phase: 16/36 of
the multiply-adds and no upsampled input to read (`upsampled_conv`; VAE decode at 256 px 0.93×,
SD's 640-wide UNet upsampler 0.69-0.74× per call). Only where measured faster: see
SUBPIXEL_MIN_PIXELS.

The routing is a torch function mode (per thread); the switch inside it is PyTorch's
process-wide oneDNN flag, set around the one convolution and restored after; the engine runs one
node at a time, so nothing else convolves meanwhile.
"""

from __future__ import annotations

import contextlib
import weakref
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


def named_args(names: tuple[str, ...], args: tuple, kwargs: dict) -> dict[str, Any]:
    """A torch function's arguments by name, whether given by position or keyword (for the
    function modes that look at them)."""
    named = dict(zip(names, args))
    named.update(kwargs)
    return named


_INTERPOLATE_ARGS = ("input", "size", "scale_factor", "mode", "align_corners",
                     "recompute_scale_factor", "antialias")
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def _is_nearest_x2(args: tuple, kwargs: dict) -> bool:
    """Whether an F.interpolate call is a plain nearest-neighbour doubling of a 4-D tensor (the
    upsampler of diffusers' UNets and VAE decoders)."""
    named = named_args(_INTERPOLATE_ARGS, args, kwargs)
    x = named.get("input")
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or named.get("mode", "nearest") != "nearest":
        return False
    if named.get("align_corners") or named.get("recompute_scale_factor") \
            or named.get("antialias"):
        return False
    size, scale = named.get("size"), named.get("scale_factor")
    if size is not None:
        return scale is None and _pair(size, 0) == 2 * x.shape[-2] \
            and _pair(size, 1) == 2 * x.shape[-1]
    return scale is not None and float(_pair(scale, 0)) == 2.0 and float(_pair(scale, 1)) == 2.0


def _taps() -> torch.Tensor:
    """[9, 16]: which taps of a 3×3 kernel add up to each tap (u, v) of the 2×2 kernel of output
    phase (a, b) (columns in the order a, b, u, v), after a nearest 2× upsampling.

    Output row 2i + a of (upsample, then 3×3 with padding 1) reads upsampled rows 2i + a - 1 ..
    2i + a + 1, which are source rows i - 1, i, i for a = 0 and i, i, i + 1 for a = 1: kernel
    rows {0} and {1, 2} for a = 0, {0, 1} and {2} for a = 1. Columns alike."""
    rows = (((0,), (1, 2)), ((0, 1), (2,)))
    t = torch.zeros(3, 3, 2, 2, 2, 2)
    for a in range(2):
        for b in range(2):
            for u in range(2):
                for v in range(2):
                    for i in rows[a][u]:
                        for j in rows[b][v]:
                            t[i, j, a, b, u, v] = 1.0
    return t.reshape(9, 16)


_TAPS = _taps()

SUBPIXEL_MIN_PIXELS = 512
"""An upsampling 3×3 convolution with fewer than HEAVY_WEIGHTS weights is computed from the
source pixels once they number at least this many over the batch (N · H · W before doubling).
Measured per convolution, upsampled_conv / plain: 0.74 for SD's 640-wide UNet upsampler at
16×16 and 0.69 at 32×32 (batch 2), 0.45-0.64 for the VAE decoder's at 256 px images; the
1280-wide ones (14.7 M weights) gain nothing at 16×16 (0.91-0.97) and lose at 4×4 and 8×8, where
2×2 kernels with few pixels run slowly and the phase kernels take longer to build."""


def upsampled_conv(x: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1) for a 3×3
    `weight`, without the upsampled input: each of the four output phases (row and column
    parity) is a 2×2 convolution of x with summed taps, 16 / 36 of the multiply-adds. Equal to
    the plain computation within float rounding."""
    n, _, h, w = x.shape
    out_ch, in_ch = weight.shape[:2]
    phases = (weight.reshape(out_ch * in_ch, 9) @ _TAPS.to(weight.dtype)) \
        .view(out_ch, in_ch, 2, 2, 2, 2).permute(2, 3, 0, 1, 4, 5)
    padded = F.pad(x, (1, 1, 1, 1))
    out = x.new_empty(n, out_ch, h, 2, w, 2)
    for a in range(2):
        for b in range(2):
            window = padded[:, :, a:a + h + 1, b:b + w + 1]
            out[:, :, :, a, :, b] = F.conv2d(window, phases[a, b].contiguous(), bias)
    return out.view(n, out_ch, 2 * h, 2 * w)


def _plain_3x3(weight: torch.Tensor, named: dict) -> bool:
    """A 3×3, stride 1, padding 1, undilated, ungrouped convolution (Conv2d(c, o, 3, padding=1))."""
    if weight.ndim != 4 or tuple(weight.shape[-2:]) != (3, 3) or named.get("groups", 1) != 1:
        return False
    for key, want in (("stride", 1), ("padding", 1), ("dilation", 1)):
        v = named.get(key, 0 if key == "padding" else 1)
        if isinstance(v, str) or _pair(v, 0) != want or _pair(v, 1) != want:
            return False
    return True


class _Routing(TorchFunctionMode):
    """Runs each 2-D convolution that `prefers_native` on the native kernel, and a 3×3
    convolution of a nearest 2× upsampling (the tensor F.interpolate has just returned, untouched
    since) as `upsampled_conv` of its source; every other call passes through untouched."""

    def __init__(self) -> None:
        super().__init__()
        self._upsampled: tuple[weakref.ref, int, torch.Tensor, int] | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.interpolate:
            out = func(*args, **kwargs)
            self._upsampled = None
            source = args[0] if args else kwargs.get("input")
            if _is_nearest_x2(args, kwargs) and isinstance(out, torch.Tensor) \
                    and not out.is_inference() and not source.is_inference():
                self._upsampled = (weakref.ref(out), out._version, source, source._version)
            return out
        if func in _CONVS and torch._C._get_mkldnn_enabled():
            named = named_args(_CONV_ARGS, args, kwargs)
            x, weight = named.get("input"), named.get("weight")
            if isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) \
                    and x.device.type == "cpu" and x.dtype == torch.float32:
                source = self._source(x, weight, named)
                if source is not None:
                    return upsampled_conv(source, weight, named.get("bias"))
                rest = {k: named[k] for k in ("stride", "padding", "dilation") if k in named}
                if prefers_native(x, weight, **rest):
                    torch._C._set_mkldnn_enabled(False)
                    try:
                        return func(*args, **kwargs)
                    finally:
                        torch._C._set_mkldnn_enabled(True)
        return func(*args, **kwargs)

    def _source(self, x: torch.Tensor, weight: torch.Tensor, named: dict) -> torch.Tensor | None:
        """The tensor x is the unchanged nearest 2× upsampling of, when this convolution is worth
        computing from it (and no gradient is being recorded); None otherwise."""
        if self._upsampled is None:
            return None
        ref, version, source, source_version = self._upsampled
        if ref() is not x or x._version != version or source._version != source_version:
            return None
        self._upsampled = None
        if torch.is_grad_enabled() or not _plain_3x3(weight, named) \
                or source.shape[0] * source.shape[-2] * source.shape[-1] < SUBPIXEL_MIN_PIXELS \
                or weight.numel() >= HEAVY_WEIGHTS:
            return None
        return source


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


def decoder_backend(x: torch.Tensor):
    """The context to run a VAE decoder on CPU latents x in: every convolution routed as in a
    UNet call of larger latents (the decoders' upsampling convolutions gain most: their images
    are large), with no small-latent switch (measured on UNets only). Nothing changes off the
    CPU, outside float32 or with oneDNN turned off."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not torch.backends.mkldnn.enabled:
        return contextlib.nullcontext()
    return _Routing()
