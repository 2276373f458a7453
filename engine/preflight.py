"""Pre-run checks: every node's `preflight` hook (see engine.node), run by `Executor.submit`
after validation and before the first node runs, and the checks nodes share (output folders,
file-name prefixes, path inputs, available memory).

Everything here is quick and changes nothing that outlives the check: a run that is refused
leaves no folder or file behind.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.errors import NodeInputError, Problem
from engine.graph import Graph
from engine.node import PreflightContext
from engine.paths import (
    not_found_message,
    path_access_problem,
    path_problem,
    resolve_path,
    shown,
)
from engine.registry import Registry

MAX_PREFIX_BYTES = 200
"""A file-name prefix leaves room for "_00001.png" and the writer's temp-file decoration within
the 255-byte limit on a name."""


def node_values(graph: Graph, nid: str, registry: Registry) -> dict[str, Any]:
    """The constant inputs of a node as its run() will see them (defaults filled in); inputs
    fed by a link are left out."""
    node = graph.nodes[nid]
    spec = registry.get(node.type)
    if spec is None:
        return dict(node.values)
    values: dict[str, Any] = {}
    for name, inp in spec.inputs.items():
        if (nid, name) in graph.links or inp.connection_only:
            continue
        if name in node.values:
            values[name] = node.values[name]
        elif inp.has_default:
            values[name] = inp.default
    return values


def preflight_problems(graph: Graph, registry: Registry, nodes: Iterable[str],
                       options: dict[str, Any]) -> list[Problem]:
    """The problems that the path inputs and the `preflight` hooks of `nodes` find, in node id
    order. A hook that raises becomes a problem of its node."""
    found: list[Problem] = []
    for nid in sorted(nodes):
        node = graph.nodes.get(nid)
        spec = registry.get(node.type) if node is not None else None
        if spec is None:
            continue
        values = node_values(graph, nid, registry)
        missing: set[str] = set()  # library inputs naming nothing: this message, not the hook's
        for name, inp in spec.inputs.items():
            value = values.get(name)
            if inp.path and isinstance(value, str) and value:
                resolved = resolve_path(value, options, inp.library)
                why = path_problem(value) or path_access_problem(resolved)
                if why is not None:
                    found.append(Problem("bad_path", why, nid, node.type, name))
                elif inp.library and not _exists(resolved):
                    missing.add(name)
                    found.append(Problem("missing_file", not_found_message(
                        value, options, inp.library), nid, node.type, name))
        hook = getattr(spec.cls, "preflight", None)
        if hook is None:
            continue
        ctx = PreflightContext(nid, node.type, options)
        try:
            items = list(hook(values, ctx) or ())
        except NodeInputError as exc:
            if exc.input not in missing:
                found.append(Problem("preflight", _message(exc), nid, node.type, exc.input))
            continue
        except Exception as exc:  # noqa: BLE001 - a faulty check must not become a traceback
            found.append(Problem("preflight_error", "the pre-run check of this node failed: "
                                 f"{type(exc).__name__}: {_message(exc)}", nid, node.type))
            continue
        for item in items:
            problem = _problem(item, nid, node.type)
            if problem.input not in missing:
                found.append(problem)
    return found


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):
        return True  # cannot tell: the node's own check says what is wrong


def _message(exc: BaseException) -> str:
    if isinstance(exc, NodeInputError):
        return str(exc).removeprefix(f"input '{exc.input}': ")
    return str(exc) or type(exc).__name__


def _problem(item: Any, nid: str, node_type: str) -> Problem:
    if isinstance(item, Problem):
        return Problem(item.code, item.message, nid, node_type, item.input)
    if isinstance(item, (tuple, list)) and len(item) in (2, 3):
        name, message = item[0], item[1]
        code = str(item[2]) if len(item) == 3 else "preflight"
        return Problem(code, str(message), nid, node_type,
                       None if name is None else str(name))
    return Problem("preflight_error", f"the pre-run check returned {item!r}, not an "
                   "(input, message) pair", nid, node_type)


# shared checks ----------------------------------------------------------------------------------


def prefix_problem(prefix: Any) -> str | None:
    """Why `prefix` cannot start the names of files written into the output folder, or None:
    it must be a plain name (no folders), not empty, not "." or "..", printable, and short
    enough to leave room for the number and suffix."""
    if not isinstance(prefix, str):
        return f"expected text, got {type(prefix).__name__}"
    from engine.files import check_prefix  # the writers' own rule, checked again when they run

    why = check_prefix(prefix)
    if why is not None:
        return why
    if not prefix.strip():
        return "must not be empty"
    if prefix in (".", "..") or ".." in prefix:
        return f"{shown(prefix)} must not contain '..'"
    if "/" in prefix or "\\" in prefix or os.path.isabs(prefix) or Path(prefix).name != prefix:
        return f"{shown(prefix)} must be a plain file-name prefix, without folders"
    if any(c in prefix for c in '\0:*?"<>|') or any(ord(c) < 32 or ord(c) == 127 for c in prefix):
        return f"{shown(prefix)} contains characters not allowed in file names"
    why = path_problem(prefix)
    if why is not None:
        return why
    n = len(os.fsencode(prefix))
    if n > MAX_PREFIX_BYTES:
        return (f"the prefix is {n} bytes long; it can be at most {MAX_PREFIX_BYTES} bytes (file "
                "names are limited to 255)")
    return None


def output_dir_problem(folder: Any) -> str | None:
    """Why files cannot be written into `folder`, or None. A folder that does not exist yet is
    fine when it can be created: its nearest existing parent must be a writable folder. Tries
    creating (and removes) a probe file; creates no folder."""
    if not isinstance(folder, (str, os.PathLike)):
        return f"the output folder must be a path, got {type(folder).__name__}"
    text = os.fspath(folder)
    if not text:
        return "no output folder given"
    why = path_problem(text)
    if why is not None:
        return f"the output folder cannot be used: {why}"
    path = os.path.abspath(text)
    here = path
    while True:
        try:
            st = os.stat(here)
            break
        except FileNotFoundError:
            parent = os.path.dirname(here)
            if parent == here:
                return f"the output folder {shown(path)} cannot be created (no existing parent)"
            here = parent
        except OSError as exc:
            return _os_problem(exc, here, path)
    if not stat.S_ISDIR(st.st_mode):
        if here == path:
            return f"the output folder {shown(path)} is a file, not a folder"
        return (f"the output folder {shown(path)} cannot be created: {shown(here)} is a file, "
                "not a folder")
    what = "the output folder" if here == path else f"the output folder's parent {shown(here)}"
    where = shown(path) if here == path else ""
    label = f"{what} {where}".rstrip()
    if not os.access(here, os.W_OK | os.X_OK):
        return f"{label} is not writable (permission denied); choose another output folder"
    from engine.files import temp_name  # a name the stale-temp-file cleaner knows

    try:
        probe = os.path.join(here, temp_name("write-check"))
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as exc:
        return f"cannot write in {label}: {exc.strerror or exc}; choose another output folder"
    return None


def file_output_problems(values: dict[str, Any], ctx: PreflightContext,
                         prefix_input: str = "prefix") -> Iterable[tuple[str | None, str, str]]:
    """The preflight of a node that writes numbered files into the output folder (Save Image,
    Save Text): its prefix input, and the output folder (a run option, so no input is named;
    the code is "bad_output_dir")."""
    if prefix_input in values:
        why = prefix_problem(values[prefix_input])
        if why is not None:
            yield prefix_input, why, "bad_prefix"
    why = output_dir_problem(ctx.output_dir)
    if why is not None:
        yield None, why, "bad_output_dir"


def _os_problem(exc: OSError, here: str, path: str) -> str:
    if exc.errno == errno.ELOOP:
        return (f"the output folder {shown(path)} is a symlink loop (links that point at each "
                "other)")
    if exc.errno == errno.ENOTDIR:
        return f"the output folder {shown(path)} cannot be created: a part of it is a file"
    if exc.errno == errno.ENAMETOOLONG:
        return f"the output folder {shown(path)} is too long a path for this file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"the output folder {shown(path)} cannot be reached (permission denied)"
    return f"the output folder {shown(path)} cannot be used: {exc.strerror or exc}"


# memory ------------------------------------------------------------------------------------------


def available_memory() -> int | None:
    """Bytes of memory this process can still allocate, or None when unknown: Linux's
    MemAvailable, lowered to the cgroup (container) limit's headroom; elsewhere the free
    physical pages (os.sysconf), which underestimates (caches are not counted)."""
    found: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        if limit.isdigit():
            with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
                found.append(max(0, int(limit) - int(f.read().strip())))
    except (OSError, ValueError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            return None
    return min(found)


def cuda_free_memory() -> int | None:
    """Free memory of the current CUDA device when torch has already initialised CUDA in this
    process (a pre-run check never starts CUDA or imports torch), else None."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            return int(torch.cuda.mem_get_info()[0])
    except Exception:  # noqa: BLE001 - an unusual torch build: the memory is simply unknown
        return None
    return None


