"""The node API: declared metadata, bad declarations, and socket type compatibility."""

from __future__ import annotations

import math

import pytest

from engine.graph import Graph, GraphError
from engine.node import REQUIRED, Input, Output, RunContext, node, parse_semver, spec_of
from engine.types import ANY, BOOLEAN, FLOAT, INT, STRING, TypeRegistry
from engine.validate import problems
from tests.support import pynodes
from tests.support.engine_helpers import registry_fixture  # noqa: F401


def test_metadata_of_a_declared_node(registry) -> None:
    spec = registry.get("test.everything")
    assert spec is spec_of(pynodes.Everything)
    assert (spec.type_id, spec.title, spec.category, spec.version) == (
        "test.everything", "Test Everything", "test/meta", "1.2.3")
    assert spec.description == "Every kind of input declaration.\n\nA second line of description."
    assert list(spec.inputs) == ["count", "scale", "mode", "text", "flag", "extra", "source",
                                 "hinted"]
    count, scale, mode, text = (spec.inputs[k] for k in ("count", "scale", "mode", "text"))
    assert (count.type, count.default, count.min, count.max, count.step, count.description) == (
        INT, 3, 1, 10, 1, "how many")
    assert (scale.type, scale.default, scale.min, scale.max, scale.widget) == (
        FLOAT, 0.5, 0.0, 1.0, "slider")
    assert mode.choices == ("fast", "slow") and mode.default == "fast"
    assert text.multiline is True and spec.inputs["count"].multiline is False
    assert spec.inputs["flag"].label == "Flag it" and spec.inputs["flag"].type == BOOLEAN
    extra, source, hinted = spec.inputs["extra"], spec.inputs["source"], spec.inputs["hinted"]
    # an optional non-primitive input is not required; a required one must be connected
    assert (extra.optional, extra.required, extra.connection_only) == (True, False, False)
    assert (source.default, source.required, source.connection_only) == (REQUIRED, True, True)
    assert (hinted.connection_only, hinted.required, hinted.default) == (True, False, 7)
    assert [(o.name, o.type, o.description) for o in spec.outputs] == [
        ("out", "TEST_LEAF", "a leaf"), ("n", INT, "")]
    assert spec.output("n").type == INT and spec.output("nope") is None
    assert spec.output_node is False and spec.deterministic is True
    assert registry.get("test.random").deterministic is False
    assert registry.get("test.show").output_node is True


def test_metadata_as_json_for_the_editor_and_cli(registry) -> None:
    d = registry.get("test.everything").to_json()
    assert d["type"] == "test.everything" and d["version"] == "1.2.3"
    inputs = {i["name"]: i for i in d["inputs"]}
    assert inputs["count"] == {"name": "count", "type": "INT", "default": 3, "min": 1,
                               "max": 10, "step": 1, "description": "how many"}
    assert inputs["mode"]["choices"] == ["fast", "slow"]
    assert inputs["text"]["multiline"] is True
    assert inputs["extra"] == {"name": "extra", "type": "TEST_BASE", "optional": True}
    assert inputs["source"] == {"name": "source", "type": "TEST_BASE", "connection_only": True}
    assert "default" not in inputs["source"]
    assert d["outputs"] == [{"name": "out", "type": "TEST_LEAF", "description": "a leaf"},
                            {"name": "n", "type": "INT"}]
    assert registry.get("test.read_file").to_json()["inputs"][0]["path"] is True


def test_catalogue_is_sorted_by_category_then_title(registry) -> None:
    cat = registry.catalogue()
    keys = [(c["category"], c["title"]) for c in cat]
    assert keys == sorted(keys)
    assert len(cat) == len(registry)


@pytest.mark.parametrize("type_id", ["nodot", "Upper.case", "a.", ".a", "a..b", "1a.b", "a.b\n",
                                     "a-b.c", "", "a.b c"])
def test_bad_type_id_is_refused(type_id) -> None:
    with pytest.raises(ValueError, match="family.name"):
        node(type_id, title="x", category="x", version="1.0.0")


@pytest.mark.parametrize("version", ["1", "1.0", "1.0.0.0", "v1.0.0", "1.0.0-beta", "1.0.0\n",
                                     "", "a.b.c", "1.0.x", "\u0661.0.0"])
def test_bad_semver_is_refused(version) -> None:
    with pytest.raises(ValueError, match="semantic version"):
        node("test.bad_version", title="x", category="x", version=version)


def test_semver_parses_to_comparable_tuples() -> None:
    assert parse_semver("1.10.0") > parse_semver("1.9.9")
    assert parse_semver("0.0.1") == (0, 0, 1)


def test_duplicate_outputs_and_missing_run_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate output"):
        @node("test.dup", title="x", category="x", version="1.0.0",
              outputs=[Output("a", INT), Output("a", FLOAT)])
        class Dup:
            def run(self, ctx):
                return 1, 2

    with pytest.raises(TypeError, match="run"):
        @node("test.norun", title="x", category="x", version="1.0.0")
        class NoRun:
            pass

    with pytest.raises(TypeError, match="not a node class"):
        spec_of(int)


def test_the_same_type_id_from_two_classes_is_refused(registry) -> None:
    @node("test.const", title="Other", category="x", version="1.0.0")
    class OtherConst:
        def run(self, ctx):
            return None

    with pytest.raises(ValueError, match="declared twice"):
        registry.register(OtherConst)


def test_result_normalisation() -> None:
    spec = spec_of(pynodes.Pair)
    assert spec.normalise_result((1, 2)) == {"low": 1, "high": 2}
    assert spec.normalise_result({"high": 2, "low": 1}) == {"low": 1, "high": 2}
    with pytest.raises(TypeError, match="must return"):
        spec.normalise_result((1, 2, 3))
    assert spec_of(pynodes.Const).normalise_result(5) == {"value": 5}
    assert spec_of(pynodes.Show).normalise_result(None) == {}


