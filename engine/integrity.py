"""Read-only inputs, checked: fingerprints of the values a node receives, taken before and after
it runs, so a node that changes a cached value in place is named instead of silently corrupting
every later run that reuses the value.

The engine does not import torch: value kinds it cannot see into (tensors, modules) get their
fingerprint from a function registered by type name ("torch.Tensor") and dotted path
("nodes.lib.fingerprints:tensor"), imported the first time such a value is met. Containers
(dict, list, tuple), dataclasses and objects with a `__loom_fingerprint__()` method are walked
here; anything else (functions, generators) counts as opaque.

The check costs a hash of every input tensor twice per node, so it is off by default: tests turn
it on (the environment variable LOOM_CHECK_MUTATIONS=1, or the run option `check_mutations`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
from collections.abc import Callable
from typing import Any

ENV = "LOOM_CHECK_MUTATIONS"
MAX_DEPTH = 8

_registered: dict[str, str | Callable[[Any], bytes]] = {}


def register_fingerprinter(type_name: str, fn: str | Callable[[Any], bytes]) -> None:
    """Fingerprint values whose class (or a base class) is `type_name` ("module.QualName")
    with `fn`: a callable returning bytes, or "package.module:function", imported on first use."""
    _registered[type_name] = fn


def enabled(options: dict[str, Any] | None = None) -> bool:
    if options and "check_mutations" in options:
        return bool(options["check_mutations"])
    return os.environ.get(ENV, "") not in ("", "0", "false", "no")


def _lookup(value: Any) -> Callable[[Any], bytes] | None:
    if not _registered:
        return None
    for klass in type(value).__mro__:
        name = f"{klass.__module__}.{klass.__qualname__}"
        fn = _registered.get(name)
        if fn is None:
            continue
        if isinstance(fn, str):
            module, _, attr = fn.partition(":")
            fn = getattr(importlib.import_module(module), attr)
            _registered[name] = fn
        return fn
    return None


def fingerprint(value: Any) -> str:
    """A digest of everything visible in `value` (see the module docstring)."""
    h = hashlib.blake2b(digest_size=16)
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        cur, depth = stack.pop()
        if cur is None or isinstance(cur, (bool, int, float, str, bytes)):
            h.update(repr(cur).encode("utf-8", "surrogatepass"))
            continue
        if id(cur) in seen or depth > MAX_DEPTH:
            continue
        seen.add(id(cur))
        fn = _lookup(cur)
        if fn is not None:
            h.update(fn(cur))
            continue
        custom = getattr(cur, "__loom_fingerprint__", None)
        if callable(custom):
            h.update(str(custom()).encode())
        elif isinstance(cur, dict):
            for k, v in cur.items():
                h.update(repr(k).encode("utf-8", "surrogatepass"))
                stack.append((v, depth + 1))
        elif isinstance(cur, (list, tuple)):
            h.update(b"[%d]" % len(cur))
            stack.extend((v, depth + 1) for v in cur)
        elif dataclasses.is_dataclass(cur) and not isinstance(cur, type):
            for f in dataclasses.fields(cur):
                h.update(f.name.encode())
                stack.append((getattr(cur, f.name, None), depth + 1))
        elif hasattr(cur, "__dict__") and not isinstance(cur, type):
            # value objects (bundles, specs) and callable ones (denoisers hold the tensors
            # they close over as attributes)
            for k, v in vars(cur).items():
                h.update(k.encode())
                stack.append((v, depth + 1))
    return h.hexdigest()
