"""Batch rendering: one workflow run for every combination of swept values.

    plan = plan_batch(graph, {"prompt.text": "@prompts.txt", "noise.seed": "1..100",
                              "cfg.scale": [3, 5, 7]})
    for result in Batch(plan, "sweep/"):        # in this process, with one Session
        print(result.index, result.status, result.files)

The items are the cross product of the sweeps (sweeps named together in a `zip` group vary
together instead). Each item has an index (its place in that product, in the order the sweeps
were given), and everything about it is found again by that index: its files are named
`<prefix>_item<index>_NNNNN.png` (every output node with a `prefix` input gets the suffix), its
PNGs carry the workflow with the item's values set and `ui.batch_item = {index, values}`, and
`manifest.jsonl` in the output folder gets one JSON line per finished item:

    {"index": 7, "values": {"noise.seed": 8}, "status": "ok", "files": ["loom_item00007_00001.png"],
     "time": 0.52, "error": null, "worker": "local", "finished": "2026-11-24T10:00:00+00:00"}

Items run in an order that reuses upstream work: the sweeps are nested by how much of the graph
a change of their value re-runs (a checkpoint sweep outermost, then prompts, then seeds and
scales), so on one worker every item with the same checkpoint and prompt comes in one run of
adjacent items and the content-addressed cache of one Session loads the model and encodes the
prompt once. The Ray backend (engine.batch_ray) deals contiguous runs of that order to its
workers, so the same grouping holds per worker.

`--resume` (resume=True): `batch.json` in the folder records the plan; items with an "ok" line
in the manifest are skipped, failed and unfinished ones run again (the last line of an index
counts). A partial last line, left by a killed process, is ignored and cut off.

Pure Python: the engine layer imports neither torch nor Qt.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from engine.api import OverrideError, Session, set_value, target_input
from engine.errors import LoomError, ValidationError
from engine.files import write_text_atomic
from engine.graph import Graph
from engine.types import FLOAT, INT, STRING
from engine.workflow import graph_to_document

MANIFEST = "manifest.jsonl"
PLAN_FILE = "batch.json"
MAX_ITEMS = 100_000
ITEM_UI_KEY = "batch_item"
"""The graph-level ui key under which an item's PNGs carry its index and swept values."""


class BatchError(LoomError):
    """A batch that cannot start: a bad sweep, or an output folder that holds another batch."""


