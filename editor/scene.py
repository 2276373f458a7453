"""The canvas scene: mirrors the engine Graph (it redraws from GraphEvents) and turns gestures
on its items into undo commands (which call the Graph API only)."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path
from typing import Any

from PySide6.QtCore import QPoint, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QAction, QColor, QIcon, QPen, QPixmap
from PySide6.QtWidgets import (
    QFileDialog,
    QGraphicsPathItem,
    QGraphicsScene,
    QGraphicsSceneContextMenuEvent,
    QGraphicsSceneMouseEvent,
    QInputDialog,
    QMenu,
    QWidget,
)

from editor import commands, fields, theme
from editor.document import Document
from editor.items import DEFAULT_W as DEFAULT_NODE_W
from editor.items import EdgeItem, GroupItem, NodeItem, SocketItem, snap, wire_path
from engine.errors import LoomError, Problem
from engine.graph import Graph, GraphEvent
from engine.node import Input
from engine.paths import PROJECT_ROOT
from engine.registry import Registry
from engine.workflow import graph_to_document, read_fragment, unknown_types

CLIPBOARD_MIME = "application/x-loom-workflow"
SCENE_EXTENT = 100_000.0
DUPLICATE_GAP = 40.0


class GraphScene(QGraphicsScene):
    message = Signal(str)
    search_requested = Signal(QPointF, QPointF, object)
    """(scene pos, screen pos, wire origin or None): open the node search there."""
    mask_requested = Signal(str, str)
    viewer_requested = Signal(str)
    help_requested = Signal(str)
    structure_changed = Signal()
    """Nodes, edges or values changed (the problems list is re-checked on this)."""

    def __init__(self, doc: Document, parent: QWidget | None = None):
        super().__init__(parent)
        self.doc = doc
        self.setSceneRect(QRectF(-SCENE_EXTENT / 2, -SCENE_EXTENT / 2, SCENE_EXTENT,
                                 SCENE_EXTENT))
        self.setItemIndexMethod(QGraphicsScene.ItemIndexMethod.BspTreeIndex)
        self.node_items: dict[str, NodeItem] = {}
        self.edge_items: dict[tuple[str, str], EdgeItem] = {}
        self.group_items: list[GroupItem] = []
        self._unsubscribe = None
        self._wire: QGraphicsPathItem | None = None
        self._wire_from: SocketItem | None = None
        self._lifted: tuple[str, str] | None = None  # (dst, input) of a link picked up
        self._press_state: tuple[dict[str, QPointF], list[dict]] | None = None
        self.snap_to_grid = False
        self.actions: dict[str, QAction] = {}
        """The window's actions the context menus share (so they show their shortcuts)."""
        doc.graph_replaced.connect(self.rebuild)
        doc.groups_changed.connect(self.rebuild_groups)
        self.rebuild()

    @property
    def graph(self) -> Graph:
        return self.doc.graph

    @property
    def registry(self) -> Registry:
        return self.doc.registry

    def push(self, cmd) -> None:
        self.doc.undo.push(cmd)

    # mirror of the graph ------------------------------------------------------------------
    def rebuild(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.cancel_wire()
        for item in list(self.node_items.values()):
            self.removeItem(item)
        for item in list(self.edge_items.values()):
            self.removeItem(item)
        self.node_items.clear()
        self.edge_items.clear()
        for nid in self.graph.nodes:
            self._add_node_item(nid)
        for (dst, inp) in self.graph.links:
            self._add_edge_item(dst, inp)
        self.rebuild_groups()
        self._unsubscribe = self.graph.subscribe(self._on_event)
        self.structure_changed.emit()

    def rebuild_groups(self) -> None:
        for g in self.group_items:
            self.removeItem(g)
        self.group_items = []
        groups = self.graph.ui.get("groups")
        if isinstance(groups, list):
            for i, data in enumerate(groups):
                if isinstance(data, dict):
                    item = GroupItem(self, i, data)
                    self.addItem(item)
                    self.group_items.append(item)

    def _on_event(self, ev: GraphEvent) -> None:
        kind = ev.kind
        if kind == "node_added":
            self._add_node_item(ev.node_id)
        elif kind == "node_removed":
            item = self.node_items.pop(ev.node_id, None)
            if item is not None:
                item.close_editor()
                self.removeItem(item)
        elif kind == "edge_added":
            self._add_edge_item(ev.edge.dst, ev.edge.input)
            self._relayout(ev.edge.dst)
        elif kind == "edge_removed":
            item = self.edge_items.pop((ev.edge.dst, ev.edge.input), None)
            if item is not None:
                item.detach()
                self.removeItem(item)
            self._relayout(ev.edge.dst)
        elif kind == "value_changed":
            item = self.node_items.get(ev.node_id)
            if item is not None:
                item.update()
        elif kind == "ui_changed":
            item = self.node_items.get(ev.node_id)
            if item is not None:
                item.apply_ui(self.graph.nodes[ev.node_id].ui)
                item.update()
        # a ui change is layout (position, size, colour) except bypass/mute, which change
        # what runs: that one is an edit of the graph too
        if kind != "ui_changed" or (isinstance(ev.value, dict) and "mode" in ev.value):
            self.structure_changed.emit()

    def _relayout(self, node_id: str) -> None:
        item = self.node_items.get(node_id)
        if item is not None:
            item.relayout()

    def _add_node_item(self, nid: str) -> None:
        n = self.graph.nodes[nid]
        item = NodeItem(self, nid, n.type, self.registry.get(n.type))
        item.apply_ui(n.ui)
        self.addItem(item)
        self.node_items[nid] = item

    def _add_edge_item(self, dst: str, inp: str) -> None:
        link = self.graph.links.get((dst, inp))
        if link is None:
            return
        s_item, d_item = self.node_items.get(link.node), self.node_items.get(dst)
        if s_item is None or d_item is None:
            return
        src = s_item.out_sockets.get(link.output)
        dsk = d_item.in_sockets.get(inp)
        if src is None or dsk is None:
            return  # a dangling edge (unknown port): listed in the problems panel instead
        old = self.edge_items.pop((dst, inp), None)
        if old is not None:
            old.detach()
            self.removeItem(old)
        edge = EdgeItem(src, dsk)
        self.addItem(edge)
        self.edge_items[(dst, inp)] = edge
        src.update()
        dsk.update()

    # editing actions (what menus, keys and gestures call) ---------------------------------
    def add_node(self, type_id: str, pos: QPointF, wire_from: SocketItem | None = None) -> str:
        """Add a node of `type_id` at `pos` (one undo step, including the connection to
        `wire_from` when the node was picked after dropping a wire)."""
        spec = self.registry.get(type_id)
        x, y = pos.x(), pos.y()
        if self.snap_to_grid:
            x, y = snap(x), snap(y)
        cmd = commands.AddNode(self.graph, type_id, ui={"pos": [round(x, 1), round(y, 1)]},
                               title=spec.title if spec else None)
        if wire_from is None:
            self.push(cmd)
            return cmd.node_id
        self.doc.undo.beginMacro(cmd.text())
        self.push(cmd)
        self._connect_new(wire_from, cmd.node_id)
        self.doc.undo.endMacro()
        return cmd.node_id

    def _connect_new(self, origin: SocketItem, new_id: str) -> None:
        item = self.node_items.get(new_id)
        if item is None:
            return
        other = origin.node.node_id
        if origin.is_output:
            for name in item.in_sockets:
                if self.graph.can_connect(other, origin.name, new_id, name) is None:
                    self.push(commands.Connect(self.graph, other, origin.name, new_id, name))
                    return
        else:
            for name in item.out_sockets:
                if self.graph.can_connect(new_id, name, other, origin.name) is None:
                    self.push(commands.Connect(self.graph, new_id, name, other, origin.name))
                    return

    def connect_sockets(self, a: SocketItem, b: SocketItem) -> str | None:
        """Connect two sockets (either order). Returns why not, or None on success."""
        if a.is_output == b.is_output:
            return "connect an output to an input"
        out, inp = (a, b) if a.is_output else (b, a)
        src, dst = out.node.node_id, inp.node.node_id
        why = self.graph.can_connect(src, out.name, dst, inp.name)
        if why:
            self.message.emit(f"Cannot connect: {why}")
            return why
        link = self.graph.link(dst, inp.name)
        if link is not None and (link.node, link.output) == (src, out.name):
            return None
        self.push(commands.Connect(self.graph, src, out.name, dst, inp.name))
        return None

    def disconnect_input(self, node_id: str, input: str) -> None:
        if self.graph.link(node_id, input) is not None:
            self.push(commands.Disconnect(self.graph, node_id, input))

    def set_value(self, node_id: str, input: str, value: Any, merge_key: Any = None) -> bool:
        """Set a constant input (checked against its declaration; one undo step per edit
        session via `merge_key`). Returns whether the value was accepted."""
        node = self.graph.nodes.get(node_id)
        spec = self.registry.get(node.type) if node else None
        inp = spec.inputs.get(input) if spec else None
        if inp is not None:
            value = fields.clamp(inp, value)
            why = inp.check(value)
            if why:
                self.message.emit(f"{node_id}.{input}: {why}")
                return False
        if node is None or (input in node.values and node.values[input] == value
                            and type(node.values[input]) is type(value)):
            return node is not None
        self.push(commands.SetValue(self.graph, node_id, input, value, merge_key))
        return True

    def selected_node_ids(self) -> list[str]:
        return [i.node_id for i in self.selectedItems() if isinstance(i, NodeItem)]

    def delete_selected(self) -> None:
        nodes = self.selected_node_ids()
        edges = [i.key for i in self.selectedItems() if isinstance(i, EdgeItem)
                 and i.src.node.node_id not in nodes and i.dst.node.node_id not in nodes]
        groups = [g for g in self.group_items if g.isSelected()]
        if not (nodes or edges or groups):
            return
        self.doc.undo.beginMacro("Delete")
        for dst, inp in edges:
            self.push(commands.Disconnect(self.graph, dst, inp))
        if nodes:
            self.push(commands.RemoveNodes(self.graph, nodes))
        if groups:
            keep = [g.data_dict() for g in self.group_items if not g.isSelected()]
            self.push(commands.SetGraphUi(self.graph, "groups", keep, "Delete group",
                                          self.doc.groups_changed.emit))
        self.doc.undo.endMacro()

    def copy_selected(self) -> str | None:
        """The selected nodes and the links among them, as a workflow JSON document."""
        ids = set(self.selected_node_ids())
        if not ids:
            return None
        sub = Graph(self.registry)
        for nid in ids:
            sub.nodes[nid] = copy.deepcopy(self.graph.nodes[nid])
            item = self.node_items.get(nid)
            if item is not None:
                sub.nodes[nid].ui["pos"] = [round(item.x(), 1), round(item.y(), 1)]
        for (dst, inp), link in self.graph.links.items():
            if dst in ids and link.node in ids:
                sub.links[(dst, inp)] = link
        doc = graph_to_document(sub)
        doc["loom_clipboard"] = 1
        return json.dumps(doc, indent=1)

    def paste_text(self, text: str, pos: QPointF | None = None,
                   verb: str = "Pasted") -> list[str]:
        """Paste a workflow document (from this or another window, or an older Loom). The
        engine reads it as it reads a file (schema and node-version migrations, structural
        checks; links from nodes outside it dropped), then its nodes are added under new ids
        as one undo step, at `pos`, and selected. What happened, or why nothing was pasted,
        goes to the status bar. Returns the new node ids."""
        try:
            frag = read_fragment(text, self.registry)
        except LoomError as exc:
            self.message.emit(f"Nothing pasted: {exc}")
            return []
        except Exception as exc:  # noqa: BLE001 - whatever is on the clipboard, never crash on it
            self.message.emit(f"Nothing pasted: unreadable clipboard ({type(exc).__name__})")
            return []
        if not frag.nodes:
            self.message.emit("Nothing pasted: the clipboard holds no nodes")
            return []

        def xy(n) -> tuple[float, float] | None:
            p = n.ui.get("pos")
            if isinstance(p, (list, tuple)) and len(p) == 2 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool)
                    and math.isfinite(v) for v in p):
                return float(p[0]), float(p[1])
            return None

        positions = [p for p in map(xy, frag.nodes.values()) if p is not None]
        x0 = min((p[0] for p in positions), default=0.0)
        y0 = min((p[1] for p in positions), default=0.0)
        if pos is None:
            pos = QPointF(x0 + 40, y0 + 40)
        taken = set(self.graph.nodes)
        mapping: dict[str, str] = {}
        for old in frag.nodes:
            new, i = old, 2
            while new in taken:
                new = f"{old}_{i}"
                i += 1
            taken.add(new)
            mapping[old] = new
        cmds = []
        for old, n in frag.nodes.items():
            p = xy(n) or (x0, y0)
            ui = {**n.ui, "pos": [round(pos.x() + p[0] - x0, 1), round(pos.y() + p[1] - y0, 1)]}
            cmds.append(commands.AddNode(self.graph, n.type, mapping[old], n.values, ui,
                                         n.version))
        self.doc.undo.beginMacro(f"Paste {len(cmds)} node{'s' if len(cmds) != 1 else ''}")
        for c in cmds:
            self.push(c)
        for (dst, inp), link in frag.links.items():
            self.push(commands.Connect(self.graph, mapping[link.node], link.output,
                                       mapping[dst], inp))
        self.doc.undo.endMacro()
        self.clearSelection()
        for c in cmds:
            item = self.node_items.get(c.node_id)
            if item is not None:
                item.setSelected(True)
        note = f"{verb} {len(cmds)} node{'s' if len(cmds) != 1 else ''}"
        unknown = unknown_types(frag, self.registry)
        if unknown:
            note += (f"; unknown node type{'s' if len(unknown) != 1 else ''} "
                     f"{', '.join(unknown)} kept as placeholders (they cannot run here)")
        self.message.emit(note)
        return [c.node_id for c in cmds]

    def duplicate_selected(self) -> list[str]:
        text = self.copy_selected()
        if text is None:
            return []
        items = [self.node_items[n] for n in self.selected_node_ids()]
        y0 = min(i.y() for i in items)
        right = max(i.x() + i.width for i in items)
        # beside the originals, clear of them (a copy 30 px off hides what it copied)
        return self.paste_text(text, QPointF(right + DUPLICATE_GAP, y0),
                               verb="Duplicated")

    def toggle_collapsed(self, ids: list[str]) -> None:
        if not ids:
            return
        target = not all(self.graph.nodes[n].ui.get("collapsed", False) for n in ids)
        self.push(commands.SetNodeUi(self.graph, {n: {"collapsed": target} for n in ids},
                                     "Collapse" if target else "Expand"))

    def set_color(self, ids: list[str], color: str | None) -> None:
        if ids:
            self.push(commands.SetNodeUi(self.graph, {n: {"color": color} for n in ids},
                                         "Colour"))

    def resize_node(self, node_id: str, old: float, new: float) -> None:
        h = self.node_items[node_id].height
        cmd = commands.SetNodeUi(self.graph, {node_id: {"size": [round(new, 1), round(h, 1)]}},
                                 "Resize")
        self.push(cmd)

    def rename_node(self, node_id: str, title: str | None = None) -> bool:
        """Give a node its own title (shown instead of its type's; empty: the type's again)."""
        item = self.node_items.get(node_id)
        if item is None:
            return False
        if title is None:
            title, ok = QInputDialog.getText(self._parent_widget(), "Rename node",
                                             f"Title of {node_id}:", text=item.title)
            if not ok:
                return False
        title = title.strip()
        spec_title = item.spec.title if item.spec else item.type_id
        new = title if title and title != spec_title else None
        if new == self.graph.nodes[node_id].ui.get("title"):
            return False
        self.push(commands.SetNodeUi(self.graph, {node_id: {"title": new}},
                                     f"Rename {node_id}"))
        return True

    def rename_selected(self) -> None:
        ids = self.selected_node_ids()
        if ids:
            self.rename_node(ids[0])

    MODES = {"bypass": ("Bypass", "Un-bypass"), "mute": ("Mute", "Unmute")}

    def toggle_mode(self, ids: list[str], mode: str) -> None:
        """Bypass (the node's input goes through to its output) or mute (the node and what
        needs it do not run) the nodes `ids`, or turn that off when all of them have it."""
        ids = [n for n in ids if n in self.graph.nodes]
        if not ids:
            self.message.emit(f"{self.MODES[mode][0]}: select a node first")
            return
        off = all(self.graph.nodes[n].ui.get("mode") == mode for n in ids)
        verb = self.MODES[mode][1 if off else 0]
        self.push(commands.SetNodeUi(self.graph, {n: {"mode": None if off else mode}
                                                  for n in ids},
                                     f"{verb} {ids[0] if len(ids) == 1 else f'{len(ids)} nodes'}"))

    # masks ---------------------------------------------------------------------------------
    def _inputs_with_widget(self, node_id: str | None, widget: str) -> list[str]:
        node = self.graph.nodes.get(node_id) if node_id else None
        spec = self.registry.get(node.type) if node is not None else None
        if spec is None:
            return []
        return [name for name, inp in spec.inputs.items()
                if fields.kind_of(inp) == widget and not self.graph.link(node_id, name)]

    def file_image(self, node_id: str) -> tuple[Any, str] | None:
        """(QImage, path) of the image or mask file a Load Image / Load Mask node names."""
        from PySide6.QtGui import QImage

        from engine.paths import resolve_path

        for kind in ("image", "mask"):
            for name in self._inputs_with_widget(node_id, kind):
                value = self.graph.nodes[node_id].values.get(name)
                if isinstance(value, str) and value:
                    path = resolve_path(value, {"base_dir": str(self.doc.base_dir())})
                    img = QImage(str(path))
                    if not img.isNull():
                        return img, str(path)
        return None

    def mask_capable(self, node_id: str) -> bool:
        """A node "Edit mask…" applies to: one that loads a mask or an image from a file."""
        return bool(self._inputs_with_widget(node_id, "mask")
                    or self._inputs_with_widget(node_id, "image"))

    def mask_target(self, node_id: str | None) -> tuple[str, str, Any] | None:
        """(mask node, its input, reference image or None) that "Edit mask…" on `node_id`
        paints: a Load Mask node its own mask; a Load Image node (or the viewer, `node_id`
        None) the graph's Load Mask node, preferring one that feeds the same node, over the
        image; a Load Mask node is added beside it when the graph has none."""
        own = self._inputs_with_widget(node_id, "mask")
        if own:
            return node_id, own[0], None
        reference = None
        images = self._inputs_with_widget(node_id, "image")
        if images:
            from PySide6.QtGui import QImage

            from engine.paths import resolve_path

            value = self.graph.nodes[node_id].values.get(images[0])
            if value:
                img = QImage(str(resolve_path(value, {"base_dir": str(self.doc.base_dir())})))
                reference = None if img.isNull() else img
        masks = [n for n in self.graph.nodes if self._inputs_with_widget(n, "mask")]
        if masks:
            feeds = {d for (d, _), link in self.graph.links.items() if link.node == node_id}

            def shares(n: str) -> bool:
                return any(link.node == n and d in feeds
                           for (d, _), link in self.graph.links.items())
            best = next((n for n in masks if shares(n)), masks[0])
            return best, self._inputs_with_widget(best, "mask")[0], reference
        if self.registry.get("image.load_mask") is None:
            self.message.emit("Edit mask: add a node that loads a mask first")
            return None
        item = self.node_items.get(node_id) if node_id else None
        if item is not None:
            pos = QPointF(item.x(), item.y() + item.height + 40)
        else:
            view = self._parent_widget()
            pos = view.mapToScene(view.viewport().rect().center()) if view else QPointF()
        new = self.add_node("image.load_mask", pos)
        self.message.emit(f"Added a Load Mask node ({new}) for the mask: connect its mask "
                          "where it is needed")
        return new, self._inputs_with_widget(new, "mask")[0], reference

    # groups --------------------------------------------------------------------------------
    def group_selected(self, title: str = "Group") -> None:
        items = [self.node_items[n] for n in self.selected_node_ids()]
        if items:
            rect = items[0].sceneBoundingRect()
            for i in items[1:]:
                rect = rect.united(i.sceneBoundingRect())
            rect = rect.adjusted(-20, -50, 20, 20)
        else:
            view = self._parent_widget()
            c = view.mapToScene(view.viewport().rect().center()) if view else QPointF()
            rect = QRectF(c.x() - 200, c.y() - 150, 400, 300)
        groups = [g.data_dict() for g in self.group_items]
        groups.append({"title": title, "rect": [round(rect.x()), round(rect.y()),
                                                round(rect.width()), round(rect.height())],
                       "color": "#3b5b8c"})
        self.push(commands.SetGraphUi(self.graph, "groups", groups, "Add group",
                                      self.doc.groups_changed.emit))

    def rename_group(self, item: GroupItem, title: str | None = None) -> None:
        if title is None:
            view = self.views()[0] if self.views() else None
            title, ok = QInputDialog.getText(view, "Rename group", "Title:", text=item.title)
            if not ok:
                return
        groups = [g.data_dict() for g in self.group_items]
        groups[item.index]["title"] = title
        self.push(commands.SetGraphUi(self.graph, "groups", groups, "Rename group",
                                      self.doc.groups_changed.emit))

    # seeds ---------------------------------------------------------------------------------
    def randomize_seed(self, node_id: str, input: str, merge_key: Any = None) -> None:
        spec = self.registry.get(self.graph.nodes[node_id].type)
        inp = spec.inputs[input]
        hi = int(min(inp.max if inp.max is not None else fields.SEED_MAX, fields.SEED_MAX))
        lo = int(max(inp.min if inp.min is not None else 0, 0))
        self.set_value(node_id, input, random.randint(lo, hi), merge_key)

    def toggle_randomize(self, node_id: str, input: str) -> None:
        current = dict(self.graph.nodes[node_id].ui.get("randomize") or {})
        current[input] = not current.get(input, False)
        self.push(commands.SetNodeUi(self.graph, {node_id: {"randomize": current}},
                                     "Randomize after run" if current[input]
                                     else "Keep seed after run"))

    def randomize_after_run(self) -> None:
        """New seeds for every seed input marked "randomize after run" (one undo step)."""
        todo = [(nid, name) for nid, n in self.graph.nodes.items()
                for name, on in (n.ui.get("randomize") or {}).items()
                if on and not self.graph.link(nid, name)]
        if not todo:
            return
        self.doc.undo.beginMacro("Randomize seeds")
        for nid, name in todo:
            if name in (self.registry.get(self.graph.nodes[nid].type) or _NoSpec).inputs:
                self.randomize_seed(nid, name)
        self.doc.undo.endMacro()

    # dialogs fields open -----------------------------------------------------------------------
    def _parent_widget(self) -> QWidget | None:
        return self.views()[0] if self.views() else None

    def portable_path(self, path: str) -> str:
        """Relative to the workflow's folder or Loom's folder when inside one of them."""
        p = Path(path).resolve()
        bases = [self.doc.path.parent.resolve()] if self.doc.path else []
        bases.append(PROJECT_ROOT)
        for base in bases:
            try:
                return p.relative_to(base).as_posix()
            except ValueError:
                continue
        return str(p)

    def browse_path(self, node_id: str, inp: Input, kind: str) -> None:
        parent = self._parent_widget()
        start = str(self.doc.base_dir() if self.doc.source else PROJECT_ROOT)
        if kind == "folder":
            chosen = QFileDialog.getExistingDirectory(parent, f"Choose {inp.name}", start)
        else:
            chosen, _ = QFileDialog.getOpenFileName(parent, f"Choose {inp.name}", start,
                                                    inp.file_filter or "All files (*)")
        if chosen:
            self.set_value(node_id, inp.name, self.portable_path(chosen))

    def choose(self, node_id: str, inp: Input, screen_pos: QPointF) -> None:
        menu = QMenu(self._parent_widget())
        current = self.graph.nodes[node_id].values.get(inp.name, inp.default)
        for choice in inp.choices or ():
            act = menu.addAction(str(choice))
            act.setCheckable(True)
            act.setChecked(choice == current)
            act.setData(choice)
        act = menu.exec(screen_pos.toPoint())
        if act is not None:
            self.set_value(node_id, inp.name, act.data())

    def edit_mask(self, node_id: str, inp: Input) -> None:
        self.mask_requested.emit(node_id, inp.name)

    def show_in_viewer(self, node_id: str) -> None:
        self.viewer_requested.emit(node_id)

    def flash(self, text: str) -> None:
        self.message.emit(text)

    # problems ------------------------------------------------------------------------------
    def set_problems(self, problems: list[Problem]) -> None:
        by_node: dict[str, list[str]] = {}
        for p in problems:
            if p.node_id:
                where = f"{p.input}: " if p.input else ""
                by_node.setdefault(p.node_id, []).append(where + p.message)
        for nid, item in self.node_items.items():
            msgs = by_node.get(nid)
            item.set_problem("\n".join(msgs) if msgs else None)

    # wires -----------------------------------------------------------------------------------
    def begin_wire(self, socket: SocketItem, pos: QPointF) -> None:
        self.cancel_wire()
        origin = socket
        if not socket.is_output:
            link = self.graph.link(socket.node.node_id, socket.name)
            if link is not None and link.node in self.node_items:
                # pick the link up by its input end: drop it elsewhere to move it
                self._lifted = (socket.node.node_id, socket.name)
                edge = self.edge_items.get(self._lifted)
                if edge is not None:
                    edge.hide()
                origin = self.node_items[link.node].out_sockets.get(link.output, socket)
        self._wire_from = origin
        path = QGraphicsPathItem()
        pen = QPen(QColor(origin.color), 2.4, Qt.PenStyle.DashLine)
        path.setPen(pen)
        path.setZValue(5)
        self.addItem(path)
        self._wire = path
        self._highlight(origin)
        self.update_wire(pos)

    def _highlight(self, origin: SocketItem | None) -> None:
        for item in self.node_items.values():
            for s in (*item.in_sockets.values(), *item.out_sockets.values()):
                if origin is None:
                    s.highlight = 0
                elif s.is_output == origin.is_output or s.node is origin.node:
                    s.highlight = -1
                else:
                    s.highlight = 1 if self._can(origin, s) is None else -1
                s.update()

    def _can(self, a: SocketItem, b: SocketItem) -> str | None:
        out, inp = (a, b) if a.is_output else (b, a)
        dst, name = inp.node.node_id, inp.name
        if self._lifted == (dst, name):
            return None
        return self.graph.can_connect(out.node.node_id, out.name, dst, name)

    def update_wire(self, pos: QPointF) -> None:
        if self._wire is None or self._wire_from is None:
            return
        a = self._wire_from.scenePos()
        target = self.socket_near(pos)
        b = target.scenePos() if target is not None and target.highlight > 0 else pos
        self._wire.setPath(wire_path(a, b) if self._wire_from.is_output else wire_path(b, a))

    def socket_near(self, pos: QPointF, radius: float = 14.0) -> SocketItem | None:
        best, best_d = None, radius * radius
        for item in self.items(QRectF(pos.x() - radius, pos.y() - radius, 2 * radius,
                                      2 * radius)):
            if isinstance(item, SocketItem) and item.isVisible():
                d = item.scenePos() - pos
                dd = d.x() ** 2 + d.y() ** 2
                if dd <= best_d:
                    best, best_d = item, dd
        return best

    def end_wire(self, pos: QPointF, screen_pos: QPointF | None = None) -> None:
        origin, lifted = self._wire_from, self._lifted
        self.cancel_wire(restore=False)
        if origin is None:
            return
        target = self.socket_near(pos)
        if target is None or target.is_output == origin.is_output:
            node = next((i for i in self.items(pos) if isinstance(i, NodeItem)), None)
            if node is not None and node is not origin.node:
                target = self._first_compatible(origin, node)
        if target is not None and target.is_output != origin.is_output \
                and self._can(origin, target) is None:
            out, inp = (origin, target) if origin.is_output else (target, origin)
            if lifted is not None and lifted != (inp.node.node_id, inp.name):
                self.doc.undo.beginMacro("Move connection")
                self.push(commands.Disconnect(self.graph, *lifted))
                self.connect_sockets(out, inp)
                self.doc.undo.endMacro()
            elif lifted is None:
                self.connect_sockets(out, inp)
            else:
                self._show_lifted(lifted)
            return
        if target is not None:
            why = self._can(origin, target) if target.is_output != origin.is_output \
                else "connect an output to an input"
            self.message.emit(f"Cannot connect: {why}")
            if lifted is not None:
                self._show_lifted(lifted)
            return
        if lifted is not None:
            self.disconnect_input(*lifted)  # dropped on empty canvas: the link is removed
            return
        self.search_requested.emit(pos, screen_pos or QPointF(), origin)

    def _show_lifted(self, lifted: tuple[str, str]) -> None:
        edge = self.edge_items.get(lifted)
        if edge is not None:
            edge.show()

    def _first_compatible(self, origin: SocketItem, node: NodeItem) -> SocketItem | None:
        pool = node.in_sockets.values() if origin.is_output else node.out_sockets.values()
        fits = [s for s in pool if s.isVisible() and self._can(origin, s) is None]
        free = [s for s in fits if not s.edges]
        return (free or fits or [None])[0]

    def cancel_wire(self, restore: bool = True) -> None:
        if self._wire is not None:
            self.removeItem(self._wire)
        if restore and self._lifted is not None:
            self._show_lifted(self._lifted)
        self._wire = None
        if self._wire_from is not None:
            self._highlight(None)
        self._wire_from = None
        self._lifted = None

    # moves: a drag of any number of nodes and frames is one undo step ---------------------
    def mousePressEvent(self, event: QGraphicsSceneMouseEvent) -> None:  # noqa: N802
        super().mousePressEvent(event)
        if event.button() == Qt.MouseButton.LeftButton:
            self._press_state = ({nid: QPointF(i.pos()) for nid, i in self.node_items.items()},
                                 [g.data_dict() for g in self.group_items])

    def mouseReleaseEvent(self, event: QGraphicsSceneMouseEvent) -> None:  # noqa: N802
        super().mouseReleaseEvent(event)
        state, self._press_state = self._press_state, None
        if state is not None and event.button() == Qt.MouseButton.LeftButton:
            self.commit_moves(*state)

    def commit_moves(self, before: dict[str, QPointF], groups_before: list[dict]) -> None:
        moved = {}
        for nid, old in before.items():
            item = self.node_items.get(nid)
            if item is None or item.pos() == old:
                continue
            x, y = item.x(), item.y()
            if self.snap_to_grid:
                x, y = snap(x), snap(y)
                item.setPos(x, y)
            moved[nid] = {"pos": [round(x, 1), round(y, 1)]}
        groups_now = [g.data_dict() for g in self.group_items]
        groups_changed = groups_now != groups_before
        if not moved and not groups_changed:
            return
        n = len(moved)
        text = f"Move {next(iter(moved))}" if n == 1 else f"Move {n} nodes"
        self.doc.undo.beginMacro(text if moved else "Move group")
        if moved:
            self.push(commands.SetNodeUi(self.graph, moved, text))
        if groups_changed:
            self.push(commands.SetGraphUi(self.graph, "groups", groups_now, "Move group",
                                          self.doc.groups_changed.emit))
        self.doc.undo.endMacro()

    # context menus ---------------------------------------------------------------------------
    def contextMenuEvent(self, event: QGraphicsSceneContextMenuEvent) -> None:  # noqa: N802
        event.ignore()
        super().contextMenuEvent(event)  # a node or a wire under the mouse takes it
        if not event.isAccepted():
            self.canvas_menu(event.scenePos(), event.screenPos())
            event.accept()

    def _menu(self) -> QMenu:
        return QMenu(self._parent_widget())

    def _add_shared(self, menu: QMenu, *keys: str) -> None:
        for key in keys:
            if key is None:
                menu.addSeparator()
            elif key in self.actions:
                menu.addAction(self.actions[key])

    def build_node_menu(self, item: NodeItem, field: Any = None) -> QMenu:
        """The node's menu: its field's actions (when right-clicked on one), then rename,
        duplicate, delete, bypass, mute, collapse, colour, its image in the viewer or the mask
        editor, help. Acts on the selection (the node is selected first)."""
        menu = self._menu()
        menu.setObjectName("nodeMenu")
        head = menu.addAction(f"{item.title}  ·  {item.node_id}")
        head.setEnabled(False)
        if field is not None:
            menu.addSeparator()
            for a in field.actions():
                act = menu.addAction(a.text)
                if a.checked is not None:
                    act.setCheckable(True)
                    act.setChecked(a.checked)
                act.triggered.connect(lambda _c=False, run=a.run: run())
        menu.addSeparator()
        self._add_shared(menu, "rename", "duplicate", "delete", None)
        ids = self.selected_node_ids() or [item.node_id]
        for mode, (verb, _) in self.MODES.items():
            act = menu.addAction(verb)
            act.setCheckable(True)
            act.setChecked(item.mode == mode)
            shared = self.actions.get(mode)
            if shared is not None:  # shown for the user to learn; the window's runs it
                act.setShortcuts(shared.shortcuts())
                act.setToolTip(shared.toolTip())
            act.triggered.connect(lambda _c=False, m=mode: self.toggle_mode(ids, m))
        self._add_shared(menu, "collapse")
        colours = menu.addMenu("Colour")
        for i, c in enumerate(theme.NODE_COLORS):
            act = colours.addAction(_swatch(c), "Default" if i == 0 else c)
            act.triggered.connect(lambda _c=False, c=c, i=i: self.set_color(ids, None if i == 0
                                                                              else c))
        menu.addSeparator()
        if item.images or self.file_image(item.node_id) is not None:
            menu.addAction("Show Image in Viewer").triggered.connect(
                lambda: self.show_in_viewer(item.node_id))
        if self.mask_capable(item.node_id):
            self._add_shared(menu, "edit_mask")
        menu.addSeparator()
        menu.addAction(f"Help: {item.type_title}").triggered.connect(
            lambda: self.help_requested.emit(item.node_id))
        return menu

    def node_menu(self, item: NodeItem, screen_pos: QPointF, field: Any = None) -> None:
        self.build_node_menu(item, field).exec(_point(screen_pos))

    def build_edge_menu(self, edge: EdgeItem, scene_pos: QPointF,
                        screen_pos: QPointF | None = None) -> QMenu:
        menu = self._menu()
        menu.setObjectName("edgeMenu")
        key = edge.key
        src = edge.src
        head = menu.addAction(f"{src.node.node_id}.{src.name} → {key[0]}.{key[1]}")
        head.setEnabled(False)
        menu.addSeparator()
        menu.addAction("Insert Node…").triggered.connect(
            lambda: self.search_requested.emit(scene_pos, screen_pos or QPointF(), edge))
        menu.addAction("Delete Connection").triggered.connect(
            lambda: self.disconnect_input(*key))
        return menu

    def edge_menu(self, edge: EdgeItem, scene_pos: QPointF, screen_pos: QPointF) -> None:
        self.build_edge_menu(edge, scene_pos, QPointF(_point(screen_pos))).exec(
            _point(screen_pos))

    def build_canvas_menu(self, scene_pos: QPointF, screen_pos: QPointF | None = None) -> QMenu:
        menu = self._menu()
        menu.setObjectName("canvasMenu")
        add = menu.addAction("Add Node…\tTab")
        add.triggered.connect(lambda: self.search_requested.emit(scene_pos,
                                                                 screen_pos or QPointF(), None))
        self._add_shared(menu, "paste", None, "select_all", "fit", None, "group")
        return menu

    def canvas_menu(self, scene_pos: QPointF, screen_pos: QPointF) -> None:
        self.build_canvas_menu(scene_pos, QPointF(_point(screen_pos))).exec(_point(screen_pos))

    def insert_node_on_edge(self, key: tuple[str, str], type_id: str, pos: QPointF) -> str | None:
        """Put a new node of `type_id` into the wire that feeds `key` (dst, input): the wire's
        source feeds the new node's first fitting input, the new node's first fitting output
        feeds the old input (one undo step). None when it does not fit."""
        link = self.graph.link(*key)
        if link is None:
            return None
        spec = self.registry.get(type_id)
        if spec is None:
            return None
        self.doc.undo.beginMacro(f"Insert {spec.title}")
        try:
            new = self.add_node(type_id, pos - QPointF(DEFAULT_NODE_W / 2, 20))
            inp = next((n for n in spec.inputs
                        if self.graph.can_connect(link.node, link.output, new, n) is None), None)
            out = next((o.name for o in spec.outputs
                        if self.graph.can_connect(new, o.name, *key) is None), None)
            if inp is not None:
                self.push(commands.Connect(self.graph, link.node, link.output, new, inp))
            if out is not None:
                self.push(commands.Connect(self.graph, new, out, *key))
        finally:
            self.doc.undo.endMacro()
        if inp is None or out is None:
            self.message.emit(f"Inserted {spec.title}, but it "
                              f"{'takes' if inp is None else 'gives'} nothing that fits the "
                              "wire: connect it by hand")
        return new

    def mouseDoubleClickEvent(self, event: QGraphicsSceneMouseEvent) -> None:  # noqa: N802
        view = self._parent_widget()
        if view is not None and self.itemAt(event.scenePos(), view.transform()) is None:
            self.search_requested.emit(event.scenePos(), event.screenPos(), None)
            return
        super().mouseDoubleClickEvent(event)

    def items_rect(self) -> QRectF:
        rect = QRectF()
        for item in (*self.node_items.values(), *self.group_items):
            rect = rect.united(item.sceneBoundingRect())
        return rect


def _point(p: QPointF | QPoint) -> QPoint:
    return p.toPoint() if isinstance(p, QPointF) else QPoint(p)


def _swatch(color: str) -> QIcon:
    pix = QPixmap(14, 14)
    pix.fill(QColor(color))
    return QIcon(pix)


class _NoSpec:
    inputs: dict = {}


THEME = theme  # re-exported for panels that draw like the canvas
