"""Bypassed and muted nodes (the editor's node menu, Ctrl+B / Ctrl+M), applied to a copy of the
graph for a run; a workflow keeps them as node ui entries ("mode": "bypass" | "mute"), so they
are saved with it, undone like any edit, and honoured wherever the workflow runs (the editor,
`main.py run`, `engine.api.Session.run`, batches).

- bypass: the node is left out and what it fed takes the node's matching input instead (the
  first connected input whose source fits, preferring the output's own type): a bypassed
  Resize Image passes its image through.
- mute: the node does not run, nor does any output node that needs it.
"""

from __future__ import annotations

from engine.errors import LoomError
from engine.graph import Graph
from engine.registry import Registry

MODES = ("bypass", "mute")


def mode_of(graph: Graph, node_id: str) -> str | None:
    mode = graph.nodes[node_id].ui.get("mode")
    return mode if mode in MODES else None


def run_plan(graph: Graph, registry: Registry) -> tuple[Graph, list[str] | None, list[str]]:
    """(graph to run, output node ids to request or None for all, notes for the user)."""
    bypassed = [n for n in graph.nodes if mode_of(graph, n) == "bypass"]
    muted = {n for n in graph.nodes if mode_of(graph, n) == "mute"}
    if not bypassed and not muted:
        return graph, None, []
    g = graph.copy()
    notes: list[str] = []
    types = registry.types
    for nid in bypassed:
        spec = registry.get(g.nodes[nid].type)
        ins = g.inputs_of(nid)
        consumers = [(dst, inp, link) for (dst, inp), link in list(g.links.items())
                     if link.node == nid]
        for dst, inp, link in consumers:
            dst_spec = registry.get(g.nodes[dst].type)
            want = dst_spec.inputs[inp].type if dst_spec and inp in dst_spec.inputs else None
            out_type = next((o.type for o in spec.outputs if o.name == link.output), None) \
                if spec else None
            feeds = []
            for name, src in ins.items():
                src_spec = registry.get(g.nodes[src.node].type)
                src_type = next((o.type for o in src_spec.outputs if o.name == src.output),
                                None) if src_spec else None
                if src_type is not None and want is not None and types.compatible(src_type,
                                                                                  want):
                    feeds.append((src_type != out_type, name, src))
            g.disconnect(dst, inp)
            if feeds:
                _, _, src = min(feeds, key=lambda f: f[0])
                g.connect(src.node, src.output, dst, inp, check=False)
            else:
                notes.append(f"{nid} is bypassed but has no input that fits {dst}.{inp}")
        g.remove_node(nid)
    outputs = []
    needs = g.inputs_by_node()
    for nid, n in g.nodes.items():
        spec = registry.get(n.type)
        if spec is None or not spec.output_node or nid in muted:
            continue
        seen, stack, blocked = set(), [nid], False
        while stack and not blocked:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            blocked = cur in muted
            stack.extend(link.node for link in needs.get(cur, {}).values())
        if not blocked:
            outputs.append(nid)
    for nid in muted:
        g.remove_node(nid)
    if not outputs:
        raise LoomError("nothing to run: every output node is muted or needs a muted node "
                        "(Ctrl+M on a selected node turns muting off)")
    return g, sorted(outputs), notes