# sweeps ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    """The values one input takes across the batch: text (parsed by the input's declared type,
    as `--set` parses) or typed Python values (checked as they are)."""

    target: str
    values: tuple[Any, ...]


_NUM = r"-?\d+(?:\.\d+)?"
_RANGE = re.compile(rf"^\s*({_NUM})\s*\.\.\s*({_NUM})\s*(?::\s*({_NUM}))?\s*$")


def sweep_values(spec: str, input_type: str) -> list[Any]:
    """The values a command-line sweep spec stands for:

    - `@FILE`: one value per non-blank line of FILE (stripped), e.g. prompts;
    - `[...]`: a JSON list (for texts with commas);
    - `A..B` or `A..B:STEP` for a number input: A to B inclusive (STEP 1 by default; B < A counts
      down), e.g. `1..100`, `3..7:0.5`;
    - otherwise a comma-separated list, each value stripped: `3,5,7`, `euler,ddim`.
    """
    if spec.startswith("@"):
        path = Path(os.path.expanduser(spec[1:]))
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BatchError(f"cannot read the values file {path}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        values: list[Any] = [line.strip() for line in text.splitlines() if line.strip()]
        if not values:
            raise BatchError(f"the values file {path} has no non-blank line")
        return values
    if spec.lstrip().startswith("["):
        try:
            values = json.loads(spec)
        except ValueError as exc:
            raise BatchError(f"{spec!r} is not a JSON list: {exc}") from None
        if not isinstance(values, list) or not values:
            raise BatchError(f"{spec!r} must be a non-empty JSON list")
        return values
    m = _RANGE.match(spec)
    if m and input_type in (INT, FLOAT):
        return _range(m.group(1), m.group(2), m.group(3), input_type)
    return [v.strip() for v in spec.split(",")]


def _range(a: str, b: str, step: str | None, input_type: str) -> list[str]:
    if input_type == INT and any("." in s for s in (a, b, step or "")):
        raise BatchError(f"{a}..{b}: an integer input needs an integer range")
    try:
        start, end = Decimal(a), Decimal(b)
        inc = Decimal(step) if step is not None else Decimal(1)
    except InvalidOperation:
        raise BatchError(f"{a}..{b}: not a range of numbers") from None
    if inc <= 0:
        raise BatchError(f"{a}..{b}:{step}: the step must be positive")
    count = int(abs(end - start) // inc) + 1
    if count > MAX_ITEMS:
        raise BatchError(f"{a}..{b} has {count} values, more than {MAX_ITEMS}")
    sign = 1 if end >= start else -1
    return [str(start + sign * i * inc) for i in range(count)]


def parse_sweep(text: str, graph: Graph) -> Sweep:
    """A command-line `ID.INPUT=SPEC` as a Sweep (see `sweep_values` for SPEC)."""
    target, sep, spec = text.partition("=")
    if not sep:
        raise BatchError(f"--sweep '{text}' must be ID.INPUT=VALUES (e.g. noise.seed=1..10)")
    target = target.strip()
    _, _, inp = target_input(graph, graph.registry, target)
    return Sweep(target, tuple(sweep_values(spec, inp.type)))


# the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One run of the batch: its index and the values it sets ({"ID.INPUT": value})."""

    index: int
    values: dict[str, Any]


