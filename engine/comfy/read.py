"""Reading ComfyUI workflows: the UI format (litegraph: a `nodes` list with positions and
positional `widgets_values`, a `links` list) and the API format (an object keyed by node id, each
node with `class_type` and named `inputs`), from .json files or from the text chunks of a PNG
ComfyUI saved (`workflow`: UI format, `prompt`: API format).

Both become one plain form (`ComfyGraph` of `ComfyNode`s with named values and links), with
Reroute nodes followed, PrimitiveNode widgets folded into the inputs they feed, and muted or
bypassed nodes dealt with as ComfyUI does (muted: not run; bypassed: each output passes the
input of the same type through). Facts about the format only; nothing here runs anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from engine.errors import WorkflowError

# Widget names of the core node types, in `widgets_values` order. "control_after_generate"
# (the seed widget's randomize/fixed choice) is UI-only: present after a seed in files the
# ComfyUI frontend saved, absent from older or hand-written ones.
CONTROL = "control_after_generate"
WIDGETS: dict[str, tuple[str, ...]] = {
    "CheckpointLoaderSimple": ("ckpt_name",),
    "CheckpointLoader": ("config_name", "ckpt_name"),
    "CLIPTextEncode": ("text",),
    "CLIPSetLastLayer": ("stop_at_clip_layer",),
    "EmptyLatentImage": ("width", "height", "batch_size"),
    "KSampler": ("seed", CONTROL, "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "KSamplerAdvanced": ("add_noise", "noise_seed", CONTROL, "steps", "cfg", "sampler_name",
                         "scheduler", "start_at_step", "end_at_step",
                         "return_with_leftover_noise"),
    "VAEDecode": (),
    "VAEDecodeTiled": ("tile_size", "overlap", "temporal_size", "temporal_overlap"),
    "VAEEncode": (),
    "VAEEncodeForInpaint": ("grow_mask_by",),
    "SetLatentNoiseMask": (),
    "SaveImage": ("filename_prefix",),
    "PreviewImage": (),
    "LoadImage": ("image", "upload"),
    "LoadImageMask": ("image", "channel", "upload"),
    "LatentUpscale": ("upscale_method", "width", "height", "crop"),
    "LatentUpscaleBy": ("upscale_method", "scale_by"),
    "ImageScale": ("upscale_method", "width", "height", "crop"),
    "ImageScaleBy": ("upscale_method", "scale_by"),
    "ConditioningSetArea": ("width", "height", "x", "y", "strength"),
    "LoraLoader": ("lora_name", "strength_model", "strength_clip"),
    "LoraLoaderModelOnly": ("lora_name", "strength_model"),
    "ControlNetLoader": ("control_net_name",),
    "VAELoader": ("vae_name",),
    "ControlNetApply": ("strength",),
    "ControlNetApplyAdvanced": ("strength", "start_percent", "end_percent"),
    "SamplerCustom": ("add_noise", "noise_seed", CONTROL, "cfg"),
    "SamplerCustomAdvanced": (),
    "KSamplerSelect": ("sampler_name",),
    "BasicScheduler": ("scheduler", "steps", "denoise"),
    "CFGGuider": ("cfg",),
    "BasicGuider": (),
    "RandomNoise": ("noise_seed", CONTROL),
    "DisableNoise": (),
    "PrimitiveInt": ("value", CONTROL),
    "PrimitiveFloat": ("value",),
    "PrimitiveString": ("value",),
    "PrimitiveStringMultiline": ("value",),
    "PrimitiveBoolean": ("value",),
    "Note": ("text",),
    "MarkdownNote": ("text",),
}

MUTED, BYPASSED = 2, 4
"""litegraph node modes: 0 always (normal), 2 never (muted), 4 bypass."""


@dataclass
class ComfyNode:
    id: str
    type: str
    values: dict[str, Any] = field(default_factory=dict)
    """Named constant inputs (widget values; the API format's non-link inputs)."""
    links: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Input name -> (source node id, output slot), Reroutes followed."""
    widgets: Any = None
    """The UI format's raw `widgets_values` (kept for placeholders)."""
    pos: tuple[float, float] | None = None
    title: str | None = None
    outputs: list[tuple[str, str]] = field(default_factory=list)
    """(name, type) of each output slot, where the file declares them (UI format)."""
    color: str | None = None


@dataclass
class ComfyGraph:
    format: str  # "ui" | "api"
    nodes: dict[str, ComfyNode]
    notes: list[str] = field(default_factory=list)
    """What reading changed: muted or bypassed nodes, links from nodes not in the file."""
    groups: list[dict[str, Any]] = field(default_factory=list)
    comments: list[dict[str, Any]] = field(default_factory=list)
    """Note / MarkdownNote nodes: {"id", "text", "pos"}."""


def comfy_format(doc: Any) -> str | None:
    """"ui", "api" or None: which ComfyUI format `doc` (parsed JSON) is in, if any. A Loom
    workflow (schema_version; the pre-release schema 0, string ids and 4-string links) is
    neither."""
    if not isinstance(doc, dict) or "schema_version" in doc:
        return None
    nodes, links = doc.get("nodes"), doc.get("links")
    if isinstance(nodes, list) and isinstance(links, list):
        if "last_node_id" in doc or "last_link_id" in doc:
            return "ui"
        if any(isinstance(link, dict) or (isinstance(link, list) and len(link) >= 5)
               for link in links):
            return "ui"
        if any(isinstance(n, dict) and ("widgets_values" in n or isinstance(n.get("inputs"), list)
                                        or (isinstance(n.get("id"), int)
                                            and not isinstance(n.get("id"), bool)))
               for n in nodes):
            return "ui"
        return None
    if doc and "nodes" not in doc and all(
            isinstance(v, dict) and isinstance(v.get("class_type"), str) for v in doc.values()):
        return "api"
    return None


def parse_text(text: str, source: str | None = None) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise WorkflowError(f"invalid JSON: {exc}", source) from None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _pos(value: Any) -> tuple[float, float] | None:
    if isinstance(value, dict):  # some frontend versions: {"0": x, "1": y}
        value = [value.get("0"), value.get("1")]
    if isinstance(value, (list, tuple)) and len(value) >= 2:
        x, y = _num(value[0]), _num(value[1])
        if x is not None and y is not None:
            return x, y
    return None


def _named_widgets(type_: str, widgets: Any) -> dict[str, Any]:
    """Widget values by name, for the types in WIDGETS (positional lists), or as saved (dicts)."""
    if isinstance(widgets, dict):
        return {k: v for k, v in widgets.items() if isinstance(k, str)}
    if not isinstance(widgets, list):
        return {}
    names = WIDGETS.get(type_)
    if names is None:
        return {}
    if CONTROL in names and len(widgets) < len(names):
        names = tuple(n for n in names if n != CONTROL)  # saved without the seed's control
    return {n: v for n, v in zip(names, widgets) if n != CONTROL}


def _link_table(links: Any, source: str | None) -> dict[int, tuple[int, int, str]]:
    """link id -> (origin node id, origin slot, type), from lists or objects."""
    out: dict[int, tuple[int, int, str]] = {}
    if not isinstance(links, list):
        raise WorkflowError("ComfyUI workflow: 'links' must be a list", source, "links")
    for i, link in enumerate(links):
        if isinstance(link, list) and len(link) >= 5:
            lid, origin, slot = link[0], link[1], link[2]
            type_ = link[5] if len(link) > 5 else ""
        elif isinstance(link, dict):
            lid, origin, slot = link.get("id"), link.get("origin_id"), link.get("origin_slot")
            type_ = link.get("type", "")
        else:
            raise WorkflowError("ComfyUI workflow: a link must be a list or an object", source,
                                f"links[{i}]")
        if not all(isinstance(v, (int, str)) and not isinstance(v, bool)
                   for v in (lid, origin, slot)):
            raise WorkflowError("ComfyUI workflow: a link needs ids and a slot", source,
                                f"links[{i}]")
        out[_int(lid)] = (_int(origin), _int(slot), str(type_ or ""))
    return out


def _int(v: Any) -> Any:
    try:
        return int(v)
    except (TypeError, ValueError):
        return v


def read_ui(doc: dict[str, Any], source: str | None = None) -> ComfyGraph:
    links = _link_table(doc.get("links"), source)
    raw: dict[str, dict[str, Any]] = {}
    for i, n in enumerate(doc.get("nodes") or []):
        if not isinstance(n, dict) or "id" not in n or not isinstance(n.get("type"), str):
            raise WorkflowError("ComfyUI workflow: each node needs an id and a type", source,
                                f"nodes[{i}]")
        raw[str(n["id"])] = n
    graph = ComfyGraph("ui", {})
    # the source of each node input: (origin id, slot), before following reroutes
    inputs: dict[str, list[tuple[str, str, tuple[str, int] | None, bool]]] = {}
    for nid, n in raw.items():
        rows = []
        for entry in n.get("inputs") or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                continue
            lid = entry.get("link")
            origin = None
            if lid is not None and _int(lid) in links:
                o, slot, _t = links[_int(lid)]
                origin = (str(o), slot)
            rows.append((entry["name"], str(entry.get("type") or ""), origin,
                         isinstance(entry.get("widget"), dict)))
        inputs[nid] = rows

    def follow(origin: tuple[str, int], want: str, seen: set[str]) -> tuple[str, int] | None:
        """The real source behind Reroutes and bypassed nodes (None: nothing)."""
        src, slot = origin
        n = raw.get(src)
        if n is None or src in seen:
            return origin
        seen = seen | {src}
        if n["type"] == "Reroute":
            rows = inputs.get(src) or []
            return follow(rows[0][2], want, seen) if rows and rows[0][2] else None
        if n.get("mode") == BYPASSED:
            outs = n.get("outputs") or []
            out = outs[slot] if isinstance(slot, int) and 0 <= slot < len(outs) else None
            out_type = str(out.get("type") or "") if isinstance(out, dict) else ""
            rows = inputs.get(src) or []
            # ComfyUI passes the input of the same index through when its type matches the
            # output's, else the first input of that type
            pick = [rows[slot]] if isinstance(slot, int) and slot < len(rows) \
                and rows[slot][1] == out_type and rows[slot][2] is not None else []
            pick = pick or [r for r in rows if r[1] == out_type and r[2] is not None]
            return follow(pick[0][2], want, seen) if pick else None
        return origin

    for nid, n in raw.items():
        type_ = n["type"]
        mode = n.get("mode", 0)
        if type_ == "Reroute" or mode == BYPASSED:
            if mode == BYPASSED:
                graph.notes.append(f"node {nid} ({type_}) is bypassed in ComfyUI: not imported, "
                                   "its inputs pass through to what it fed (as ComfyUI does)")
            continue
        if mode == MUTED:
            graph.notes.append(f"node {nid} ({type_}) is muted in ComfyUI: not imported")
            continue
        widgets = n.get("widgets_values")
        if type_ in ("Note", "MarkdownNote"):
            text = _named_widgets(type_, widgets).get("text", "")
            pos = _pos(n.get("pos"))
            graph.comments.append({"id": nid, "text": str(text),
                                   "pos": list(pos) if pos else None})
            continue
        if type_ == "PrimitiveNode":
            continue  # a frontend-only widget holder: its value is in the inputs it feeds
        node = ComfyNode(nid, type_, _named_widgets(type_, widgets), {}, widgets,
                         _pos(n.get("pos")), n.get("title") if isinstance(n.get("title"), str)
                         else None, color=n.get("color") if isinstance(n.get("color"), str)
                         else None)
        for out in n.get("outputs") or []:
            if isinstance(out, dict):
                node.outputs.append((str(out.get("name") or out.get("type") or "output"),
                                     str(out.get("type") or "")))
        for name, type_in, origin, _widget in inputs[nid]:
            if origin is None:
                continue
            src = follow(origin, type_in, set())
            if src is None:
                continue
            s = raw.get(src[0])
            if s is not None and s["type"] == "PrimitiveNode":
                if name not in node.values:
                    pw = s.get("widgets_values")
                    if isinstance(pw, list) and pw:
                        node.values[name] = pw[0]
                continue
            if s is not None and s.get("mode") == MUTED:
                graph.notes.append(f"node {nid} ({type_}) input '{name}' comes from muted node "
                                   f"{src[0]} ({s['type']}): left unconnected")
                continue
            node.links[name] = (str(src[0]), int(src[1]) if isinstance(src[1], int) else 0)
        graph.nodes[nid] = node
    for g in doc.get("groups") or []:
        if isinstance(g, dict):
            box = g.get("bounding")
            if isinstance(box, list) and len(box) == 4 and all(_num(v) is not None for v in box):
                graph.groups.append({"title": str(g.get("title") or "Group"),
                                     "rect": [float(v) for v in box],
                                     **({"color": g["color"]} if isinstance(g.get("color"), str)
                                        else {})})
    return graph


def read_api(doc: dict[str, Any], source: str | None = None) -> ComfyGraph:
    graph = ComfyGraph("api", {})
    for nid, n in doc.items():
        inputs = n.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise WorkflowError("ComfyUI workflow: 'inputs' must be an object", source,
                                f"{nid}.inputs")
        meta = n.get("_meta") if isinstance(n.get("_meta"), dict) else {}
        node = ComfyNode(str(nid), n["class_type"],
                         title=meta.get("title") if isinstance(meta.get("title"), str) else None)
        for name, value in inputs.items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) \
                    and not isinstance(value[0], bool) and isinstance(value[1], int) \
                    and not isinstance(value[1], bool):
                node.links[name] = (str(value[0]), value[1])
            else:
                node.values[name] = value
        graph.nodes[str(nid)] = node
    for node in graph.nodes.values():
        for name, (src, _slot) in list(node.links.items()):
            if src not in graph.nodes:
                graph.notes.append(f"node {node.id} ({node.type}) input '{name}' comes from node "
                                   f"{src}, which is not in the file: left unconnected")
                del node.links[name]
    return graph


def read_comfy(doc: Any, source: str | None = None) -> ComfyGraph:
    kind = comfy_format(doc)
    if kind == "ui":
        return read_ui(doc, source)
    if kind == "api":
        return read_api(doc, source)
    raise WorkflowError("not a ComfyUI workflow (neither the UI format with 'nodes' and "
                        "'links' nor the API format keyed by node id)", source)
