"""Fuzzing the workflow loader: however a document or file is damaged, loading raises only
Loom's own errors (LoomError subclasses), and whatever loads can be saved and loaded again.

More examples: LOOM_FUZZ_EXAMPLES=20000 python -m pytest tests/test_workflow_fuzz.py
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import LoomError
from engine.graph import Graph
from engine.workflow import dumps, graph_from_document, load_workflow, parse_document
from tests.support import png, pynodes

EXAMPLES = int(os.environ.get("LOOM_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

REGISTRY = pynodes.make_registry()

VALID_DOCS: list[dict[str, Any]] = [
    {"schema_version": 1,
     "nodes": {
         "c": {"type": "test.const", "version": "1.0.0", "inputs": {"value": 3},
               "ui": {"pos": [0, 10]}},
         "f": {"type": "test.constf", "inputs": {"value": 0.25}},
         "s": {"type": "test.addf", "version": "1.0.0",
               "inputs": {"a": {"node": "c", "output": "value"},
                          "b": {"node": "f", "output": "value"}}},
         "e": {"type": "test.everything", "version": "1.2.3",
               "inputs": {"count": 2, "scale": 1.0, "mode": "slow", "text": "hi\nthere",
                          "flag": True, "source": {"node": "b", "output": "out"},
                          "hinted": {"node": "c", "output": "value"}},
               "ui": {"collapsed": False, "size": [200, 120]}},
         "b": {"type": "test.make_leaf"},
         "v": {"type": "test.versioned", "version": "1.0.0", "inputs": {"amount": 4}},
         "out": {"type": "test.show", "inputs": {"value": {"node": "s", "output": "sum"}}},
         "t": {"type": "primitive.string", "inputs": {"value": "a prompt"}},
     },
     "ui": {"viewport": {"zoom": 1.0, "center": [0, 0]}, "groups": []}},
    {"schema_version": 0,
     "nodes": [{"id": "c", "type": "test.const", "inputs": {"value": 4}, "pos": [1, 2]},
               {"id": "s", "type": "test.add", "version": "1.0.0", "inputs": {"b": 3}},
               {"id": "v", "type": "test.versioned", "version": "1.0.0",
                "inputs": {"amount": 1}},
               {"id": "out", "type": "test.show"}],
     "links": [["c", "value", "s", "a"], ["s", "sum", "out", "value"]],
     "ui": {"zoom": 2}},
]


def test_the_seed_documents_are_valid() -> None:
    for doc in VALID_DOCS:
        g = graph_from_document(copy.deepcopy(doc), REGISTRY)
        assert len(g.nodes) == len(doc["nodes"])


# strategies -----------------------------------------------------------------------------------

_numbers = st.one_of(
    st.integers(), st.integers(min_value=-(10**300), max_value=10**300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2**63, -(2**63) - 1, 10**400, 1e308, -0.0, math.nan, math.inf,
                     -math.inf]))
_strings = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "value", "node", "output", "type", "inputs", "ui", "nodes", "version",
                     "schema_version", "1.0.0", "2.1.0", "9.9.9", "test.const", "test.show",
                     "test.versioned", "test.nope", "c", "s", "out", "\x00", "\ud800", "a b",
                     "x" * 5000]))
_huge = st.sampled_from([10**400, -(10**400), 10**4000, 2**1024, 1e308 * 10, -1e308 * 10])
_leaves = st.one_of(st.none(), st.booleans(), _numbers, _strings, _huge)
_json = st.recursive(
    _leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(_strings, inner, max_size=4),
                            st.fixed_dictionaries({"node": _strings, "output": _strings})),
    max_leaves=12)


def _containers(value: Any, max_depth: int = 12) -> list[tuple]:
    """Paths of the dicts and lists in a document (the root included), down to max_depth."""
    out = []
    stack: list[tuple[Any, tuple]] = [(value, ())]
    while stack:
        cur, path = stack.pop()
        if len(path) > max_depth:
            continue
        if isinstance(cur, dict):
            out.append(path)
            stack.extend((v, path + (k,)) for k, v in cur.items())
        elif isinstance(cur, list):
            out.append(path)
            stack.extend((v, path + (i,)) for i, v in enumerate(cur))
    return out


def _at(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def _nest(depth: int, leaf: Any, as_dict: bool) -> Any:
    for _ in range(depth):
        leaf = {"k": leaf} if as_dict else [leaf]
    return leaf


OPS = ("delete", "replace", "insert", "retype", "rename", "deep", "wrap", "swap_kind",
       "value", "value", "value", "deep_ui")


def _input_dicts(doc: Any) -> list[dict]:
    """The inputs dicts of the nodes (schema 0 and 1), where values matter most."""
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    found = nodes.values() if isinstance(nodes, dict) else nodes if isinstance(nodes, list) else []
    return [n["inputs"] for n in found if isinstance(n, dict) and isinstance(n.get("inputs"), dict)]


def _ui_dicts(doc: Any) -> list[dict]:
    out = [doc["ui"]] if isinstance(doc, dict) and isinstance(doc.get("ui"), dict) else []
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    if isinstance(nodes, dict):
        out += [n["ui"] for n in nodes.values() if isinstance(n, dict)
                and isinstance(n.get("ui"), dict)]
    return out


@st.composite
def mutated_documents(draw) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(VALID_DOCS)))
    for _ in range(draw(st.integers(1, 4))):
        paths = _containers(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        target = _at(doc, path)
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        op = draw(st.sampled_from(OPS))
        if op == "value" and _input_dicts(doc):
            # a node input set to an odd constant (huge numbers, NaN, wrong types, links)
            inputs = draw(st.sampled_from(_input_dicts(doc)))
            name = draw(st.sampled_from(sorted(inputs) + ["value", "a", "b", "count", "amount"]))
            inputs[name] = draw(st.one_of(_leaves, _json))
            continue
        if op == "deep_ui" and _ui_dicts(doc):
            depth = draw(st.sampled_from([99, 100, 101, 150, 400, 900, 3000]))
            target = draw(st.sampled_from(_ui_dicts(doc)))
            target[draw(_strings)] = _nest(depth, draw(_leaves), draw(st.booleans()))
            continue
        if op in ("value", "deep_ui"):
            op = "replace"
        if not keys and op not in ("insert", "deep"):
            op = "insert"
        key = draw(st.sampled_from(keys)) if keys else None
        if op == "delete":
            del target[key]
        elif op == "replace":
            target[key] = draw(_json)
        elif op == "insert":
            if isinstance(target, dict):
                target[draw(_strings)] = draw(_json)
            else:
                target.insert(draw(st.integers(0, len(target))), draw(_json))
        elif op == "retype":
            v = target[key]
            short = str(v)[:50] if not isinstance(v, (dict, list)) else type(v).__name__
            target[key] = draw(st.sampled_from([short, [v], {"x": v}, None, 1, True]))
        elif op == "rename" and isinstance(target, dict):
            target[draw(_strings)] = target.pop(key)
        elif op == "deep":
            depth = draw(st.sampled_from([50, 99, 100, 101, 150, 400, 900, 3000]))
            nested = _nest(depth, draw(_leaves), draw(st.booleans()))
            if isinstance(target, dict):
                target[key if key is not None else "deep"] = nested
            else:
                target.append(nested)
        elif op == "wrap":
            target[key] = {"node": target[key], "output": "value"}
        elif op == "swap_kind":
            v = target[key]
            if isinstance(v, dict):
                target[key] = list(v.values())
            elif isinstance(v, list):
                target[key] = {str(i): x for i, x in enumerate(v)}
    if draw(st.integers(0, 20)) == 0:  # sometimes the root itself
        doc = draw(st.sampled_from([[], [doc], None, 1, "doc", {"doc": doc}]))
    return doc


def _text_of(doc: Any) -> str:
    try:
        return json.dumps(doc, ensure_ascii=False)
    except (ValueError, RecursionError):  # too deep or a huge int: fall back to a shallow doc
        return json.dumps(VALID_DOCS[0])


@st.composite
def damaged_texts(draw) -> str:
    text = _text_of(draw(st.one_of(st.sampled_from(VALID_DOCS), mutated_documents())))
    for _ in range(draw(st.integers(0, 3))):
        if not text:
            break
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(("truncate", "cut", "insert", "replace", "duplicate")))
        if op == "truncate":
            text = text[:i]
        elif op == "cut":
            text = text[:i] + text[i + draw(st.integers(1, 20)):]
        elif op == "insert":
            text = text[:i] + draw(st.sampled_from(
                ["{", "}", "[", "]", ",", ":", '"', "\\", "NaN", "-Infinity", "1e999", "\\ud800",
                 "9" * 5000, "[" * 5000, "\x00", "\ufeff", "null", "true"])) + text[i:]
        elif op == "replace":
            text = text[:i] + draw(st.characters()) + text[i + 1:]
        else:
            j = min(len(text), i + draw(st.integers(1, 40)))
            text = text[:j] + text[i:j] + text[j:]
    return text


# properties -------------------------------------------------------------------------------------

def _load_or_loom_error(load) -> Graph | None:
    """Call `load`; only a LoomError may escape it. Return the graph, or None if refused."""
    try:
        return load()
    except LoomError:
        return None
    # anything else propagates and fails the test


def _check_loaded(g: Graph | None) -> None:
    """Whatever loads can be copied (for a run), saved and loaded again to the same text."""
    if g is None:
        return
    g.copy()
    text = dumps(g)
    again = graph_from_document(parse_document(text), REGISTRY, check=False)
    assert dumps(again) == text


@FUZZ
@given(doc=mutated_documents(), check=st.booleans())
def test_mutated_documents_raise_only_loom_errors(doc, check) -> None:
    _check_loaded(_load_or_loom_error(
        lambda: graph_from_document(doc, REGISTRY, "fuzz.json", check=check)))


@FUZZ
@given(text=damaged_texts())
def test_damaged_json_text_raises_only_loom_errors(text) -> None:
    _check_loaded(_load_or_loom_error(
        lambda: graph_from_document(parse_document(text, "fuzz.json"), REGISTRY, "fuzz.json")))


@FUZZ
@given(text=damaged_texts(), wrapper=st.sampled_from(["raw", "bom", "latin1", "png_text",
                                                       "png_itxt", "png_ztxt", "png_cut"]))
def test_damaged_files_raise_only_loom_errors(text, wrapper) -> None:
    if wrapper == "raw":
        data = text.encode("utf-8", "surrogatepass")
    elif wrapper == "bom":
        data = b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass")
    elif wrapper == "latin1":
        data = text.encode("latin-1", "replace")
    elif wrapper == "png_text":
        data = png.png_bytes([png.text("workflow", text.encode("latin-1", "replace")
                                       .decode("latin-1"))])
    elif wrapper == "png_itxt":
        data = png.png_bytes([png.itext("workflow", text.encode("utf-8", "replace")
                                        .decode("utf-8"))])
    elif wrapper == "png_ztxt":
        data = png.png_bytes([png.ztext("workflow", text.encode("latin-1", "replace")
                                        .decode("latin-1"))])
    else:
        data = png.png_bytes([png.text("workflow", "{}")])
        data = data[:len(text) % len(data)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.json"
        path.write_bytes(data)
        _check_loaded(_load_or_loom_error(lambda: load_workflow(path, REGISTRY)))


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes_in_a_png_raise_only_loom_errors(data) -> None:
    blob = png.png_bytes([png.text("workflow", "{}")])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.png"
        path.write_bytes(blob[:8] + data)
        _load_or_loom_error(lambda: load_workflow(path, REGISTRY))


# the whole command-line path: load, overrides, validation, pre-run checks, cache keys -----------

def test_mutated_real_workflows_through_main_py_run_never_reach_a_traceback() -> None:
    """tools/reliability/fuzz_workflows.py on a few hundred items (10,000 and more by hand):
    Loom's own workflows with hostile values, paths, output folders and crafted PNGs, through
    `main.py run` in-process up to the point where nodes would run. Every item either is valid
    or exits 2 naming the problem; none raises, hangs, or needs main's last-resort handler."""
    from tools.reliability.fuzz_workflows import fuzz, table

    count = max(EXAMPLES, 150)
    tallies = fuzz(count=count, pngs=count // 5, seed=EXAMPLES, limit=10.0, big_files=500)
    report = table(tallies)
    for t in tallies.values():
        for kind in ("traceback", "hang", "raw_os_error", "failed"):
            assert t.counts[kind] == 0, report + "\n" + "\n".join(t.examples.get(kind, []))
    assert sum(t.counts["refused"] for t in tallies.values()) > count // 2, report