@dataclass
class BatchPlan:
    """The base graph (fixed values applied), the sweeps and which of them vary together."""

    graph: Graph
    sweeps: list[Sweep]
    zips: list[tuple[str, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        by_target = {s.target: s for s in self.sweeps}
        if len(by_target) != len(self.sweeps):
            targets = [s.target for s in self.sweeps]
            twice = next(t for t in targets if targets.count(t) > 1)
            raise BatchError(f"'{twice}' is swept twice")
        for s in self.sweeps:
            target_input(self.graph, self.graph.registry, s.target)
            if not s.values:
                raise BatchError(f"the sweep of '{s.target}' has no values")
        zipped: set[str] = set()
        for group in self.zips:
            for t in group:
                if t not in by_target:
                    raise BatchError(f"--zip names '{t}', which is not swept (--sweep {t}=...)")
                if t in zipped:
                    raise BatchError(f"'{t}' is in two --zip groups")
                zipped.add(t)
            lengths = {t: len(by_target[t].values) for t in group}
            if len(set(lengths.values())) > 1:
                shown = ", ".join(f"{t} has {n}" for t, n in lengths.items())
                raise BatchError(f"zipped sweeps need as many values each: {shown}")
        # axes: each zip group is one, every other sweep one of its own, in the order given
        self.axes: list[tuple[str, ...]] = []
        for s in self.sweeps:
            group = next((g for g in self.zips if s.target in g), (s.target,))
            if group not in self.axes:
                self.axes.append(tuple(group))
        self._by_target = by_target
        n = 1
        for axis in self.axes:
            n *= len(by_target[axis[0]].values)
        if n > MAX_ITEMS:
            raise BatchError(f"the sweeps make {n} items, more than {MAX_ITEMS}")
        self.count = n

    @property
    def registry(self):
        return self.graph.registry

    @property
    def index_width(self) -> int:
        return max(5, len(str(self.count - 1)))

    def _axis_len(self, axis: tuple[str, ...]) -> int:
        return len(self._by_target[axis[0]].values)

    def _item(self, index: int, picks: Sequence[int]) -> Item:
        values: dict[str, Any] = {}
        for axis, k in zip(self.axes, picks):
            for t in axis:
                values[t] = self._by_target[t].values[k]
        # in the order the sweeps were given
        return Item(index, {s.target: values[s.target] for s in self.sweeps})

    def items(self) -> list[Item]:
        """Every item, by index (the cross product, the first sweep outermost)."""
        ranges = [range(self._axis_len(a)) for a in self.axes]
        return [self._item(i, picks) for i, picks in enumerate(itertools.product(*ranges))]

    def weight(self, axis: tuple[str, ...]) -> int:
        """How much of the graph a change of this axis's values re-runs: the number of nodes
        downstream of (and including) its nodes."""
        down: dict[str, set[str]] = {}
        for (dst, _), link in self.graph.links.items():
            down.setdefault(link.node, set()).add(dst)
        reached: set[str] = set()
        stack = [t.partition(".")[0] for t in axis]
        while stack:
            nid = stack.pop()
            if nid not in reached:
                reached.add(nid)
                stack.extend(down.get(nid, ()))
        return len(reached)

    def ordered(self, items: Iterable[Item] | None = None) -> list[Item]:
        """`items` (all by default) in the order that reuses upstream work: sorted by the
        value positions of the heaviest axes first (equal weights keep the order given), so
        items that share a checkpoint, then a prompt, are adjacent."""
        items = self.items() if items is None else list(items)
        order = sorted(range(len(self.axes)), key=lambda a: -self.weight(self.axes[a]))
        sizes = [self._axis_len(a) for a in self.axes]

        def picks(index: int) -> list[int]:
            out = []
            for size in reversed(sizes):
                index, k = divmod(index, size)
                out.append(k)
            return out[::-1]

        def key(item: Item) -> list[int]:
            p = picks(item.index)
            return [p[a] for a in order]

        return sorted(items, key=key)

    def fingerprint(self) -> str:
        """What makes this batch this batch: the workflow's nodes, values and links (not its
        layout), the sweeps and the zip groups."""
        doc = graph_to_document(self.graph)
        nodes = {nid: {k: v for k, v in n.items() if k != "ui"} for nid, n in doc["nodes"].items()}
        parts = {"nodes": nodes, "sweeps": [[s.target, list(s.values)] for s in self.sweeps],
                 "zips": [list(z) for z in self.zips]}
        text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=repr)
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def describe(self) -> dict[str, Any]:
        """The plan as `batch.json` records it."""
        return {"schema_version": 1, "fingerprint": self.fingerprint(), "items": self.count,
                "sweeps": {s.target: list(s.values) for s in self.sweeps},
                "zips": [list(z) for z in self.zips],
                "workflow": graph_to_document(self.graph)}


def plan_batch(graph: Graph, sweeps: Mapping[str, Any] | Iterable[Sweep | str],
               zip: Iterable[Iterable[str] | str] = ()) -> BatchPlan:
    """A BatchPlan for `graph` (left unchanged). `sweeps`: {"ID.INPUT": values} where values is a
    list (or any iterable) of values, or a command-line spec string ("1..100", "@prompts.txt",
    "3,5,7"); or Sweep objects or "ID.INPUT=SPEC" strings. `zip`: groups of swept targets that
    vary together (lists, or "A,B" strings)."""
    found: list[Sweep] = []
    if isinstance(sweeps, Mapping):
        for target, values in sweeps.items():
            if isinstance(values, str):
                _, _, inp = target_input(graph, graph.registry, target)
                values = sweep_values(values, inp.type)
            found.append(Sweep(target, tuple(values)))
    else:
        for s in sweeps:
            found.append(s if isinstance(s, Sweep) else parse_sweep(s, graph))
    groups = [tuple(t.strip() for t in (z.split(",") if isinstance(z, str) else z))
              for z in zip]
    return BatchPlan(graph.copy(), found, groups)


# one item -------------------------------------------------------------------------------------


@dataclass
class ItemResult:
    """What became of one item. `ran`: the node ids that ran (the others came from the cache)."""

    index: int
    values: dict[str, Any]
    status: str
    files: list[str] = field(default_factory=list)
    time: float = 0.0
    error: str | None = None
    worker: str = "local"
    ran: list[str] = field(default_factory=list)
    finished: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def record(self) -> dict[str, Any]:
        """The manifest line."""
        return {"index": self.index, "values": self.values, "status": self.status,
                "files": self.files, "time": round(self.time, 4), "error": self.error,
                "worker": self.worker, "finished": self.finished}


class StopSignal:
    """Ctrl-C for a batch: the first `request()` stops it after the items being rendered, the
    second stops it now (the items being rendered are dropped and run again on --resume)."""

    def __init__(self) -> None:
        self.soft = threading.Event()
        self.hard = threading.Event()

    def request(self) -> str:
        if self.soft.is_set():
            self.hard.set()
            return "now"
        self.soft.set()
        return "after"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _problem_text(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(str(p) for p in exc.problems)
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, LoomError) else f"{type(exc).__name__}: {text}"


def item_graphs(base: Graph, item: Item, width: int) -> tuple[Graph, Graph, dict[str, Any]]:
    """(the item's workflow as its PNGs carry it, the graph that runs, the values as set):
    the swept values set (text parsed by the input's type) and `ui.batch_item` added; the
    graph that runs also has every output node's `prefix` suffixed with `_item<index>`.
    OverrideError for a value its input refuses."""
    g = base.copy()
    problems = []
    for target, value in item.values.items():
        try:
            set_value(g, g.registry, target, value, parse=isinstance(value, str))
        except OverrideError as exc:
            problems.extend(exc.problems)
    if problems:
        raise OverrideError(problems)
    values = {}
    for target in item.values:
        nid, _, name = target.partition(".")
        values[target] = g.nodes[nid].values[name]
    g.ui[ITEM_UI_KEY] = {"index": item.index, "values": values}
    run = g.copy()
    for nid, n in run.nodes.items():
        spec = g.registry.get(n.type)
        if spec is None or not spec.output_node:
            continue
        inp = spec.inputs.get("prefix")
        if inp is None or inp.type != STRING or (nid, "prefix") in run.links:
            continue
        prefix = n.values.get("prefix", inp.default if inp.has_default else "")
        n.values["prefix"] = f"{prefix}_item{item.index:0{width}d}"
    return g, run, values


def check_plan(plan: BatchPlan) -> None:
    """Raise ValidationError for what would fail every item (an unknown node type, a missing
    link, no output node), found on the first item's graph; a swept value that only some items
    get wrong fails those items instead."""
    from engine.executor import Executor
    from engine.validate import problems, unknown_type_problems

    first = plan._item(0, [0] * len(plan.axes))
    try:
        _, run, _ = item_graphs(plan.graph, first, plan.index_width)
    except OverrideError:
        run = plan.graph  # the first item's own value is wrong: check the rest without it
    found = unknown_type_problems(run, plan.registry)
    targets = [nid for nid, n in run.nodes.items()
               if (spec := plan.registry.get(n.type)) is not None and spec.output_node]
    if not targets and not found:
        raise BatchError("the graph has no output node (Save Image, Preview Image, ...) to run")
    found += [p for p in problems(run, plan.registry, only=Executor._ancestors(run, targets))
              if p not in found]
    if found:
        raise ValidationError(found)


def render_item(session: Session, base: Graph, item: Item, out_dir: str | os.PathLike, *,
                device: str = "auto", options: dict[str, Any] | None = None, width: int = 5,
                stop: StopSignal | None = None, worker: str = "local") -> ItemResult | None:
    """Run one item with `session` (whose cache the items share); None when it was stopped
    before it finished (a hard stop), so that it is not recorded and runs again on resume."""
    t0 = time.perf_counter()

    def failed(message: str, values: dict[str, Any]) -> ItemResult:
        return ItemResult(item.index, values, "error", [], time.perf_counter() - t0, message,
                          worker, [], _now())

    try:
        shown, run, values = item_graphs(base, item, width)
        handle = session.executor.submit(run, None,
                                         session.options(shown, out_dir, device, options))
    except Exception as exc:  # noqa: BLE001 - a bad value or graph fails the item, not the batch
        return failed(_problem_text(exc), dict(item.values))
    try:
        while True:
            try:
                result = handle.result(timeout=None if stop is None else 0.1)
                break
            except concurrent.futures.TimeoutError:  # the builtin one from Python 3.11
                if stop is not None and stop.hard.is_set():
                    handle.cancel()
    except KeyboardInterrupt:
        handle.cancel()
        handle.result()
        raise
    if result.cancelled:
        return None
    error = "; ".join(_problem_text(e) for e in result.errors.values()) or None
    return ItemResult(item.index, values, "ok" if result.ok else "error", result.files,
                      time.perf_counter() - t0, error, worker, result.ran, _now())


# the manifest ---------------------------------------------------------------------------------


class Manifest:
    """`manifest.jsonl`: one JSON object per finished item, appended and flushed by one writer
    as items finish (a process killed mid-line leaves a partial last line, which reading skips
    and opening for more lines cuts off)."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / MANIFEST
        self._file = None
        self._lock = threading.Lock()

    def records(self) -> list[dict[str, Any]]:
        """Every complete, well-formed line, in order."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for line in data.split(b"\n"):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("index"), int):
                out.append(rec)
        return out

    def latest(self) -> dict[int, dict[str, Any]]:
        """The last record of each index."""
        return {rec["index"]: rec for rec in self.records()}

    def open(self) -> Manifest:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "ab+")  # noqa: SIM115 - kept open while the batch runs
        f.seek(0)
        data = f.read()
        cut = data.rfind(b"\n") + 1
        if cut != len(data):  # a partial last line (a killed writer): drop it
            f.truncate(cut)
        self._file = f
        return self

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, default=repr) + "\n"
        with self._lock:
            assert self._file is not None, "open() the manifest first"
            self._file.write(line.encode("utf-8", "surrogatepass"))
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> Manifest:
        return self.open() if self._file is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# backends -------------------------------------------------------------------------------------


