"""GPU memory: where a loaded model's weights live between and during the nodes that use them.

Modes (`--vram`, the run option "vram", or LOOM_VRAM; process-wide like the model manager):
  high  every model stays on the GPU once loaded (fastest; runs out of memory if they do not
        fit together).
  auto  (default) models stay on the GPU while they fit in the VRAM budget; when a model is
        borrowed and there is no room, the least recently used others move to CPU RAM (whole
        models between nodes, as ComfyUI's normal mode and diffusers' model CPU offload do),
        and a model that does not fit the budget even alone runs block by block.
  low   only the model in use is on the GPU: borrowing one moves every other to CPU RAM
        (smallest VRAM that still runs each model whole).
  none  every model runs block by block from CPU RAM (each submodule's weights are copied to
        the GPU just for its forward, as accelerate's sequential CPU offload does), the least
        VRAM and the slowest.

How it fits the model manager (nodes.lib.model_manager, the one owner of model memory): a
loader builds a component on the CPU and hands it to `stage`, which (high) moves it to the
device, (auto/low) leaves it on the CPU marked with the device it runs on, or (none) installs
the block-offload hooks. The manager moves marked modules in when a node borrows them
(`ModelHandle.get`) and out when another needs the room, counting bytes per device against
`budget`. Nothing else moves weights, so a node never finds a half-moved model.

On the CPU all of this is a no-op: the weights already are where they run. Tests exercise the
machinery on the CPU by adding "cpu" to OFFLOAD_DEVICE_TYPES and setting a budget.

Noise stays CPU-seeded in every mode (nodes.lib.rng), so a seed gives the same image in all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

MODES = ("auto", "high", "low", "none")
ENV = "LOOM_VRAM"
BUDGET_ENV = "LOOM_VRAM_GB"
OFFLOAD_DEVICE_TYPES = {"cuda", "mps"}
"""Devices whose memory is managed; others run models where they were loaded."""
RESERVE_FRACTION = 0.15
RESERVE_MIN = 1 << 30
"""Of a GPU's memory, kept free for activations (attention, the VAE's decode at full size):
max(1 GiB, 15 %)."""
EXEC_ATTR = "_loom_exec_device"
"""Set on a staged module: the device it runs on (it may sit on the CPU between uses)."""
BLOCK_ATTR = "_loom_block_offload"
"""Set on a block-offloaded module: the device its blocks run on."""

_mode: str | None = None
_budgets: dict[str, int] = {}


def normalise(mode: str | None) -> str:
    value = (mode or "auto").strip().lower()
    if value not in MODES:
        raise ValueError(f"unknown VRAM mode {mode!r}; use one of {', '.join(MODES)}")
    return value


def set_mode(mode: str | None) -> None:
    """Set the process's VRAM mode (None: back to LOOM_VRAM or auto). Models already loaded
    keep their placement until reloaded, except that high/auto/low apply at their next borrow."""
    global _mode
    _mode = None if mode is None else normalise(mode)


def current_mode() -> str:
    if _mode is not None:
        return _mode
    env = os.environ.get(ENV)
    try:
        return normalise(env) if env else "auto"
    except ValueError:
        return "auto"


def managed(device: Any) -> bool:
    """Whether weights for `device` are placed by this module (a GPU; the CPU in tests)."""
    return device is not None and torch.device(device).type in OFFLOAD_DEVICE_TYPES


def set_budget(device: Any, nbytes: int | None) -> None:
    """Fix the VRAM budget of a device type (None: back to the measured one)."""
    key = torch.device(device).type
    if nbytes is None:
        _budgets.pop(key, None)
    else:
        _budgets[key] = int(nbytes)


def budget(device: Any, resident: int = 0) -> int:
    """Bytes of weights the manager may keep on `device`: LOOM_VRAM_GB or set_budget if given,
    else what is free now plus what the manager already holds there (`resident`), less the
    activation reserve."""
    dev = torch.device(device)
    if dev.type in _budgets:
        return _budgets[dev.type]
    env = os.environ.get(BUDGET_ENV)
    if env:
        try:
            return int(float(env) * 2**30)
        except ValueError:
            pass
    free, total = memory_info(dev)
    if total <= 0:
        return 1 << 62  # unknown: no limit (the CPU)
    reserve = max(RESERVE_MIN, int(total * RESERVE_FRACTION))
    return max(0, free + resident - reserve)


def memory_info(dev: torch.device) -> tuple[int, int]:
    """(free, total) bytes of a device; (0, 0) where unknown."""
    if dev.type == "cuda" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(dev)
        return int(free), int(total)
    if dev.type == "mps":
        mps = getattr(torch, "mps", None)
        try:
            total = int(mps.recommended_max_memory())
            used = int(mps.driver_allocated_memory())
            return max(0, total - used), total
        except (AttributeError, RuntimeError):
            return 0, 0
    return 0, 0


# ---- placing modules --------------------------------------------------------------------------


def stage(module: nn.Module, device: Any) -> nn.Module:
    """A freshly loaded component (in eval mode), placed for `device` by the current mode:
    high: on the device; auto/low: on the CPU, marked to run on the device (the model
    manager moves it in when it is borrowed); none: block-offload hooks. Loaders call this
    instead of `.to(device)`."""
    module = module.eval()
    if not managed(device):
        return module.to(device)
    mode = current_mode()
    dev = torch.device(device)
    if mode == "high":
        return module.to(dev)
    if mode == "none":
        return block_offload(module, dev)
    module = module.to("cpu")
    setattr(module, EXEC_ATTR, dev)
    return module


def block_offload(module: nn.Module, device: Any) -> nn.Module:
    """Run `module` block by block from CPU RAM on `device`: every submodule that holds
    weights of its own gets hooks that copy those weights to the device just before its
    forward and back to the CPU right after (what accelerate's sequential CPU offload does,
    except that the weights stay real CPU tensors rather than meta tensors: LoRA patching,
    the VAE's fp32 upcast and the read-only-inputs check read them as usual). Idempotent."""
    dev = torch.device(device)
    if getattr(module, EXEC_ATTR, None) is not None:
        delattr(module, EXEC_ATTR)
    if getattr(module, BLOCK_ATTR, None) is not None:
        return module
    module.to("cpu")
    for sub in module.modules():
        if not any(p is not None for p in sub._parameters.values()) and \
                not any(b is not None for b in sub._buffers.values()):
            continue
        sub.register_forward_pre_hook(_bring_in(dev))
        sub.register_forward_hook(_send_back)
    setattr(module, BLOCK_ATTR, dev)
    return module


def _move_own(module: nn.Module, device: torch.device) -> None:
    """Move a module's own parameters and buffers (not its children's), keeping the Parameter
    objects (their identity is what optimisers, LoRA copies and hooks refer to)."""
    for p in module._parameters.values():
        if p is not None and p.device != device:
            p.data = p.data.to(device, non_blocking=True)
    for name, b in module._buffers.items():
        if b is not None and b.device != device:
            module._buffers[name] = b.to(device, non_blocking=True)


def _bring_in(device: torch.device):
    def hook(module: nn.Module, args: Any) -> None:
        _move_own(module, device)
    return hook


def _send_back(module: nn.Module, args: Any, output: Any) -> None:
    _move_own(module, _CPU)


_CPU = torch.device("cpu")


def staged_modules(value: Any) -> Iterator[nn.Module]:
    """The staged modules (marked with their execution device) in a manager entry's value:
    a module, or modules in a tuple / list / dict."""
    if isinstance(value, nn.Module):
        if getattr(value, EXEC_ATTR, None) is not None:
            yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from staged_modules(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from staged_modules(v)


def module_device(module: nn.Module) -> torch.device:
    """The device a module computes on: its block-offload or staged execution device when it
    has one (its parameters are then meta tensors or on the CPU), else its parameters'."""
    for attr in (BLOCK_ATTR, EXEC_ATTR):
        dev = getattr(module, attr, None)
        if dev is not None:
            return torch.device(dev)
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + \
        sum(b.numel() * b.element_size() for b in module.buffers())


class Placement(NamedTuple):
    device: torch.device
    dtype: torch.dtype


def placement(module: nn.Module) -> Placement:
    """The device and dtype a module computes in (inputs go there): module_device, and its
    parameters' dtype."""
    param = next(module.parameters(), None)
    return Placement(module_device(module),
                     param.dtype if param is not None else torch.float32)
