"""Node plugins (engine.plugins): the example plugin under examples/ installed with pip into a
folder of its own (what `pip install` puts in site-packages; the shared test environment is left
alone) and found through its `loom.nodes` entry point; the user's nodes folder; each node type's
package in `main.py nodes`, the editor's search and the workflow file; plugins that fail or
collide with a built-in type; --safe; opening a workflow never imports what it names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.errors import ValidationError
from engine.graph import Graph
from engine.plugins import load_registry
from engine.registry import NodeTypeConflict, Registry, loom_version
from engine.validate import problems, validate
from engine.workflow import graph_from_document, graph_to_document

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "loom-example-nodes"
EXAMPLE_TYPES = {"example.invert", "example.posterize", "example.prompt_template"}

pytest_plugins = ["tests.test_editor_support"]  # fixtures: make_window, isolated, ...


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example plugin, built from a copy of examples/loom-example-nodes and installed by
    pip (offline, no build isolation, no dependencies) into a fresh target folder."""
    import setuptools  # the example's build backend, used offline (requirements-dev.txt)

    assert tuple(int(x) for x in setuptools.__version__.split(".")[:2]) >= (70, 1)
    tmp = tmp_path_factory.mktemp("plugin")
    src = tmp / "loom-example-nodes"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("*.egg-info", "build"))
    target = tmp / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                           "--no-build-isolation", "--quiet", "--target", str(target), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return target


def fake_plugin(site: Path, dist: str, version: str, module: str, source: str,
                entry: str | None = None) -> None:
    """An installed distribution as pip leaves it: a module and a .dist-info with METADATA and
    entry_points.txt."""
    (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
                                   encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[loom.nodes]\n{entry or 'nodes = ' + module}\n",
                                           encoding="utf-8")


def registry_with(path: Path, monkeypatch, user_dir: Path | None = None, **kw) -> Registry:
    monkeypatch.syspath_prepend(str(path))
    return load_registry(entry_point_path=[str(path)], user_dir=user_dir or path / "no-user",
                         extra_modules=[], **kw)


def loom(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONIOENCODING="utf-8", LOOM_USER_NODES=str(ROOT / "no-such-dir"))
    full.pop("LOOM_EXTRA_NODES", None)
    full.update(env)
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=120)


# the example plugin ---------------------------------------------------------------------------


def test_the_installed_example_plugin_is_found_through_its_entry_point(site) -> None:
    info = next(site.glob("loom_example_nodes-1.0.0.dist-info"))
    assert "[loom.nodes]\nexample = loom_example_nodes.nodes" in \
        (info / "entry_points.txt").read_text()
    proc = loom("nodes", PYTHONPATH=str(site))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    head = lines.index("# loom-example-nodes 1.0.0 (plugin, entry point example = "
                       "loom_example_nodes.nodes)")
    assert lines[0] == f"# loom {loom_version()} (built in)"
    listed = {line.split()[0] for line in lines[head + 1:] if line and not line[0].isspace()
              and not line.startswith("#")}
    assert listed == EXAMPLE_TYPES
    proc = loom("nodes", "--json", PYTHONPATH=str(site))
    catalogue = {n["type"]: n for n in json.loads(proc.stdout)}
    assert catalogue["example.invert"]["package"] == {"name": "loom-example-nodes",
                                                       "version": "1.0.0", "kind": "plugin"}
    assert catalogue["sampling.sampler"]["package"] == {"name": "loom",
                                                         "version": loom_version(),
                                                         "kind": "builtin"}


def test_the_example_plugin_nodes_run(site, tmp_path) -> None:
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"schema_version": 1, "nodes": {
        "t": {"type": "example.prompt_template",
              "inputs": {"subject": "a red fox", "template": "{subject}, watercolour"}},
        "s": {"type": "text.save", "inputs": {"value": {"node": "t", "output": "text"},
                                             "prefix": "prompt"}}}}))
    proc = loom("run", str(wf), "--out", str(tmp_path / "out"), PYTHONPATH=str(site))
    assert proc.returncode == 0, proc.stderr
    [written] = proc.stdout.split()
    assert Path(written).read_text(encoding="utf-8").strip() == "a red fox, watercolour"
    # the same workflow without the plugin: refused before anything runs, naming the type
    proc = loom("run", str(wf), "--out", str(tmp_path / "out2"))
    assert proc.returncode == 2
    assert "unknown node type 'example.prompt_template'" in proc.stderr


