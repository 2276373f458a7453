"""The Python API for scripts: load a workflow, override values, run it, read the results.

    from engine.api import Session
    s = Session()
    g = s.load("resources/workflows/default.json")
    s.set(g, "prompt.text", "a yellow star on a blue background")
    result = s.run(g, output_dir="out")
    print(result.files)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from engine.cache import ResultCache
from engine.errors import LoomError, Problem, ValidationError
from engine.executor import Event, Executor, RunResult
from engine.graph import Graph
from engine.modes import run_plan
from engine.node import ignored_inputs
from engine.paths import PROJECT_ROOT
from engine.registry import Registry, default_registry
from engine.workflow import dumps, load_workflow, save_workflow

DEFAULT_WORKFLOW = PROJECT_ROOT / "resources" / "workflows" / "default.json"


class OverrideError(ValidationError):
    """A `--set ID.INPUT=VALUE` that names a missing node/input or a value of the wrong type."""


def _split_target(target: str) -> tuple[str, str]:
    node_id, sep, input_name = target.partition(".")
    if not sep or not node_id or not input_name:
        raise OverrideError([Problem("bad_override",
                                     f"'{target}' must be written NODE_ID.INPUT "
                                     "(e.g. prompt.text)")])
    return node_id, input_name


def target_input(graph: Graph, registry: Registry, target: str) -> tuple[str, str, Any]:
    """(node id, input name, declared Input) of "ID.INPUT", an input that takes a value;
    OverrideError naming what is wrong otherwise."""
    node_id, input_name = _split_target(target)
    node = graph.nodes.get(node_id)
    if node is None:
        raise OverrideError([Problem("bad_override", f"no node with id '{node_id}' "
                                     f"(nodes: {', '.join(sorted(graph.nodes))})",
                                     node_id, None, input_name)])
    spec = registry.get(node.type)
    if spec is None:
        raise OverrideError([Problem("unknown_node_type", f"unknown node type '{node.type}'",
                                     node_id, node.type, input_name)])
    inp = spec.inputs.get(input_name)
    if inp is None:
        names = ", ".join(spec.inputs)
        raise OverrideError([Problem("bad_override", f"has no input '{input_name}' "
                                     f"(inputs: {names})", node_id, node.type, input_name)])
    if inp.connection_only:
        raise OverrideError([Problem("bad_override", f"takes a connection ({inp.type}), "
                                     "not a value", node_id, node.type, input_name)])
    return node_id, input_name, inp


def set_value(graph: Graph, registry: Registry, target: str, value: Any,
              parse: bool = False) -> None:
    """Set `node.input` to `value` (parsed from text by the input's declared type if `parse`)."""
    node_id, input_name, inp = target_input(graph, registry, target)
    node = graph.nodes[node_id]
    if parse:
        try:
            value = inp.parse(str(value))
        except ValueError as exc:
            raise OverrideError([Problem("bad_override", f"cannot read {value!r} as {inp.type}: "
                                         f"{exc}", node_id, node.type, input_name)]) from None
    why = inp.check(value)
    if why is not None:
        raise OverrideError([Problem("bad_override", why, node_id, node.type, input_name)])
    graph.disconnect(node_id, input_name)
    graph.set_value(node_id, input_name, value)


def apply_overrides(graph: Graph, registry: Registry, overrides: Iterable[str]) -> None:
    """Apply command-line style overrides "ID.INPUT=VALUE"; every bad one is reported at once."""
    problems: list[Problem] = []
    for item in overrides:
        target, sep, text = item.partition("=")
        if not sep:
            problems.append(Problem("bad_override", f"'{item}' must be ID.INPUT=VALUE"))
            continue
        try:
            set_value(graph, registry, target.strip(), text, parse=True)
        except OverrideError as exc:
            problems.extend(exc.problems)
    if problems:
        raise OverrideError(problems)


def ignored_values(graph: Graph, registry: Registry,
                   targets: Iterable[str] | None = None) -> list[str]:
    """Warnings for inputs that have no effect as the graph is wired (a seed whose node
    continues another node's random stream), for the "ID.INPUT" `targets` (every such input
    when None)."""
    wanted = None if targets is None else {t.partition("=")[0].strip() for t in targets}
    ins = graph.inputs_by_node()
    out: list[str] = []
    for nid, n in graph.nodes.items():
        spec = registry.get(n.type)
        if spec is None:
            continue
        for name, why in ignored_inputs(spec, n.values, set(ins.get(nid, {}))).items():
            if wanted is None or f"{nid}.{name}" in wanted:
                out.append(f"node '{nid}' ({n.type}) input '{name}' is ignored: {why}")
    return out


class Session:
    """A registry, a result cache and an executor: what a script or the CLI needs to run."""

    def __init__(self, registry: Registry | None = None, cache_budget: int | None = None):
        self.registry = registry or default_registry()
        self.cache = ResultCache() if cache_budget is None else ResultCache(cache_budget)
        self.executor = Executor(self.registry, self.cache)

    def load(self, path: str | os.PathLike = DEFAULT_WORKFLOW, check: bool = True) -> Graph:
        graph = load_workflow(path, self.registry, check)
        # always the file just read: relative paths in it resolve against its folder
        graph.ui["_source"] = str(Path(path).resolve())
        return graph

    def save(self, graph: Graph, path: str | os.PathLike) -> None:
        save_workflow(graph, path)

    def set(self, graph: Graph, target: str, value: Any) -> None:
        set_value(graph, self.registry, target, value)

    def run(self, graph: Graph, outputs: Iterable[str] | None = None,
            output_dir: str | os.PathLike = "out", device: str = "auto",
            on_event: Callable[[Event], None] | None = None,
            options: dict[str, Any] | None = None) -> RunResult:
        """Run the graph (bypassed and muted nodes applied: engine.modes) and wait."""
        to_run, wanted, _notes = run_plan(graph, self.registry)
        if outputs is None:
            outputs = wanted
        return self.executor.run(to_run, outputs,
                                 self.options(graph, output_dir, device, options), on_event)

    def batch(self, graph: Graph, sweeps: Any, out: str | os.PathLike = "out", *,
              zip: Iterable[Any] = (), resume: bool = False, ray: bool | str | None = None,
              workers: int | None = None, device: str = "auto",
              options: dict[str, Any] | None = None) -> Any:
        """Render `graph` once per combination of swept values (engine.batch): returns an
        engine.batch.Batch; iterate it for each item's ItemResult as it finishes (written to
        `out`/manifest.jsonl first). Without `ray` the items run here, sharing this session's
        cache; with `ray=True` (or a cluster address) on Ray workers.

            for r in s.batch(g, {"prompt.text": ["a red circle", "a blue star"],
                                 "noise.seed": range(1, 5)}, out="sweep"):
                print(r.index, r.status, r.files)
        """
        from engine.batch import Batch, InProcessBackend, make_backend, plan_batch

        plan = plan_batch(graph, sweeps, zip)
        if not ray:
            make_backend(None, workers)  # refuses more than one worker without Ray
        backend = make_backend(ray, workers) if ray else InProcessBackend(self)
        return Batch(plan, out, resume=resume, backend=backend, device=device, options=options,
                     own_backend=bool(ray))

    def options(self, graph: Graph, output_dir: str | os.PathLike = "out", device: str = "auto",
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
        source = graph.ui.get("_source")
        try:
            out = str(Path(output_dir).resolve())
        except (OSError, RuntimeError, ValueError):
            # a symlink loop or a name the system refuses: kept as given (made absolute) for
            # the Save nodes' pre-run check to name it
            out = os.path.abspath(os.fspath(output_dir))
        opts: dict[str, Any] = {
            "device": device,
            "output_dir": out,
            "base_dir": str(Path(source).parent) if source else os.getcwd(),
            "workflow_json": dumps(_without_private_ui(graph)),
        }
        opts.update(extra or {})
        return opts


def _without_private_ui(graph: Graph) -> Graph:
    g = graph.copy()
    g.ui = {k: v for k, v in g.ui.items() if not k.startswith("_")}
    return g


def batch(workflow: str | os.PathLike | Graph = DEFAULT_WORKFLOW, sweeps: Any = (),
          out: str | os.PathLike = "out", *, sets: Iterable[str] = (),
          session: Session | None = None, **kwargs: Any) -> Any:
    """`Session.batch` for a workflow file (or graph) with `--set`-style fixed values `sets`:
    `for r in batch("wf.json", {"noise.seed": "1..8"}, "out/sweep"): ...`"""
    session = session or Session()
    graph = workflow if isinstance(workflow, Graph) else session.load(workflow)
    if sets:
        graph = graph.copy()
        apply_overrides(graph, session.registry, sets)
    return session.batch(graph, sweeps, out, **kwargs)


__all__ = ["Session", "OverrideError", "apply_overrides", "set_value", "target_input",
           "ignored_values", "batch", "DEFAULT_WORKFLOW", "LoomError"]
