"""The executor: validates, orders and runs what the requested outputs need, with caching.

Runs happen one at a time on a worker thread, so a GUI stays responsive: `submit()` returns a
handle (cancel, wait, or await it); `run()` is the blocking form. Events are delivered to the
`on_event` callback from the worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import itertools
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from engine import integrity
from engine.cache import ResultCache
from engine.errors import Cancelled, LoomError, NodeError, NodeInputError, Problem, ValidationError
from engine.graph import Graph, Link
from engine.memory import release_freed_memory
from engine.node import Input, NodeSpec, PreflightContext, RunContext
from engine.paths import file_identity, resolve_path
from engine.registry import Registry
from engine.types import PRIMITIVES
from engine.validate import problems, unknown_type_problems

KEYED_OPTIONS = ("device", "output_dir")
"""Run options that change what nodes produce, and so are part of cache keys."""
OUTPUT_NODE_OPTIONS = ("output_dir",)
"""Keyed options that only output nodes (the ones that write files) depend on: changing the
output folder must not throw away every upstream result."""

QUEUED, RUNNING, CACHED, DONE, ERROR, SKIPPED, CANCELLED = (
    "queued", "running", "cached", "done", "error", "skipped", "cancelled")


@dataclass(frozen=True)
class NodeStatus:
    run_id: int
    node_id: str
    status: str
    elapsed: float = 0.0
    error: NodeError | None = None
    reason: str = ""


@dataclass(frozen=True)
class Progress:
    run_id: int
    node_id: str
    step: int
    total: int
    preview: Any = None


@dataclass(frozen=True)
class RunStarted:
    run_id: int
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class RunFinished:
    run_id: int
    result: RunResult


Event = NodeStatus | Progress | RunStarted | RunFinished


@dataclass
class RunResult:
    run_id: int
    status: dict[str, str] = field(default_factory=dict)
    errors: dict[str, NodeError] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ui: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    cancelled: bool = False
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors and not self.cancelled

    @property
    def ran(self) -> list[str]:
        return [n for n, s in self.status.items() if s == DONE]

    @property
    def cached(self) -> list[str]:
        return [n for n, s in self.status.items() if s == CACHED]

    @property
    def files(self) -> list[str]:
        return [f for ui in self.ui.values() for f in ui.get("files", [])]

    def output(self, node_id: str, name: str | None = None) -> Any:
        values = self.outputs[node_id]
        return values[name] if name is not None else next(iter(values.values()))


class RunHandle:
    """A submitted run: cancel it, wait for it, or await it."""

    def __init__(self, run_id: int, future: concurrent.futures.Future, cancel: threading.Event):
        self.run_id = run_id
        self.future = future
        self._cancel = cancel

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def result(self, timeout: float | None = None) -> RunResult:
        return self.future.result(timeout)

    def done(self) -> bool:
        return self.future.done()

    def __await__(self):
        return asyncio.wrap_future(self.future).__await__()


def _guarded(on_event: Callable[[Event], None] | None) -> Callable[[Event], None]:
    """A listener that raises must not abort the run (a GUI bug would otherwise lose it): the
    exception is reported on stderr once per run and the run goes on."""
    if on_event is None:
        return lambda e: None
    failed: list[bool] = []

    def emit(event: Event) -> None:
        try:
            on_event(event)
        except Exception:  # noqa: BLE001
            if not failed:
                failed.append(True)
                import sys
                print("loom: an event listener failed (the run goes on):\n"
                      + traceback.format_exc(), file=sys.stderr)
    return emit


class Executor:
    def __init__(self, registry: Registry, cache: ResultCache | None = None):
        self.registry = registry
        self.cache = cache if cache is not None else ResultCache()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="loom-run")
        self._ids = itertools.count(1)

    # public API -----------------------------------------------------------------------------
    def submit(
        self,
        graph: Graph,
        outputs: Iterable[str] | None = None,
        options: dict[str, Any] | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> RunHandle:
        """Validate now (raises ValidationError), then run on the worker thread."""
        snapshot = graph.copy()
        # Node types this Loom does not know (a missing plugin, a typo) come first, each by id
        # and type: without them nothing else (not even which nodes are outputs) can be trusted
        unknown = unknown_type_problems(snapshot, self.registry)
        try:
            targets = self._targets(snapshot, outputs)
        except LoomError as exc:
            if unknown:
                raise ValidationError([*unknown, Problem("no_output", str(exc))]) from None
            raise
        ins = snapshot.inputs_by_node()
        needed = self._ancestors(snapshot, targets, ins)
        found = problems(snapshot, self.registry, only=needed)
        if outputs is None:
            # running every output node: an unknown node might have been one of them
            found = [p for p in unknown if p not in found] + found
        # Pre-run checks (path inputs, each node's `preflight` hook: output folders, memory,
        # prompt length) of the needed nodes that passed validation, reported with its problems
        from engine.preflight import preflight_problems

        flagged = {p.node_id for p in found}
        found += preflight_problems(snapshot, self.registry,
                                    {n for n in needed if n not in flagged}, dict(options or {}))
        if found:
            raise ValidationError(found)
        cancel = threading.Event()
        run_id = next(self._ids)
        future = self._pool.submit(self._run, run_id, snapshot, targets, needed,
                                   dict(options or {}), on_event, cancel, ins)
        return RunHandle(run_id, future, cancel)

    def run(self, graph: Graph, outputs: Iterable[str] | None = None,
            options: dict[str, Any] | None = None,
            on_event: Callable[[Event], None] | None = None) -> RunResult:
        """Blocking run (on the worker thread, waiting for it)."""
        return self.submit(graph, outputs, options, on_event).result()

    async def run_async(self, graph: Graph, outputs: Iterable[str] | None = None,
                        options: dict[str, Any] | None = None,
                        on_event: Callable[[Event], None] | None = None) -> RunResult:
        return await self.submit(graph, outputs, options, on_event)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)

    # planning --------------------------------------------------------------------------------
    def _targets(self, graph: Graph, outputs: Iterable[str] | None) -> list[str]:
        if outputs is not None:
            targets = list(outputs)
            for t in targets:
                graph.node(t)
            return targets
        targets = []
        for n in graph.nodes.values():
            spec = self.registry.get(n.type)
            if spec is not None and spec.output_node:
                targets.append(n.id)
        if not targets:
            raise LoomError("the graph has no output node (Save Image, Preview Image, ...) to run")
        return sorted(targets)

    @staticmethod
    def _ancestors(graph: Graph, targets: list[str],
                   ins: dict[str, dict[str, Link]] | None = None) -> set[str]:
        if ins is None:
            ins = graph.inputs_by_node()
        needed: set[str] = set()
        stack = list(targets)
        while stack:
            nid = stack.pop()
            if nid in needed or nid not in graph.nodes:
                continue
            needed.add(nid)
            stack.extend(l.node for l in ins.get(nid, {}).values())
        return needed

    @staticmethod
    def _topological(graph: Graph, needed: set[str]) -> list[str]:
        indeg = {n: 0 for n in needed}
        succ: dict[str, list[str]] = {n: [] for n in needed}
        for (dst, _), link in graph.links.items():
            if dst in needed and link.node in needed:
                indeg[dst] += 1
                succ[link.node].append(dst)
        ready = collections.deque(sorted(n for n, d in indeg.items() if d == 0))
        order: list[str] = []
        while ready:
            nid = ready.popleft()
            order.append(nid)
            for nxt in sorted(succ[nid]):
                indeg[nxt] -= 1
                if indeg[nxt] == 0:
                    ready.append(nxt)
        return order

    def _key(self, graph: Graph, nid: str, spec: NodeSpec, keys: dict[str, str],
             options: dict[str, Any], links: dict[str, Link] | None = None,
             out_keys: dict[tuple[str, str], str] | None = None,
             only: tuple[str, ...] | None = None) -> str:
        """The node's content address: type, version, constant inputs (with file identities),
        upstream keys and outputs, keyed options; never the node id. An upstream output that
        declares the inputs it depends on (Output.inputs) contributes its own key (out_keys),
        computed here with `only` those inputs."""
        node = graph.nodes[nid]
        if links is None:
            links = graph.inputs_of(nid)
        # One flat list of scalars, hashed through its repr: unambiguous (strings are quoted,
        # 1, 1.0 and True differ) and much cheaper than JSON. Constants are scalars here
        # (validation refuses others); the keys live in memory only, so repr is stable enough.
        parts: list[Any] = [spec.type_id, spec.version]
        if only is not None:
            parts += ("only", only)
        constants: dict[str, Any] = {}
        for name, inp in spec.inputs.items():
            if only is not None and name not in only:
                continue
            link = links.get(name)
            if link is not None:
                upstream = keys[link.node]
                if out_keys:
                    upstream = out_keys.get((link.node, link.output), upstream)
                parts += (name, "link", upstream, link.output)
                if inp.path:
                    # A file path that arrives through a link: fold the file's identity in when
                    # the upstream value is known (cached). Unknown until it runs: this run's
                    # key must never match a stored result, so make it unique (volatile).
                    entry = self.cache.peek(keys[link.node])
                    value = entry.outputs.get(link.output) if entry is not None else None
                    if isinstance(value, str) and value:
                        parts.append(file_identity(resolve_path(value, options, inp.library)))
                    elif value is None:
                        parts += ("unresolved", uuid.uuid4().hex)
                continue
            value = node.values.get(name, inp.default if inp.has_default else None)
            constants[name] = value
            parts += (name, "value", value)
            if inp.path and isinstance(value, str) and value:
                parts.append(file_identity(resolve_path(value, options, inp.library)))
        identity = getattr(spec.cls, "cache_identity", None)
        if identity is not None:  # files the node reads by name (engine.node)
            try:
                parts += ("identity", identity(constants, PreflightContext(nid, spec.type_id,
                                                                           options)))
            except Exception:  # noqa: BLE001 - unknown identity: never reuse a result
                parts += ("identity", uuid.uuid4().hex)
        parts.append("options")
        for k in KEYED_OPTIONS:
            if spec.output_node or k not in OUTPUT_NODE_OPTIONS:
                parts += (k, options.get(k))
        if not spec.deterministic:
            parts += ("nonce", uuid.uuid4().hex)
        return hashlib.sha256(repr(parts).encode("utf-8", "surrogatepass")).hexdigest()

    # running ---------------------------------------------------------------------------------
    def _run(self, run_id: int, graph: Graph, targets: list[str], needed: set[str],
             options: dict[str, Any], on_event: Callable[[Event], None] | None,
             cancel: threading.Event,
             ins: dict[str, dict[str, Link]] | None = None) -> RunResult:
        # what this run uses (cached results, loaded models) is not evicted while it runs
        with self.cache.memory.run():
            result = self._run_graph(run_id, graph, targets, needed, options, on_event, cancel,
                                     ins)
        if result.ran:  # the pages its temporaries freed go back (engine.memory)
            release_freed_memory()
        return result

    def _run_graph(self, run_id: int, graph: Graph, targets: list[str], needed: set[str],
                   options: dict[str, Any], on_event: Callable[[Event], None] | None,
                   cancel: threading.Event,
                   ins: dict[str, dict[str, Link]] | None = None) -> RunResult:
        t_start = time.perf_counter()
        emit = _guarded(on_event)
        if ins is None:
            ins = graph.inputs_by_node()
        no_links: dict[str, Link] = {}
        order = self._topological(graph, needed)
        result = RunResult(run_id)
        specs = {nid: self.registry.get(graph.nodes[nid].type) for nid in order}
        # A non-deterministic node, and everything fed by one, gets a fresh key every run: such
        # results are never looked up in the cache nor stored there (they could never be hit
        # again and would only push useful entries out).
        volatile: set[str] = set()
        out_keys: dict[tuple[str, str], str] = {}
        for nid in order:
            links = ins.get(nid, no_links)
            result.keys[nid] = self._key(graph, nid, specs[nid], result.keys, options, links,
                                         out_keys)
            for out in specs[nid].outputs:
                if out.inputs is not None:
                    out_keys[(nid, out.name)] = self._key(graph, nid, specs[nid], result.keys,
                                                          options, links, out_keys,
                                                          (*out.inputs, f"->{out.name}"))
            if not specs[nid].deterministic or any(l.node in volatile for l in links.values()) \
                    or any(specs[nid].inputs[name].path and self.cache.peek(
                        result.keys[link.node]) is None for name, link in links.items()
                        if name in specs[nid].inputs):
                volatile.add(nid)

        # Walk back from the targets: a cached node needs none of its inputs computed.
        entries: dict[str, Any] = {}
        to_run: set[str] = set()
        stack = list(targets)
        while stack:
            nid = stack.pop()
            if nid in entries or nid in to_run:
                continue
            entry = None if nid in volatile else self.cache.get(result.keys[nid])
            if entry is not None:
                entries[nid] = entry
            else:
                to_run.add(nid)
                stack.extend(l.node for l in ins.get(nid, no_links).values())

        emit(RunStarted(run_id, tuple(order)))
        for nid in order:
            if nid in to_run:
                result.status[nid] = QUEUED
                emit(NodeStatus(run_id, nid, QUEUED))
        for nid in order:
            if nid in entries:
                result.status[nid] = CACHED
                result.outputs[nid] = entries[nid].outputs
                if entries[nid].ui:
                    result.ui[nid] = entries[nid].ui
                emit(NodeStatus(run_id, nid, CACHED))
            elif nid not in to_run:
                result.status[nid] = CACHED  # not needed: everything downstream was cached
                emit(NodeStatus(run_id, nid, CACHED, reason="not needed"))

        for nid in order:
            if nid not in to_run:
                continue
            spec = specs[nid]
            if cancel.is_set():
                result.cancelled = True
                result.status[nid] = CANCELLED
                emit(NodeStatus(run_id, nid, CANCELLED))
                continue
            links = ins.get(nid, no_links)
            bad = [l.node for l in links.values()
                   if result.status.get(l.node) not in (DONE, CACHED)]
            if bad:
                result.status[nid] = SKIPPED
                reason = f"input from '{bad[0]}' is not available"
                emit(NodeStatus(run_id, nid, SKIPPED, reason=reason))
                continue
            self._run_node(run_id, graph, nid, spec, options, result, emit, cancel, links,
                           store=nid not in volatile)
        result.elapsed = time.perf_counter() - t_start
        emit(RunFinished(run_id, result))
        return result

    def _run_node(self, run_id: int, graph: Graph, nid: str, spec: NodeSpec,
                  options: dict[str, Any], result: RunResult,
                  emit: Callable[[Event], None], cancel: threading.Event,
                  links: dict[str, Link] | None = None, store: bool = True) -> None:
        node = graph.nodes[nid]
        if links is None:
            links = graph.inputs_of(nid)
        result.status[nid] = RUNNING
        emit(NodeStatus(run_id, nid, RUNNING))
        t0 = time.perf_counter()

        def progress(step: int, total: int, preview: Any = None) -> None:
            emit(Progress(run_id, nid, step, total, preview))

        ctx = RunContext(nid, spec.type_id, options, progress, cancel.is_set)
        check = integrity.enabled(options)
        before: dict[str, str] = {}
        try:
            instance = spec.cls()
            for name, inp in spec.inputs.items():
                link = links.get(name)
                if link is not None:
                    value = result.outputs[link.node][link.output]
                    _check_linked_value(inp, value, link)
                    if check:
                        before[name] = integrity.fingerprint(value)
                else:
                    value = node.values.get(name, inp.default if inp.has_default else None)
                setattr(instance, name, value)
            self.cache.memory.begin_node()
            outputs = spec.normalise_result(instance.run(ctx))
            for name, digest in before.items():
                link = links[name]
                if integrity.fingerprint(result.outputs[link.node][link.output]) != digest:
                    # the upstream result (and its cache entry) is no longer what it computed
                    self.cache.discard(result.keys[link.node])
                    raise NodeInputError(
                        name, f"this node changed its input (the value of "
                        f"'{link.node}.{link.output}') in place; a node must treat its inputs "
                        "as read-only (clone a tensor before changing it)")
        except Cancelled:
            elapsed = time.perf_counter() - t0
            result.cancelled = True
            result.status[nid] = CANCELLED
            result.timings[nid] = elapsed
            emit(NodeStatus(run_id, nid, CANCELLED, elapsed))
            return
        except Exception as exc:  # noqa: BLE001 - a node may fail in any way; isolate it
            elapsed = time.perf_counter() - t0
            message = str(exc) or type(exc).__name__
            if not isinstance(exc, (LoomError,)):
                message = f"{type(exc).__name__}: {message}"
            err = NodeError(nid, spec.type_id, message, traceback.format_exc(),
                            exc.input if isinstance(exc, NodeInputError) else None)
            result.errors[nid] = err
            if ctx.ui.get("files"):  # files a failing node wrote first are still reported
                result.ui[nid] = {"files": list(ctx.ui["files"])}
            result.status[nid] = ERROR
            result.timings[nid] = elapsed
            emit(NodeStatus(run_id, nid, ERROR, elapsed, err))
            return
        elapsed = time.perf_counter() - t0
        result.outputs[nid] = outputs
        if ctx.ui:
            result.ui[nid] = ctx.ui
        result.timings[nid] = elapsed
        result.status[nid] = DONE
        if store:
            self.cache.put(result.keys[nid], outputs, ctx.ui, elapsed)
        emit(NodeStatus(run_id, nid, DONE, elapsed))


def _check_linked_value(inp: Input, value: Any, link: Link) -> None:
    """A value that arrives through a link gets the checks a typed-in constant gets (type,
    finiteness, range, choices): an Arithmetic node's 1e309 must not reach `scale` as inf."""
    if inp.type not in PRIMITIVES or (value is None and inp.optional):
        return
    problem = inp.problem(value)
    if problem is not None:
        raise NodeInputError(inp.name, f"{problem[1]} (the value from "
                                       f"'{link.node}.{link.output}')")
