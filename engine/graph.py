"""The graph model: nodes with ids and named constant values, edges from (node, output) to
(node, input), and plain events that a GUI subscribes to. The model does not run anything."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.errors import LoomError

_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


@dataclass(frozen=True)
class Link:
    """The source end of an edge: output `output` of node `node`."""

    node: str
    output: str


@dataclass(frozen=True)
class Edge:
    src: str
    output: str
    dst: str
    input: str


@dataclass
class NodeInstance:
    id: str
    type: str
    version: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    ui: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GraphEvent:
    """kind: node_added, node_removed, value_changed, ui_changed, edge_added, edge_removed."""

    kind: str
    node_id: str | None = None
    input: str | None = None
    edge: Edge | None = None
    value: Any = None


class GraphError(LoomError):
    """An edit the graph refuses (unknown node, incompatible connection, duplicate id)."""


class Graph:
    def __init__(self, registry: Any = None):
        self.registry = registry
        self.nodes: dict[str, NodeInstance] = {}
        self.links: dict[tuple[str, str], Link] = {}
        self.ui: dict[str, Any] = {}
        self._listeners: list[Callable[[GraphEvent], None]] = []

    # events -------------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[GraphEvent], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _emit(self, event: GraphEvent) -> None:
        for listener in list(self._listeners):
            listener(event)

    # queries ------------------------------------------------------------------------------
    @property
    def edges(self) -> list[Edge]:
        return [Edge(l.node, l.output, dst, inp) for (dst, inp), l in self.links.items()]

    def node(self, node_id: str) -> NodeInstance:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise GraphError(f"no node with id '{node_id}'") from None

    def link(self, node_id: str, input: str) -> Link | None:
        return self.links.get((node_id, input))

    def inputs_of(self, node_id: str) -> dict[str, Link]:
        return {inp: l for (dst, inp), l in self.links.items() if dst == node_id}

    def inputs_by_node(self) -> dict[str, dict[str, Link]]:
        """Every node's incoming links, {node id: {input: link}}, built in one pass over the
        edges (use this instead of `inputs_of` in a loop over nodes)."""
        out: dict[str, dict[str, Link]] = {}
        for (dst, inp), l in self.links.items():
            out.setdefault(dst, {})[inp] = l
        return out

    def dependants(self, node_id: str) -> list[Edge]:
        return [e for e in self.edges if e.src == node_id]

    def new_id(self, base: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_]+", "_", base).strip("_") or "node"
        if base[0].isdigit():
            base = "n_" + base
        if base not in self.nodes:
            return base
        i = 2
        while f"{base}_{i}" in self.nodes:
            i += 1
        return f"{base}_{i}"

    # edits --------------------------------------------------------------------------------
    def add_node(
        self,
        type_id: str,
        node_id: str | None = None,
        values: dict[str, Any] | None = None,
        ui: dict[str, Any] | None = None,
        version: str | None = None,
    ) -> str:
        spec = self.registry.get(type_id) if self.registry is not None else None
        if node_id is None:
            node_id = self.new_id(type_id.rsplit(".", 1)[-1])
        if not isinstance(node_id, str) or not _ID.fullmatch(node_id):
            raise GraphError(f"node id {node_id!r} must be letters, digits, '_' or '-'")
        if node_id in self.nodes:
            raise GraphError(f"a node with id '{node_id}' already exists")
        if version is None and spec is not None:
            version = spec.version
        vals = {}
        if spec is not None:
            vals = {n: copy.deepcopy(i.default) for n, i in spec.inputs.items()
                    if i.has_default and not i.connection_only}
        vals.update(values or {})
        self.nodes[node_id] = NodeInstance(node_id, type_id, version, vals, dict(ui or {}))
        self._emit(GraphEvent("node_added", node_id))
        return node_id

    def remove_node(self, node_id: str) -> None:
        self.node(node_id)
        for (dst, inp), l in list(self.links.items()):
            if dst == node_id or l.node == node_id:
                self.disconnect(dst, inp)
        del self.nodes[node_id]
        self._emit(GraphEvent("node_removed", node_id))

    def set_value(self, node_id: str, input: str, value: Any) -> None:
        n = self.node(node_id)
        n.values[input] = value
        self._emit(GraphEvent("value_changed", node_id, input, value=value))

    def clear_value(self, node_id: str, input: str) -> None:
        n = self.node(node_id)
        if input in n.values:
            del n.values[input]
            self._emit(GraphEvent("value_changed", node_id, input, value=None))

    def set_ui(self, node_id: str, **values: Any) -> None:
        n = self.node(node_id)
        n.ui.update(values)
        self._emit(GraphEvent("ui_changed", node_id, value=values))

    def can_connect(self, src: str, output: str, dst: str, input: str) -> str | None:
        """Why this connection is refused, or None when it is allowed."""
        if src not in self.nodes:
            return f"no node with id '{src}'"
        if dst not in self.nodes:
            return f"no node with id '{dst}'"
        if src == dst:
            return "a node cannot feed itself"
        if self.registry is None:
            return None
        s_spec = self.registry.get(self.nodes[src].type)
        d_spec = self.registry.get(self.nodes[dst].type)
        if s_spec is None or d_spec is None:
            return None
        out = s_spec.output(output)
        if out is None:
            return f"node '{src}' ({s_spec.type_id}) has no output '{output}'"
        inp = d_spec.inputs.get(input)
        if inp is None:
            return f"node '{dst}' ({d_spec.type_id}) has no input '{input}'"
        if not self.registry.types.compatible(out.type, inp.type):
            return (f"node '{dst}' ({d_spec.type_id}) input '{input}' takes {inp.type}, "
                    f"not {out.type} from '{src}.{output}'")
        if self._reaches(dst, src):
            return f"connecting '{src}.{output}' to '{dst}.{input}' would make a cycle"
        return None

    def _reaches(self, start: str, target: str) -> bool:
        """Does data flow from `start` to `target` along existing edges?"""
        stack, seen = [start], set()
        while stack:
            cur = stack.pop()
            if cur == target:
                return True
            if cur in seen:
                continue
            seen.add(cur)
            stack.extend(l_dst for (l_dst, _), l in self.links.items() if l.node == cur)
        return False

    def connect(self, src: str, output: str, dst: str, input: str, check: bool = True) -> Edge:
        if check:
            why = self.can_connect(src, output, dst, input)
            if why:
                raise GraphError(why)
        if (dst, input) in self.links:
            self.disconnect(dst, input)
        self.links[(dst, input)] = Link(src, output)
        edge = Edge(src, output, dst, input)
        self._emit(GraphEvent("edge_added", dst, input, edge=edge))
        return edge

    def disconnect(self, dst: str, input: str) -> Edge | None:
        l = self.links.pop((dst, input), None)
        if l is None:
            return None
        edge = Edge(l.node, l.output, dst, input)
        self._emit(GraphEvent("edge_removed", dst, input, edge=edge))
        return edge

    def copy(self) -> Graph:
        """An independent copy (no listeners): values and ui are copied deeply."""
        g = Graph(self.registry)
        g.nodes = {nid: NodeInstance(n.id, n.type, n.version, copy_value(n.values),
                                     copy_value(n.ui))
                   for nid, n in self.nodes.items()}
        g.links = dict(self.links)
        g.ui = copy_value(self.ui)
        return g


_ATOMS = (str, int, float, bool, type(None))


def copy_value(value: Any) -> Any:
    """A deep copy of JSON-like data (dicts, lists, scalars), several times faster than
    copy.deepcopy; anything else is handed to copy.deepcopy."""
    t = type(value)
    if t is dict:
        return {k: v if type(v) in _ATOMS else copy_value(v) for k, v in value.items()}
    if t is list:
        return [v if type(v) in _ATOMS else copy_value(v) for v in value]
    if t in _ATOMS:
        return value
    return copy.deepcopy(value)
