"""Workflow files: one JSON document per graph, readable and diff-able.

    {"schema_version": 1,
     "nodes": {"prompt": {"type": "conditioning.text_encode", "version": "1.0.0",
                          "inputs": {"text": "a red circle",
                                     "clip": {"node": "checkpoint", "output": "clip"}},
                          "ui": {"pos": [120, 80]}}},
     "ui": {"viewport": {...}, "groups": [...]}}

Constants are stored by input name, links as {"node", "output"} references. The `ui` sections
are carried, never read by the engine. Loading migrates older schema versions and node versions
through explicit functions, then validates. Anything malformed raises `WorkflowError` naming the
file and the place; nothing in a file is ever executed.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import WorkflowError
from engine.files import write_text_atomic
from engine.graph import Graph, GraphError
from engine.library import saved_ui
from engine.node import parse_semver
from engine.registry import Registry
from engine.validate import validate

SCHEMA_VERSION = 1
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_UI_DEPTH = 100
"""How deeply `ui` sections may nest: deeper ones would overflow the stack when a graph is
copied (copy.deepcopy recurses), so they are refused at load time."""
PNG_KEY = "workflow"

# schema migrations: version N -> N+1, each a function of the whole document ------------------


def _migrate_0_to_1(doc: dict[str, Any]) -> dict[str, Any]:
    """Schema 0 (Loom's pre-release format): nodes as a list with "id" and "pos", links as a
    separate list of [src, output, dst, input]."""
    nodes_in = doc.get("nodes")
    if not isinstance(nodes_in, list):
        raise WorkflowError("schema 0 expects 'nodes' to be a list", where="nodes")
    nodes: dict[str, Any] = {}
    for i, n in enumerate(nodes_in):
        if not isinstance(n, dict) or not isinstance(n.get("id"), str):
            raise WorkflowError("each node needs a string 'id'", where=f"nodes[{i}]")
        entry = {"type": n.get("type"), "inputs": dict(n.get("inputs") or {}), "ui": {}}
        if "version" in n:
            entry["version"] = n["version"]
        if "pos" in n:
            entry["ui"]["pos"] = n["pos"]
        nodes[n["id"]] = entry
    for i, link in enumerate(doc.get("links") or []):
        if not (isinstance(link, list) and len(link) == 4
                and all(isinstance(x, str) for x in link)):
            raise WorkflowError("a link must be [src, output, dst, input]", where=f"links[{i}]")
        src, out, dst, inp = link
        if dst not in nodes:
            raise WorkflowError(f"link into unknown node '{dst}'", where=f"links[{i}]")
        if not isinstance(nodes[dst]["inputs"], dict):
            raise WorkflowError("inputs must be an object", where=f"nodes.{dst}.inputs")
        nodes[dst]["inputs"][inp] = {"node": src, "output": out}
    return {"schema_version": 1, "nodes": nodes, "ui": doc.get("ui") or {}}


SCHEMA_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _migrate_0_to_1}


# reading ----------------------------------------------------------------------------------------


def read_document(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON document of a workflow file (.json, or a .png with an embedded workflow)."""
    p = Path(path)
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            # a folder, a FIFO (read would wait forever), /dev/zero (would never end)
            raise WorkflowError("cannot read file: not a regular file (a folder, a FIFO or a "
                                "device)", str(p))
        size = st.st_size
        if size > MAX_FILE_BYTES:
            raise WorkflowError(f"file is too large ({size} bytes)", str(p))
        with open(p, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:  # it grew after the check
            raise WorkflowError(f"file is too large (over {MAX_FILE_BYTES} bytes)", str(p))
    except (OSError, ValueError) as exc:  # ValueError: a NUL or a lone surrogate in the path
        raise WorkflowError(f"cannot read file: {getattr(exc, 'strerror', None) or exc}",
                            str(p)) from None
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        text = png_text_chunks(data, str(p)).get(PNG_KEY)
        if text is None:
            raise WorkflowError("this PNG carries no Loom workflow", str(p))
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise WorkflowError(f"not UTF-8 text (byte {exc.start})", str(p)) from None
    return parse_document(text, str(p))


def parse_document(text: str, source: str | None = None) -> dict[str, Any]:
    """The JSON object of a workflow's text, however it arrived (a file, a PNG's text chunk,
    the clipboard): the same MAX_FILE_BYTES limit (in UTF-8) applies to each."""
    if not isinstance(text, str):
        raise WorkflowError(f"a workflow must be text, got {type(text).__name__}", source)
    if len(text) * 4 > MAX_FILE_BYTES and (
            len(text) > MAX_FILE_BYTES
            or len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES):
        raise WorkflowError(f"the workflow is too large (over {MAX_FILE_BYTES} bytes)", source)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"invalid JSON: {exc.msg}", source,
                            f"line {exc.lineno}, column {exc.colno}") from None
    except (RecursionError, ValueError) as exc:
        raise WorkflowError(f"invalid JSON: {type(exc).__name__}", source) from None
    if not isinstance(doc, dict):
        raise WorkflowError("a workflow must be a JSON object", source)
    return doc


def png_text_chunks(data: bytes, source: str | None = None) -> dict[str, str]:
    """tEXt / zTXt / iTXt chunks of a PNG, parsed by hand (no image library needed).

    Limits agree with what Loom writes: Save Image embeds the workflow uncompressed and keeps
    the whole PNG within MAX_FILE_BYTES (the limit read_document applies to any file), and the
    text decompressed from zTXt / compressed iTXt chunks may total MAX_FILE_BYTES, the size of
    the largest .json workflow that opens -- in all chunks together, so that many small
    compressed chunks cannot inflate into gigabytes."""
    out: dict[str, str] = {}
    budget = [MAX_FILE_BYTES]
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length:
            raise WorkflowError("truncated PNG chunk", source)
        pos += 12 + length
        try:
            if ctype == b"tEXt":
                key, _, value = body.partition(b"\0")
                out[key.decode("latin-1")] = value.decode("latin-1")
            elif ctype == b"zTXt":
                key, _, rest = body.partition(b"\0")
                out[key.decode("latin-1")] = _inflate(rest[1:], budget).decode("latin-1")
            elif ctype == b"iTXt":
                key, _, rest = body.partition(b"\0")
                compressed, _method = rest[0], rest[1]
                _lang, _, rest = rest[2:].partition(b"\0")
                _tkey, _, value = rest.partition(b"\0")
                out[key.decode("latin-1")] = (_inflate(value, budget) if compressed
                                              else value).decode()
            elif ctype == b"IEND":
                break
        except (UnicodeDecodeError, IndexError, zlib.error) as exc:
            raise WorkflowError(f"unreadable PNG text chunk: {exc}", source) from None
    else:
        if pos < len(data):  # a few bytes left: a chunk header cut short
            raise WorkflowError("truncated PNG chunk", source)
    return out


def _inflate(data: bytes, budget: list[int]) -> bytes:
    """Decompress at most budget[0] bytes (what is left of the PNG's text allowance)."""
    d = zlib.decompressobj()
    out = d.decompress(data, max(budget[0], 1))
    if d.unconsumed_tail or len(out) > budget[0]:
        raise zlib.error(f"text chunks decompress to more than {MAX_FILE_BYTES} bytes")
    budget[0] -= len(out)
    return out


def migrate_document(doc: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    version = doc.get("schema_version", doc.get("version"))
    if isinstance(version, bool) or not isinstance(version, int):
        raise WorkflowError("missing or non-integer 'schema_version'", source, "schema_version")
    if version > SCHEMA_VERSION:
        raise WorkflowError(f"schema_version {version} is newer than this Loom understands "
                            f"({SCHEMA_VERSION}); update Loom", source, "schema_version")
    if version < 0:
        raise WorkflowError(f"invalid schema_version {version}", source, "schema_version")
    while version < SCHEMA_VERSION:
        try:
            doc = SCHEMA_MIGRATIONS[version](doc)
        except WorkflowError as exc:
            raise WorkflowError(str(exc), source) from None
        except (TypeError, AttributeError, KeyError, ValueError) as exc:
            raise WorkflowError(f"cannot migrate from schema {version}: {exc}", source) from None
        version = doc["schema_version"]
    return doc


def _is_constant(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _migrate_node(type_id: str, version: str, inputs: dict[str, Any], registry: Registry,
                  source: str | None, where: str) -> tuple[str, dict[str, Any]]:
    spec = registry.get(type_id)
    if spec is None:
        return version, inputs
    try:
        file_v = parse_semver(version)
    except ValueError:
        raise WorkflowError(f"invalid node version {version!r}", source, where) from None
    steps = 0
    while version != spec.version and version in spec.migrations and steps < 100:
        new_version, fn = spec.migrations[version]
        try:
            inputs = fn(dict(inputs))
        except Exception as exc:  # noqa: BLE001 - a migration meeting odd data must not crash
            raise WorkflowError(f"cannot migrate {type_id} from {version}: {exc}",
                                source, where) from None
        if not isinstance(inputs, dict):
            raise WorkflowError(f"migration of {type_id} from {version} returned "
                                f"{type(inputs).__name__}, not an inputs dict", source, where)
        version, steps = new_version, steps + 1
        file_v = parse_semver(version)
    current = parse_semver(spec.version)
    if file_v > current:
        raise WorkflowError(f"node type {type_id} version {version} is newer than this Loom's "
                            f"{spec.version}; update Loom", source, where)
    if file_v[0] != current[0]:
        raise WorkflowError(f"node type {type_id} version {version} cannot be read by version "
                            f"{spec.version} (no migration)", source, where)
    return spec.version, inputs


def _check_depth(value: Any, source: str | None, where: str) -> None:
    """Refuse containers nested deeper than MAX_UI_DEPTH (iteratively: no recursion here)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        cur, depth = stack.pop()
        if depth > MAX_UI_DEPTH:
            raise WorkflowError(f"nested more than {MAX_UI_DEPTH} levels deep", source, where)
        if isinstance(cur, dict):
            stack.extend((v, depth + 1) for v in cur.values())
        elif isinstance(cur, (list, tuple)):
            stack.extend((v, depth + 1) for v in cur)


def graph_from_document(doc: dict[str, Any], registry: Registry, source: str | None = None,
                        check: bool = True) -> Graph:
    """Build a graph from a parsed document: migrate, check structure, then validate."""
    if not isinstance(doc, dict):
        raise WorkflowError("a workflow must be a JSON object", source)
    if "schema_version" not in doc:
        from engine.comfy.read import comfy_format

        kind = comfy_format(doc)
        if kind is not None:
            raise WorkflowError(f"this is a ComfyUI workflow ({kind} format), not a Loom one: "
                                "open it in the editor, or convert it with `python main.py "
                                "import-comfy FILE -o WORKFLOW.json`", source)
    doc = migrate_document(doc, source)
    nodes = doc.get("nodes")
    if not isinstance(nodes, dict):
        raise WorkflowError("'nodes' must be an object keyed by node id", source, "nodes")
    graph = Graph(registry)
    ui = doc.get("ui", {})
    if not isinstance(ui, dict):
        raise WorkflowError("'ui' must be an object", source, "ui")
    _check_depth(ui, source, "ui")
    graph.ui = ui
    packages = _read_node_packages(doc, source)
    if packages:
        graph.ui[NODE_PACKAGES_UI] = packages
    pending_links: list[tuple[str, str, str, str, str]] = []
    for nid, n in nodes.items():
        where = f"nodes.{nid}"
        if not isinstance(n, dict):
            raise WorkflowError("a node must be an object", source, where)
        type_id = n.get("type")
        if not isinstance(type_id, str) or not type_id:
            raise WorkflowError("node needs a string 'type'", source, f"{where}.type")
        inputs = n.get("inputs", {})
        if not isinstance(inputs, dict):
            raise WorkflowError("'inputs' must be an object keyed by input name", source,
                                f"{where}.inputs")
        node_ui = n.get("ui", {})
        if not isinstance(node_ui, dict):
            raise WorkflowError("'ui' must be an object", source, f"{where}.ui")
        _check_depth(node_ui, source, f"{where}.ui")
        spec = registry.get(type_id)
        version = n.get("version", spec.version if spec else "1.0.0")
        if not isinstance(version, str):
            raise WorkflowError("'version' must be a string like \"1.0.0\"", source,
                                f"{where}.version")
        version, inputs = _migrate_node(type_id, version, inputs, registry, source, where)
        values: dict[str, Any] = {}
        for name, value in inputs.items():
            iwhere = f"{where}.inputs.{name}"
            if isinstance(value, dict):
                src, out = value.get("node"), value.get("output")
                if set(value) != {"node", "output"} or not isinstance(src, str) \
                        or not isinstance(out, str):
                    raise WorkflowError('a link must be {"node": id, "output": name}',
                                        source, iwhere)
                pending_links.append((src, out, nid, name, iwhere))
            elif _is_constant(value):
                values[name] = value
            else:
                raise WorkflowError(f"unsupported value of type {type(value).__name__}",
                                    source, iwhere)
        try:
            graph.add_node(type_id, nid, values=values, ui=node_ui, version=version)
            # add_node fills defaults; keep exactly what the file said for the known inputs
        except GraphError as exc:
            raise WorkflowError(str(exc), source, where) from None
    for src, out, dst, inp, _iwhere in pending_links:
        # unchecked, so that validation can report every problem (dangling, type mismatch)
        graph.connect(src, out, dst, inp, check=False)
    if check:
        validate(graph, registry)
    return graph


NODE_PACKAGES = "node_packages"
"""The document section recording, per node type from a plugin, the package and version it came
from: {"example.invert": {"package": "loom-example-nodes", "version": "1.0.0", "kind": "plugin"}}.
Built-in types are not listed (they come with Loom; each node's own version records them)."""
NODE_PACKAGES_UI = "_node_packages"
"""Where a loaded graph keeps that section (runtime only: rewritten from the registry on save,
recorded entries kept for the types this Loom does not know)."""


def _read_node_packages(doc: dict[str, Any], source: str | None) -> dict[str, dict[str, Any]]:
    packages = doc.get(NODE_PACKAGES)
    if packages is None:
        return {}
    if not isinstance(packages, dict):
        raise WorkflowError("'node_packages' must be an object keyed by node type", source,
                            NODE_PACKAGES)
    out: dict[str, dict[str, Any]] = {}
    for type_id, entry in packages.items():
        where = f"{NODE_PACKAGES}.{type_id}"
        if not isinstance(entry, dict) or not isinstance(entry.get("package"), str) \
                or not all(isinstance(entry.get(k), (str, type(None))) for k in ("version",
                                                                                  "kind")):
            raise WorkflowError('must be {"package": name, "version": text, "kind": text}',
                                source, where)
        out[type_id] = {k: entry.get(k) for k in ("package", "version", "kind")
                        if entry.get(k) is not None}
    return out


def node_packages(graph: Graph) -> dict[str, dict[str, Any]]:
    """The node_packages section for `graph`: each node type from a plugin or the user's
    folder with its package and version, from the registry; for types the registry does not
    know, what the file they were read from recorded."""
    recorded = graph.ui.get(NODE_PACKAGES_UI)
    recorded = recorded if isinstance(recorded, dict) else {}
    registry = graph.registry
    out: dict[str, dict[str, Any]] = {}
    for type_id in sorted({n.type for n in graph.nodes.values()}):
        known = registry is not None and registry.get(type_id) is not None
        info = registry.package_of(type_id) if known and hasattr(registry, "package_of") \
            else None
        if info is not None and info.kind in ("plugin", "user"):
            entry = {"package": info.name, "version": info.version, "kind": info.kind}
            out[type_id] = {k: v for k, v in entry.items() if v is not None}
        elif not known and isinstance(recorded.get(type_id), dict):
            out[type_id] = dict(recorded[type_id])
    return out


def read_fragment(text: str, registry: Registry, source: str | None = None) -> Graph:
    """A piece of a workflow, such as the editor's clipboard, read as a file is read (schema
    and node-version migrations, structural checks) but not validated: a fragment may leave
    required inputs unconnected. Links from nodes outside the fragment are dropped (the input
    keeps its default); links among its own nodes are kept as they are, as for an opened file
    (validation lists any that do not fit). Nodes of unknown types are kept as placeholders;
    `unknown_types` names them. Raises WorkflowError on anything it cannot read."""
    graph = graph_from_document(parse_document(text, source), registry, source, check=False)
    for (dst, inp), link in list(graph.links.items()):
        if link.node not in graph.nodes:
            graph.disconnect(dst, inp)
    return graph


def unknown_types(graph: Graph, registry: Registry) -> list[str]:
    """The node types in `graph` that `registry` does not know, sorted, each once."""
    return sorted({n.type for n in graph.nodes.values() if registry.get(n.type) is None})


RELINKED_UI = "_relinked"
"""Where a loaded graph lists the library paths `load_workflow` rewrote (engine.library.relink:
Problems naming node and input; runtime only, not saved)."""


def load_workflow(path: str | os.PathLike, registry: Registry, check: bool = True) -> Graph:
    """Load, migrate and (by default) validate a workflow file (.json, or .png with one).
    Model paths that are not on this machine are looked up in the model library by name and
    content (engine.library.relink); what was rewritten is listed in ui["_relinked"]."""
    graph = graph_from_document(read_document(path), registry, str(path), check)
    relinked_files(graph, str(Path(path).resolve().parent))
    return graph


def relinked_files(graph: Graph, base_dir: str | None) -> list[Any]:
    """Relink the graph's missing library files (engine.library.relink) and keep the notes in
    ui["_relinked"]; returns them."""
    from engine.library import relink

    notes = relink(graph, {"base_dir": base_dir} if base_dir else {})
    if notes:
        graph.ui[RELINKED_UI] = notes
    return notes


# writing ----------------------------------------------------------------------------------------


def graph_to_document(graph: Graph) -> dict[str, Any]:
    """The document of a graph. Graph-level ui keys starting with "_" (such as "_source", the
    file a session loaded the graph from) are runtime-only and not written."""
    nodes: dict[str, Any] = {}
    ins = graph.inputs_by_node()
    for nid, n in graph.nodes.items():
        inputs: dict[str, Any] = dict(n.values)
        for inp, link in ins.get(nid, {}).items():
            inputs[inp] = {"node": link.node, "output": link.output}
        entry: dict[str, Any] = {"type": n.type}
        if n.version:
            entry["version"] = n.version
        entry["inputs"] = inputs
        node_ui = saved_ui(graph, nid)  # with records of its model files (engine.library)
        if node_ui:
            entry["ui"] = node_ui
        nodes[nid] = entry
    ui = {k: v for k, v in graph.ui.items() if not (isinstance(k, str) and k.startswith("_"))}
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "nodes": nodes}
    packages = node_packages(graph)
    if packages:
        doc[NODE_PACKAGES] = packages
    doc["ui"] = ui
    return doc


def dumps(graph: Graph) -> str:
    return json.dumps(graph_to_document(graph), indent=2, ensure_ascii=False) + "\n"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temp file beside the target, fsync, then replace: never half a file (see
    engine/files.py). A symlink is followed: its target is replaced and the link kept."""
    write_text_atomic(path, text)


def save_workflow(graph: Graph, path: str | os.PathLike) -> None:
    atomic_write_text(path, dumps(graph))