@pytest.mark.parametrize(("inp", "value", "code"), [
    (Input(INT, default=0), 3, None),
    (Input(INT, default=0), True, "value_error"),
    (Input(INT, default=0), 3.0, "value_error"),
    (Input(INT, default=0, min=0, max=5), 6, "out_of_range"),
    (Input(INT, default=0, min=0, max=5), -1, "out_of_range"),
    (Input(INT, default=0), "minimum", "value_error"),  # not misread as a range problem
    (Input(FLOAT, default=0.0), 3, None),
    (Input(FLOAT, default=0.0), 10**400, None),  # ints are finite (no OverflowError)
    (Input(FLOAT, default=0.0, max=1.0), 10**400, "out_of_range"),
    (Input(FLOAT, default=0.0), math.nan, "value_error"),
    (Input(FLOAT, default=0.0), math.inf, "value_error"),
    (Input(FLOAT, default=0.0), "1.0", "value_error"),
    (Input(STRING, default="", choices=("a", "b")), "c", "not_in_choices"),
    (Input(STRING, default="", choices=("a", "b")), "b", None),
    (Input(STRING, default=""), 1, "value_error"),
    (Input(BOOLEAN, default=False), 1, "value_error"),
    (Input(BOOLEAN, default=False), None, "value_error"),
    (Input(BOOLEAN, default=False, optional=True), None, None),
    (Input("TEST_BASE", optional=True), "x", "value_error"),
])
def test_input_value_checks(inp, value, code) -> None:
    problem = inp.problem(value)
    assert (problem[0] if problem else None) == code
    assert (inp.check(value) is None) == (code is None)


@pytest.mark.parametrize(("type_", "text", "value"), [
    (INT, " 42 ", 42), (INT, "-7", -7), (INT, "0x10", 16), (INT, "007", 7), (INT, "1_000", 1000),
    (FLOAT, "2.5", 2.5), (FLOAT, "3", 3.0), (BOOLEAN, "yes", True), (BOOLEAN, "0", False),
    (BOOLEAN, "TRUE", True), (STRING, " keep spaces ", " keep spaces "),
])
def test_parse_by_declared_type(type_, text, value) -> None:
    parsed = Input(type_).parse(text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(("type_", "text"), [(INT, "1.5"), (INT, "abc"), (FLOAT, "x"),
                                             (BOOLEAN, "maybe"), ("IMAGE", "x")])
def test_parse_refuses_bad_text(type_, text) -> None:
    with pytest.raises(ValueError):
        Input(type_).parse(text)


# socket types -------------------------------------------------------------------------------

def test_type_compatibility_rules() -> None:
    t = TypeRegistry()
    for name in (ANY, INT, FLOAT, STRING):
        t.register(name)
    t.register("BASE")
    t.register("MID", parents=("BASE",))
    t.register("LEAF", parents=("MID",))
    t.register("OTHER")
    assert t.compatible("BASE", "BASE")
    assert t.compatible("BASE", ANY) and t.compatible(ANY, "LEAF")
    assert t.compatible(INT, FLOAT)
    assert not t.compatible(FLOAT, INT)
    assert t.compatible("MID", "BASE") and t.compatible("LEAF", "BASE")  # transitive
    assert not t.compatible("BASE", "LEAF") and not t.compatible("MID", "LEAF")
    assert not t.compatible("OTHER", "BASE") and not t.compatible(STRING, INT)
    assert t.ancestors("LEAF") == {"MID", "BASE"}
    with pytest.raises(ValueError, match="registered differently"):
        t.register("LEAF", parents=("OTHER",))


@pytest.mark.parametrize(("src", "dst", "ok"), [
    ("test.const", "test.take_int", True),      # INT -> INT
    ("test.const", "test.addf", True),          # INT -> FLOAT
    ("test.constf", "test.add", False),         # FLOAT -> INT
    ("test.make_leaf", "test.take_base", True),  # LEAF -> BASE (through MID)
    ("test.make_base", "test.take_leaf", False),  # BASE -> LEAF
    ("test.make_other", "test.take_base", False),
    ("test.constf", "test.show", True),         # anything -> ANY
])
def test_compatibility_in_connect_and_in_validation(registry, src, dst, ok) -> None:
    spec_d = registry.get(dst)
    inp = next(iter(spec_d.inputs))
    out = registry.get(src).outputs[0].name
    g = Graph(registry)
    g.add_node(src, "s")
    g.add_node(dst, "d")
    if ok:
        g.connect("s", out, "d", inp)
        assert problems(g, registry) == []
        return
    with pytest.raises(GraphError, match=f"input '{inp}' takes"):
        g.connect("s", out, "d", inp)
    assert g.links == {}
    g.connect("s", out, "d", inp, check=False)
    found = problems(g, registry)
    assert [(p.code, p.node_id, p.node_type, p.input) for p in found] == [
        ("type_mismatch", "d", dst, inp)]


def test_run_context() -> None:
    seen = []
    flag = {"stop": False}
    ctx = RunContext("n1", "test.slow", {"device": "cpu"}, lambda s, t, p: seen.append((s, t, p)),
                     lambda: flag["stop"])
    assert ctx.device == "cpu"
    ctx.progress(2, 5)
    ctx.check_cancelled()
    flag["stop"] = True
    assert ctx.cancelled
    from engine.errors import Cancelled
    with pytest.raises(Cancelled):
        ctx.check_cancelled()
    ctx.set_ui(files=["a"])
    ctx.set_ui(text="t")
    assert seen == [(2, 5, None)] and ctx.ui == {"files": ["a"], "text": "t"}