def test_image_nodes_of_the_example_plugin(site, monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    reg = registry_with(site, monkeypatch)
    image = torch.rand(1, 3, 4, 4)
    inv = reg.get("example.invert").cls()
    inv.image = image
    out = inv.run(None)
    assert torch.equal(out, 1.0 - image)
    post = reg.get("example.posterize").cls()
    post.image, post.levels = image, 2
    assert set(post.run(None).unique().tolist()) <= {0.0, 1.0}


def test_the_workflow_file_records_each_plugin_types_package(site, monkeypatch) -> None:
    reg = registry_with(site, monkeypatch)
    assert reg.package_of("example.invert").label() == "loom-example-nodes 1.0.0"
    g = Graph(reg)
    g.add_node("example.prompt_template", "t")
    g.add_node("primitive.string", "s")
    doc = graph_to_document(g)
    # built-in types are not listed: they come with Loom
    assert doc["node_packages"] == {"example.prompt_template": {
        "package": "loom-example-nodes", "version": "1.0.0", "kind": "plugin"}}
    assert list(doc) == ["schema_version", "nodes", "node_packages", "ui"]
    # opened where the plugin is missing: the node is kept, named missing with its package...
    builtin = load_registry(safe=False, entry_point_path=[], user_dir=site / "none",
                            extra_modules=[])
    g2 = graph_from_document(json.loads(json.dumps(doc)), builtin, check=False)
    [p] = problems(g2, builtin)
    assert (p.code, p.node_id) == ("unknown_node_type", "t")
    assert "from package loom-example-nodes 1.0.0, which is not installed" in p.message
    assert "Loom never installs packages itself" in p.message
    assert 'pip install "loom-example-nodes==1.0.0"' in p.message
    # ... and saved again, the record stays (the type is still not known here)
    assert graph_to_document(g2)["node_packages"] == doc["node_packages"]
    # a workflow without the plugin's nodes records nothing
    assert "node_packages" not in graph_to_document(Graph(reg))


def test_opening_a_workflow_never_imports_the_packages_it_names(tmp_path, monkeypatch) -> None:
    """A workflow can only *name* a package: nothing it says is imported, installed or run,
    even when the package is on sys.path."""
    marker = tmp_path / "imported.txt"
    fake_plugin(tmp_path, "loom-trap", "1.0.0", "loom_trap_module", f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("imported")
        """)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = load_registry(entry_point_path=[], user_dir=tmp_path / "none", extra_modules=[])
    doc = {"schema_version": 1,
           "nodes": {"x": {"type": "trap.node", "inputs": {"module": "loom_trap_module"}}},
           "node_packages": {"trap.node": {"package": "loom-trap", "version": "1.0.0"},
                             "loom_trap_module": {"package": "loom_trap_module"}}}
    g = graph_from_document(doc, reg, check=False)
    with pytest.raises(ValidationError, match="loom-trap 1.0.0, which is not installed"):
        validate(g, reg)
    assert not marker.exists() and "loom_trap_module" not in sys.modules


def test_a_malformed_package_record_is_refused() -> None:
    reg = Registry()
    for bad in ([1], {"t.x": "pkg"}, {"t.x": {"version": "1"}}, {"t.x": {"package": 3}}):
        with pytest.raises(Exception, match="node_packages"):
            graph_from_document({"schema_version": 1, "nodes": {}, "node_packages": bad}, reg)


# failures ---------------------------------------------------------------------------------------


BROKEN = """
    from engine.node import Input, Output, node
    from engine.types import INT

    @node("broken.early", title="Early", category="broken", version="1.0.0",
          outputs=[Output("value", INT)])
    class Early:
        def run(self, ctx):
            return 1

    import cv3_does_not_exist  # noqa: E402,F401
    """


def test_a_plugin_that_fails_to_import_is_listed_and_loom_runs_without_it(
        site, tmp_path, monkeypatch) -> None:
    broken = tmp_path / "broken-site"
    broken.mkdir()
    fake_plugin(broken, "loom-broken", "0.3.0", "loom_broken_nodes", BROKEN)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(broken))
    reg = load_registry(entry_point_path=[str(site), str(broken)], user_dir=tmp_path / "none",
                        extra_modules=[])
    [error] = reg.report.errors
    assert error.package.label() == "loom-broken 0.3.0"
    assert error.message == "ModuleNotFoundError: No module named 'cv3_does_not_exist'"
    assert "Traceback" in error.traceback and error.type_id is None
    assert "broken.early" not in reg  # nothing of a broken package stays
    assert EXAMPLE_TYPES <= {s.type_id for s in reg}
    assert "sampling.sampler" in reg
    # a workflow that uses its nodes names the package and why it is missing
    doc = {"schema_version": 1, "nodes": {"b": {"type": "broken.early", "inputs": {}}},
           "node_packages": {"broken.early": {"package": "loom-broken", "version": "0.3.0",
                                              "kind": "plugin"}}}
    [p] = problems(graph_from_document(doc, reg, check=False), reg)
    assert p.message == ("unknown node type 'broken.early' (from package loom-broken 0.3.0, "
                         "which failed to load: ModuleNotFoundError: No module named "
                         "'cv3_does_not_exist')")
    # the command line lists it and goes on
    path = os.pathsep.join([str(site), str(broken)])
    proc = loom("nodes", PYTHONPATH=path)
    assert proc.returncode == 0, proc.stderr
    assert "# failed: loom-broken 0.3.0 (entry point nodes = loom_broken_nodes): " \
           "ModuleNotFoundError: No module named 'cv3_does_not_exist'" in proc.stdout
    assert "example.invert  (Invert Image, v1.0.0)" in proc.stdout
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"schema_version": 1, "nodes": {
        "t": {"type": "example.prompt_template", "inputs": {}},
        "s": {"type": "text.save", "inputs": {"value": {"node": "t", "output": "text"}}}}}))
    proc = loom("run", str(wf), "--out", str(tmp_path / "out"), PYTHONPATH=path)
    assert proc.returncode == 0, proc.stderr
    assert "warning: plugin loom-broken 0.3.0" in proc.stderr


EVIL = """
    from engine.node import Output, node

    @node("sampling.sampler", title="Better Sampler", category="sampling", version="9.0.0",
          outputs=[Output("latent", "LATENT")])
    class SamplerNode:
        def run(self, ctx):
            return None

    @node("evil.fine", title="Fine", category="evil", version="1.0.0")
    class Fine:
        def run(self, ctx):
            return None
    """


def test_a_plugin_cannot_replace_a_built_in_node_type(tmp_path, monkeypatch) -> None:
    fake_plugin(tmp_path, "loom-evil", "6.6.6", "loom_evil_nodes", EVIL)
    fake_plugin(tmp_path, "loom-zzz", "1.0.0", "loom_zzz_nodes", """
        from engine.node import node

        @node("evil.fine", title="Also fine", category="evil", version="1.0.0")
        class Fine:
            def run(self, ctx):
                return None
        """)
    reg = registry_with(tmp_path, monkeypatch)
    spec = reg.get("sampling.sampler")
    assert spec.cls.__module__ == "nodes.sampling" and spec.version != "9.0.0"
    assert reg.package_of("sampling.sampler").kind == "builtin"
    assert reg.package_of("evil.fine").label() == "loom-evil 6.6.6"  # its other type loads
    first, second = reg.report.errors
    assert first.type_id == "sampling.sampler"
    assert first.message == (
        "node type 'sampling.sampler' of loom-evil 6.6.6 (plugin, loom_evil_nodes.SamplerNode) "
        f"is already declared by loom {loom_version()} (built in, nodes.sampling.SamplerNode); "
        "the first one stays and loom-evil's is not loaded (a plugin cannot replace a node "
        "type of Loom or of another plugin)")
    assert second.type_id == "evil.fine" and "loom-zzz 1.0.0" in second.message \
        and "already declared by loom-evil 6.6.6" in second.message
    # the registry refuses it however it is asked
    with pytest.raises(NodeTypeConflict, match="already declared by loom"):
        reg.register(sys.modules["loom_evil_nodes"].SamplerNode, reg.package_of("evil.fine"))


def test_safe_mode_starts_with_the_built_in_nodes_only(site, tmp_path) -> None:
    proc = loom("--safe", "nodes", PYTHONPATH=str(site),
                LOOM_EXTRA_NODES="tests.support.pynodes")
    assert proc.returncode == 0, proc.stderr
    assert "example." not in proc.stdout and "test.const" not in proc.stdout
    assert "# safe mode (--safe): plugins, the user's nodes folder and LOOM_EXTRA_NODES were " \
           "not loaded" in proc.stdout
    proc = loom("nodes", "--safe", PYTHONPATH=str(site))  # after the command too
    assert proc.returncode == 0 and "example." not in proc.stdout
    reg = load_registry(safe=True, entry_point_path=[str(site)], user_dir=tmp_path)
    assert reg.report.safe and all(p.kind == "builtin" for p, _ in reg.report.packages)
    assert "safe mode (--safe), without plugins" in reg.why_missing(
        "example.invert", {"package": "loom-example-nodes", "version": "1.0.0"})


def test_the_users_nodes_folder(tmp_path, monkeypatch) -> None:
    user = tmp_path / "nodes"
    user.mkdir()
    (user / "mine.py").write_text(textwrap.dedent("""
        from engine.node import Output, node
        __version__ = "0.2.0"

        @node("mine.hello", title="Hello", category="mine", version="1.0.0",
              outputs=[Output("text", "STRING")])
        class Hello:
            def run(self, ctx):
                return "hello"
        """))
    (user / "broken.py").write_text("raise RuntimeError('half-written')\n")
    (user / "_private.py").write_text("raise RuntimeError('never imported')\n")
    (user / "notes.txt").write_text("not a module\n")
    pkg = user / "packed"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "more.py").write_text(textwrap.dedent("""
        from engine.node import node
        from . import helper

        @node("packed.more", title="More", category="mine", version="1.0.0")
        class More:
            def run(self, ctx):
                return helper.VALUE
        """))
    (pkg / "_helper.py").write_text("VALUE = 1\n")
    (pkg / "helper.py").write_text("VALUE = 2\n")
    reg = load_registry(entry_point_path=[], user_dir=user, extra_modules=[])
    assert reg.package_of("mine.hello").to_json() == {
        "name": "user:mine", "version": "0.2.0", "kind": "user", "source": str(user / "mine.py")}
    assert reg.package_of("packed.more").name == "user:packed"
    [error] = reg.report.errors
    assert error.package.name == "user:broken" and error.message == "RuntimeError: half-written"
    g = Graph(reg)
    g.add_node("mine.hello", "h")
    doc = graph_to_document(g)
    assert doc["node_packages"] == {"mine.hello": {"package": "user:mine", "version": "0.2.0",
                                                   "kind": "user"}}
    empty = load_registry(entry_point_path=[], user_dir=tmp_path / "other", extra_modules=[])
    [p] = problems(graph_from_document(doc, empty, check=False), empty)
    assert f"from user:mine 0.2.0 in the user's nodes folder, which is not there " \
           f"({tmp_path / 'other'})" in p.message
    proc = loom("nodes", LOOM_USER_NODES=str(user))
    assert proc.returncode == 0, proc.stderr
    assert f"# user:mine 0.2.0 (user nodes folder, {user / 'mine.py'})" in proc.stdout
    assert "# failed: user:broken" in proc.stdout


def test_an_entry_point_may_name_a_list_of_node_classes(tmp_path, monkeypatch) -> None:
    fake_plugin(tmp_path, "loom-listed", "2.0.0", "loom_listed_nodes", """
        from engine.node import node

        @node("listed.a", title="A", category="listed", version="1.0.0")
        class A:
            def run(self, ctx):
                return None

        @node("listed.b", title="B", category="listed", version="1.0.0")
        class B:
            def run(self, ctx):
                return None

        NODES = [A]
        """, entry="nodes = loom_listed_nodes:NODES")
    fake_plugin(tmp_path, "loom-empty", "1.0.0", "loom_empty_nodes", "X = 1\n")
    reg = registry_with(tmp_path, monkeypatch)
    assert "listed.a" in reg and "listed.b" not in reg
    [error] = reg.report.errors
    assert str(error) == ("loom-empty 1.0.0 (entry point nodes = loom_empty_nodes): declares "
                          "no node classes (@node)")


# the editor --------------------------------------------------------------------------------------


@pytest.fixture
def plugin_registry(site, tmp_path, monkeypatch) -> Registry:
    broken = tmp_path / "broken-site"
    broken.mkdir()
    fake_plugin(broken, "loom-broken", "0.3.0", "loom_broken_nodes_ed", BROKEN)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(broken))
    return load_registry(entry_point_path=[str(site), str(broken)], user_dir=tmp_path / "u",
                         extra_modules=[])


def test_the_plugins_panel_and_the_search_show_packages(plugin_registry, qtbot, isolated):
    from editor.search import NodeSearch, matching_specs
    from editor.window import MainWindow
    from engine.api import Session

    w = MainWindow(session=Session(plugin_registry), output_dir=isolated / "out")
    w.confirm_close = lambda: "discard"
    qtbot.addWidget(w)
    texts = [w.plugins.list.item(i).text() for i in range(w.plugins.list.count())]
    assert f"loom {loom_version()}  ·  built in  ·  {len(plugin_registry) - 3} node types" \
        in texts
    assert "loom-example-nodes 1.0.0  ·  plugin  ·  3 node types" in texts
    assert any(t.startswith("✖  loom-broken 0.3.0") and "cv3_does_not_exist" in t for t in texts)
    assert "1 plugin error" in w.status_label.text()
    # the search shows where a plugin's node comes from, and finds it by its package
    found = {s.type_id for s in matching_specs(plugin_registry, "loom-example-nodes")}
    assert found == EXAMPLE_TYPES
    search = NodeSearch(plugin_registry)
    search.edit.setText("invert")
    labels = [search.list.item(i).text() for i in range(search.list.count())]
    assert "Invert Image    ·  example    ·  loom-example-nodes 1.0.0" in labels
    search.edit.setText("sampler")
    labels = [search.list.item(i).text() for i in range(search.list.count())]
    assert "Sampler    ·  sampling" in labels  # built-in types: no package shown
    search.close()
    w.close()