def runs_on_cpu(device: str) -> bool:
    """Whether the heavy work of a run with this `device` option is done in main memory: the
    CPU, and Apple's MPS (unified memory). "auto" counts as the CPU where no NVIDIA GPU is
    visible (/dev/nvidia0 or /proc/driver/nvidia)."""
    device = (device or "auto").lower()
    if device.startswith("cuda"):
        return False
    if device == "auto":
        return not (os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia"))
    return True


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def memory_problem(what: str, cpu_bytes: int, device_bytes: int, device: str,
                   advice: str) -> str | None:
    """Refuse a run whose estimated memory does not fit: `cpu_bytes` always live in main
    memory; `device_bytes` too when the work runs on the CPU (or MPS), else on the GPU, where
    they are compared with its free memory only if torch has already started CUDA. The message
    says how much is needed, how much is free, and `advice`."""
    free = available_memory()
    on_cpu = runs_on_cpu(device)
    need_ram = cpu_bytes + (device_bytes if on_cpu else 0)
    if free is not None and need_ram > free:
        return (f"{what} needs at least {format_bytes(need_ram)} of memory, but only "
                f"{format_bytes(free)} is available; {advice}")
    if not on_cpu:
        gpu_free = cuda_free_memory()
        if gpu_free is not None and device_bytes > gpu_free:
            return (f"{what} needs at least {format_bytes(device_bytes)} of GPU memory, but only "
                    f"{format_bytes(gpu_free)} is free; {advice}")
    return None


__all__ = ["available_memory", "format_bytes", "memory_problem", "node_values",
           "output_dir_problem", "preflight_problems", "prefix_problem", "runs_on_cpu"]
