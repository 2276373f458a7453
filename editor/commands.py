"""Undo commands. Each calls the engine Graph API only; the scene redraws from graph events.

A value scrub or a typed edit is one step (`merge_key` + `id()`/`mergeWith()`); a drag of many
nodes is one step (one `SetNodeUi` for all of them); compound edits use `beginMacro`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from PySide6.QtGui import QUndoCommand

from engine.graph import Edge, Graph

_MISSING = object()
SET_VALUE_ID = 1001


class AddNode(QUndoCommand):
    def __init__(self, graph: Graph, type_id: str, node_id: str | None = None,
                 values: dict[str, Any] | None = None, ui: dict[str, Any] | None = None,
                 version: str | None = None, title: str | None = None):
        super().__init__(f"Add {title or type_id}")
        self.graph = graph
        self.type_id = type_id
        self.node_id = node_id or graph.new_id(type_id.rsplit(".", 1)[-1])
        self.values = copy.deepcopy(values) if values else None
        self.ui = copy.deepcopy(ui or {})
        self.version = version

    def redo(self) -> None:
        self.graph.add_node(self.type_id, self.node_id, copy.deepcopy(self.values),
                            copy.deepcopy(self.ui), self.version)

    def undo(self) -> None:
        self.graph.remove_node(self.node_id)


class RemoveNodes(QUndoCommand):
    """Remove nodes with every edge touching them; undo puts back nodes, values and edges."""

    def __init__(self, graph: Graph, node_ids: list[str]):
        super().__init__("Delete " + (node_ids[0] if len(node_ids) == 1
                                      else f"{len(node_ids)} nodes"))
        self.graph = graph
        self.snap = [copy.deepcopy(graph.node(n)) for n in node_ids]
        ids = set(node_ids)
        self.edges = [e for e in graph.edges if e.src in ids or e.dst in ids]

    def redo(self) -> None:
        for n in self.snap:
            self.graph.remove_node(n.id)

    def undo(self) -> None:
        for n in self.snap:
            self.graph.add_node(n.type, n.id, copy.deepcopy(n.values), copy.deepcopy(n.ui),
                                n.version)
            # add_node fills defaults; a value the node did not have stays absent
            for name in list(self.graph.nodes[n.id].values):
                if name not in n.values:
                    self.graph.clear_value(n.id, name)
        for e in self.edges:
            self.graph.connect(e.src, e.output, e.dst, e.input, check=False)


class Connect(QUndoCommand):
    def __init__(self, graph: Graph, src: str, output: str, dst: str, input: str):
        super().__init__(f"Connect {src}.{output} → {dst}.{input}")
        self.graph = graph
        self.edge = Edge(src, output, dst, input)
        self.previous = graph.link(dst, input)

    def redo(self) -> None:
        e = self.edge
        self.graph.connect(e.src, e.output, e.dst, e.input, check=False)

    def undo(self) -> None:
        self.graph.disconnect(self.edge.dst, self.edge.input)
        if self.previous is not None:
            self.graph.connect(self.previous.node, self.previous.output, self.edge.dst,
                               self.edge.input, check=False)


class Disconnect(QUndoCommand):
    def __init__(self, graph: Graph, dst: str, input: str):
        link = graph.link(dst, input)
        super().__init__(f"Disconnect {dst}.{input}")
        self.graph = graph
        self.dst, self.input = dst, input
        self.link = link

    def redo(self) -> None:
        self.graph.disconnect(self.dst, self.input)

    def undo(self) -> None:
        if self.link is not None:
            self.graph.connect(self.link.node, self.link.output, self.dst, self.input,
                               check=False)


class SetValue(QUndoCommand):
    """Set one constant input. Commands with the same `merge_key` (one scrub, one typing
    session) on the same input merge into one undo step."""

    def __init__(self, graph: Graph, node_id: str, input: str, value: Any,
                 merge_key: Any = None):
        super().__init__(f"Set {node_id}.{input}")
        self.graph = graph
        self.node_id, self.input = node_id, input
        values = graph.node(node_id).values
        self.old = copy.deepcopy(values[input]) if input in values else _MISSING
        self.new = value
        self.merge_key = merge_key

    def id(self) -> int:  # noqa: A003 - Qt's name
        return SET_VALUE_ID if self.merge_key is not None else -1

    def mergeWith(self, other: QUndoCommand) -> bool:  # noqa: N802 - Qt's name
        if not isinstance(other, SetValue) or other.merge_key != self.merge_key \
                or (other.node_id, other.input) != (self.node_id, self.input):
            return False
        self.new = other.new
        return True

    def redo(self) -> None:
        self.graph.set_value(self.node_id, self.input, copy.deepcopy(self.new))

    def undo(self) -> None:
        if self.old is _MISSING:
            self.graph.clear_value(self.node_id, self.input)
        else:
            self.graph.set_value(self.node_id, self.input, copy.deepcopy(self.old))


class SetNodeUi(QUndoCommand):
    """Change ui entries (pos, size, collapsed, color, ...) of one or more nodes at once."""

    def __init__(self, graph: Graph, changes: dict[str, dict[str, Any]], text: str):
        super().__init__(text)
        self.graph = graph
        self.new = copy.deepcopy(changes)
        self.old = {nid: {k: copy.deepcopy(graph.node(nid).ui.get(k)) for k in ch}
                    for nid, ch in changes.items()}

    def redo(self) -> None:
        for nid, ch in self.new.items():
            node = self.graph.node(nid)
            for k, v in ch.items():
                if v is None:  # None removes the entry
                    node.ui.pop(k, None)
            self.graph.set_ui(nid, **{k: v for k, v in copy.deepcopy(ch).items()
                                      if v is not None})

    def undo(self) -> None:
        for nid, ch in self.old.items():
            node = self.graph.node(nid)
            for k, v in ch.items():
                if v is None:
                    node.ui.pop(k, None)
            self.graph.set_ui(nid, **{k: v for k, v in copy.deepcopy(ch).items()
                                      if v is not None})


class SetGraphUi(QUndoCommand):
    """Replace one graph-level ui entry (e.g. "groups"); `changed` tells the view."""

    def __init__(self, graph: Graph, key: str, value: Any, text: str,
                 changed: Callable[[], None]):
        super().__init__(text)
        self.graph, self.key, self.changed = graph, key, changed
        self.old = copy.deepcopy(graph.ui[key]) if key in graph.ui else _MISSING
        self.new = copy.deepcopy(value)

    def redo(self) -> None:
        self.graph.ui[self.key] = copy.deepcopy(self.new)
        self.changed()

    def undo(self) -> None:
        if self.old is _MISSING:
            self.graph.ui.pop(self.key, None)
        else:
            self.graph.ui[self.key] = copy.deepcopy(self.old)
        self.changed()
