"""Graph validation: a list of named checks that together collect every problem at once."""

from __future__ import annotations

from collections.abc import Iterable

from engine.errors import Problem, ValidationError
from engine.graph import Graph
from engine.registry import Registry


def _unknown_types(graph: Graph, registry: Registry) -> Iterable[Problem]:
    # the packages the workflow file recorded for its node types (engine.workflow): named in
    # the message, never installed or imported
    recorded = graph.ui.get("_node_packages")
    recorded = recorded if isinstance(recorded, dict) else {}
    for n in graph.nodes.values():
        if registry.get(n.type) is None:
            why = registry.why_missing(n.type, recorded.get(n.type))
            yield Problem("unknown_node_type", f"unknown node type '{n.type}' ({why})",
                          n.id, n.type)


def unknown_type_problems(graph: Graph, registry: Registry) -> list[Problem]:
    """One problem per node whose type is not registered, by node id."""
    return list(_unknown_types(graph, registry))


def check_known_types(graph: Graph, registry: Registry) -> None:
    """Raise ValidationError naming every node of an unknown type (before anything else is
    checked: overrides, outputs, values)."""
    found = unknown_type_problems(graph, registry)
    if found:
        raise ValidationError(found)


def _dangling_edges(graph: Graph, registry: Registry) -> Iterable[Problem]:
    for (dst, inp), link in graph.links.items():
        d = graph.nodes.get(dst)
        if d is None:
            yield Problem("dangling_edge", f"edge into missing node '{dst}'", dst, None, inp)
            continue
        src = graph.nodes.get(link.node)
        if src is None:
            yield Problem("dangling_edge", f"connected to missing node '{link.node}'",
                          dst, d.type, inp)
            continue
        d_spec, s_spec = registry.get(d.type), registry.get(src.type)
        if d_spec is not None and inp not in d_spec.inputs:
            yield Problem("dangling_edge", f"edge into unknown input '{inp}'", dst, d.type, inp)
        if s_spec is not None and s_spec.output(link.output) is None:
            yield Problem("dangling_edge",
                          f"connected to unknown output '{link.output}' of node '{link.node}' "
                          f"({src.type})", dst, d.type, inp)


def _types_match(graph: Graph, registry: Registry) -> Iterable[Problem]:
    for (dst, inp), link in graph.links.items():
        d, s = graph.nodes.get(dst), graph.nodes.get(link.node)
        if d is None or s is None:
            continue
        d_spec, s_spec = registry.get(d.type), registry.get(s.type)
        if d_spec is None or s_spec is None:
            continue
        want, out = d_spec.inputs.get(inp), s_spec.output(link.output)
        if want is None or out is None:
            continue
        if not registry.types.compatible(out.type, want.type):
            yield Problem("type_mismatch",
                          f"takes {want.type} but is connected to '{link.node}.{link.output}' "
                          f"of type {out.type}", dst, d.type, inp)


def _inputs_present_and_valid(graph: Graph, registry: Registry) -> Iterable[Problem]:
    for n in graph.nodes.values():
        spec = registry.get(n.type)
        if spec is None:
            continue
        for name in n.values:
            if name not in spec.inputs:
                yield Problem("unknown_input", f"unknown input '{name}'", n.id, n.type, name)
        for name, inp in spec.inputs.items():
            linked = (n.id, name) in graph.links
            if linked:
                continue
            if name not in n.values:
                if inp.required:
                    what = "must be connected" if inp.connection_only else "needs a value"
                    yield Problem("missing_input", f"required input {what}", n.id, n.type, name)
                continue
            if inp.connection_only:
                if inp.required:
                    yield Problem("missing_input", "required input must be connected",
                                  n.id, n.type, name)
                elif n.values[name] is not None:
                    # an unwired optional connection must not smuggle a constant into run()
                    yield Problem("value_error", f"takes a connection ({inp.type}), not a value",
                                  n.id, n.type, name)
                continue
            problem = inp.problem(n.values[name])
            if problem is not None:
                yield Problem(problem[0], problem[1], n.id, n.type, name)


def _acyclic(graph: Graph, registry: Registry) -> Iterable[Problem]:
    cycle = find_cycle(graph)
    if cycle:
        path = " -> ".join(cycle + [cycle[0]])
        first = graph.nodes[cycle[0]]
        yield Problem("cycle", f"the graph has a cycle: {path}", first.id, first.type)


def _paths_usable(graph: Graph, registry: Registry) -> Iterable[Problem]:
    """Path inputs (Input(path=True)) that can never name a file: a NUL, a lone surrogate, a
    name over 255 bytes, a path over PATH_MAX, a symlink loop (relative paths resolved as
    without a workflow folder; Executor.submit checks them again with the run's options)."""
    from engine.paths import path_access_problem, path_problem, resolve_path

    for n in graph.nodes.values():
        spec = registry.get(n.type)
        for name, inp in (spec.inputs.items() if spec is not None else ()):
            value = n.values.get(name)
            if inp.path and isinstance(value, str) and value and (n.id, name) not in graph.links:
                why = path_problem(value) or path_access_problem(
                    resolve_path(value, None, inp.library))
                if why is not None:
                    yield Problem("bad_path", why, n.id, n.type, name)


CHECKS = (_unknown_types, _dangling_edges, _types_match, _inputs_present_and_valid, _paths_usable,
          _acyclic)


def find_cycle(graph: Graph) -> list[str] | None:
    """One cycle of node ids (in data-flow order), or None."""
    succ: dict[str, list[str]] = {nid: [] for nid in graph.nodes}
    for (dst, _), link in graph.links.items():
        if link.node in succ and dst in succ:
            succ[link.node].append(dst)
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(succ, WHITE)
    for root in sorted(succ):
        if colour[root] != WHITE:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        while stack:
            nid, i = stack.pop()
            if i == 0:
                colour[nid] = GREY
                path.append(nid)
            if i < len(succ[nid]):
                stack.append((nid, i + 1))
                nxt = succ[nid][i]
                if colour[nxt] == GREY:
                    return path[path.index(nxt):]
                if colour[nxt] == WHITE:
                    stack.append((nxt, 0))
            else:
                colour[nid] = BLACK
                path.pop()
    return None


def problems(graph: Graph, registry: Registry, only: set[str] | None = None) -> list[Problem]:
    """Every problem of the graph (or of the nodes in `only`), in a stable order."""
    found: list[Problem] = []
    for check in CHECKS:
        for p in check(graph, registry):
            if only is None or p.node_id is None or p.node_id in only or p.code == "cycle":
                found.append(p)
    return found


def validate(graph: Graph, registry: Registry, only: set[str] | None = None) -> None:
    found = problems(graph, registry, only)
    if found:
        raise ValidationError(found)