class InProcessBackend:
    """Every item in this process, one after another, with one Session (one cache)."""

    name = "in-process"

    def __init__(self, session: Session | None = None):
        self.session = session

    def prepare(self, batch: Batch) -> None:
        if self.session is None:
            self.session = Session(batch.plan.registry)

    def run(self, batch: Batch) -> Iterator[ItemResult]:
        self.prepare(batch)
        for item in batch.todo:
            if batch.stop.soft.is_set():
                return
            result = render_item(self.session, batch.plan.graph, item, batch.out,
                                 device=batch.device, options=batch.options,
                                 width=batch.plan.index_width, stop=batch.stop)
            if result is None:
                return
            result.files = [batch.relative(f) for f in result.files]
            yield result

    def close(self) -> None:
        pass


class Batch:
    """A batch bound to its output folder; iterate it to run the items still to do (a
    generator of ItemResult, each written to the manifest before it is yielded).

    `total`: items in the plan; `done_before`: those finished by an earlier run (resume);
    `todo`: the rest, in the order they run. `stop.request()` stops it (see StopSignal)."""

    def __init__(self, plan: BatchPlan, out: str | os.PathLike, *, resume: bool = False,
                 backend: Any = None, device: str = "auto",
                 options: dict[str, Any] | None = None, own_backend: bool = False):
        self.plan = plan
        self.own_backend = own_backend or backend is None
        self.out = Path(out)
        self.device = device
        self.options = dict(options or {})
        self.backend = backend if backend is not None else InProcessBackend()
        self.stop = StopSignal()
        self.manifest = Manifest(self.out)
        self.total = plan.count
        done = self._prepare(resume)
        self.done_before = len(done)
        self.todo = plan.ordered(it for it in plan.items() if it.index not in done)

    def _prepare(self, resume: bool) -> set[int]:
        plan_path = self.out / PLAN_FILE
        latest = self.manifest.latest()
        old = None
        try:
            old = json.loads(plan_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            if latest:
                raise BatchError(f"{plan_path} cannot be read ({exc}); choose another output "
                                 "folder") from None
        if latest and not resume:
            raise BatchError(f"{self.out} already holds a batch ({len(latest)} items in "
                             f"{MANIFEST}): pass --resume (resume=True) to finish it, or "
                             "choose another output folder")
        fingerprint = self.plan.fingerprint()
        if latest and (not isinstance(old, dict) or old.get("fingerprint") != fingerprint):
            raise BatchError(f"{self.out} holds a different batch (another workflow, other "
                             "values or sweeps); resume it with the arguments that started it, "
                             "or choose another output folder")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            if not (isinstance(old, dict) and old.get("fingerprint") == fingerprint):
                write_text_atomic(plan_path, json.dumps(self.plan.describe(), indent=1,
                                                        ensure_ascii=False, default=repr))
        except OSError as exc:
            raise BatchError(f"cannot write the batch's plan into {self.out}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        return {i for i, rec in latest.items() if rec.get("status") == "ok"}

    def prepare(self) -> None:
        """Start the backend now (Ray: connect and create the workers) instead of on the
        first item, so that a backend that cannot start fails before the batch begins."""
        self.backend.prepare(self)

    def relative(self, path: str) -> str:
        """A written file as the manifest names it: relative to the output folder."""
        try:
            return Path(path).resolve().relative_to(self.out.resolve()).as_posix()
        except (ValueError, OSError):
            return str(path)

    def __iter__(self) -> Iterator[ItemResult]:
        try:
            with self.manifest:
                for result in self.backend.run(self):
                    self.manifest.write(result.record())
                    yield result
        finally:
            if self.own_backend:
                self.backend.close()


class BatchProgress:
    """Counts for a progress line: items done and failed, rate, time left."""

    def __init__(self, total: int, done_before: int = 0, clock=time.monotonic):
        self.total = total
        self.done_before = done_before
        self.finished = 0
        self.failed = 0
        self._clock = clock
        self.started = clock()

    def add(self, result: ItemResult) -> None:
        self.finished += 1
        if not result.ok:
            self.failed += 1

    @property
    def rate(self) -> float:
        elapsed = self._clock() - self.started
        return self.finished / elapsed if elapsed > 0 else 0.0

    @property
    def remaining(self) -> int:
        return self.total - self.done_before - self.finished

    def eta(self) -> float | None:
        rate = self.rate
        return self.remaining / rate if rate > 0 else None

    def line(self) -> str:
        eta = self.eta()
        left = "?" if eta is None else _duration(eta)
        return (f"batch: {self.done_before + self.finished}/{self.total} items, "
                f"{self.failed} failed, {self.rate:.2f} items/s, {left} left")


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def make_backend(ray: bool | str | None = None, workers: int | None = None, **ray_options: Any):
    """The in-process backend, or (ray=True, or a cluster address) the Ray one."""
    if not ray:
        if workers not in (None, 1):
            raise BatchError("more than one worker needs Ray (--ray)")
        return InProcessBackend()
    from engine.batch_ray import RayBackend

    return RayBackend(address=None if ray is True else ray, workers=workers, **ray_options)


__all__ = ["Batch", "BatchError", "BatchPlan", "BatchProgress", "InProcessBackend", "Item",
           "ItemResult", "Manifest", "StopSignal", "Sweep", "check_plan", "make_backend",
           "parse_sweep", "plan_batch", "render_item", "sweep_values"]
