"""Fingerprints of torch values for the engine's read-only-inputs check (engine.integrity)."""

from __future__ import annotations

import hashlib

import torch


def tensor(t: torch.Tensor) -> bytes:
    """The tensor's exact content (bytes), shape and dtype."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(t.shape)}|{t.dtype}".encode())
    if t.numel():
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()


SAMPLE = 4096
"""Elements read from each weight of a module: an evenly spaced sample (every weight of a
tiny test model whole), so the check stays cheap on multi-GB checkpoints yet sees a weight
changed in place (a patch fused into it, a dtype change not undone)."""


def module(m: torch.nn.Module) -> bytes:
    """Shapes, dtypes and sampled content of a module's parameters and buffers. Content, not
    storage addresses: moving weights away and back unchanged (the VAE's fp32 upcast) is not a
    change."""
    h = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, p in m.state_dict(keep_vars=True).items():
            if not isinstance(p, torch.Tensor):
                continue
            flat = p.detach().reshape(-1)
            h.update(f"{name}|{tuple(p.shape)}|{p.dtype}".encode())
            if flat.numel() > SAMPLE:
                idx = torch.linspace(0, flat.numel() - 1, SAMPLE, device=flat.device).long()
                flat = flat[idx]
            if flat.numel():
                h.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.digest()
