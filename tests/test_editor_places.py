"""Loom's shipped files are read-only to the editor: a bundled workflow opens as an untitled copy,
Save asks where (the user's workflows folder), masks go to the user's data folder or beside the
user's workflow; a whole session of editing, saving, mask painting and running changes nothing
under resources/ (offscreen Qt; the run uses the built-in model on the CPU)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PySide6.QtCore import QPointF

from tests.test_editor_support import add

pytest_plugins = ["tests.test_editor_support"]  # fixtures: window, make_window, ...

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "resources"


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`: its content's hash (files) or "dir"."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), folder)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[os.path.relpath(p, folder)] = f"{h.hexdigest()} {os.stat(p).st_mtime_ns}"
    return out


def _finished(window) -> bool:
    return window.runner.handle is not None and window.runner.handle.done() \
        and not window.runner.busy and window._last_result is not None


@pytest.fixture
def full_window(qtbot, isolated):
    """A window on every node type Loom ships."""
    from editor.window import MainWindow
    from engine.api import Session

    w = MainWindow(session=Session(), output_dir=isolated / "out")
    w.confirm_close = lambda: "discard"
    qtbot.addWidget(w)
    w.resize(1200, 800)
    w.show()
    yield w
    if w.runner is not None and w.runner.busy:
        w.runner.cancel()
        w.runner.handle.result(timeout=30)


def test_bundled_workflows_open_as_copies_saved_elsewhere(full_window, qtbot, isolated):
    from editor.mask_editor import MaskEditor
    from editor.places import data_dir, workflows_dir
    from engine.api import DEFAULT_WORKFLOW

    w = full_window
    w.runner.device = "cpu"
    # the start-up workflow opens as an untitled copy of the bundled file
    assert w.load_file(DEFAULT_WORKFLOW, remember=False)
    assert w.doc.path is None and w.doc.bundled
    assert "copy of default.json" in w.windowTitle()
    w.scene.set_value("noise", "batch", 1)
    w.scene.set_value("prompt", "text", "a red circle on a white background")
    # Ctrl+S asks where, suggesting the user's workflows folder; cancelling writes nothing
    asked: list[str] = []
    w.choose_save_path = lambda start: asked.append(start) or None
    assert not w.save()
    assert asked == [str(workflows_dir() / "default.json")]
    assert workflows_dir().is_relative_to(data_dir())  # $LOOM_DATA_DIR in the tests
    # the shipped file itself is refused, whichever way it is asked for
    assert not w.save_to(DEFAULT_WORKFLOW)
    assert "ships with Loom" in w.status_label.text()
    w.choose_save_path = lambda start: start
    assert w.save()
    mine = workflows_dir() / "default.json"
    assert w.doc.path == mine and not w.doc.modified and not w.doc.bundled
    saved = json.loads(mine.read_text())
    assert saved["nodes"]["noise"]["inputs"]["batch"] == 1
    assert w.save()  # now a plain save to the user's file
    # mask painting on a copy of the bundled inpaint workflow: the mask goes to the data folder
    assert w.load_file(RESOURCES / "workflows" / "builtin" / "inpaint.json", remember=False)
    assert w.doc.bundled
    dlg = MaskEditor(w, w.scene, "mask", "image")
    assert dlg.canvas.base is not None  # the workflow's own image, found beside it
    dlg.canvas.stroke([QPointF(10, 10), QPointF(40, 40)])
    path = dlg.save()
    assert path.is_relative_to(data_dir() / "masks") and path.is_file()
    assert Path(w.doc.graph.nodes["mask"].values["image"]) == path
    again = MaskEditor(w, w.scene, "mask", "image").save()
    assert again != path and path.is_file()  # a second mask never replaces the first
    # run the saved copy of the default workflow: the images go to the output folder
    assert w.load_file(mine)
    assert w.run()
    qtbot.waitUntil(lambda: _finished(w), timeout=300_000)
    assert w._last_result.ok, w._last_result.errors
    assert w._last_result.files and all(Path(f).is_relative_to(isolated / "out")
                                        for f in w._last_result.files)


SESSION = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from PySide6.QtCore import QPointF
    from PySide6.QtWidgets import QApplication
    from engine.api import DEFAULT_WORKFLOW, Session
    from editor.mask_editor import MaskEditor
    from editor.window import MainWindow

    app = QApplication([])
    w = MainWindow(session=Session())
    w.confirm_close = lambda: "discard"
    w.choose_save_path = lambda start: None  # Ctrl+S on a bundled copy: asked, cancelled
    w.runner.device = "cpu"
    w.show()

    def wait_run():
        deadline = time.time() + 300
        while time.time() < deadline and (w.runner.busy or w._last_result is None):
            app.processEvents()
            time.sleep(0.01)
        assert w._last_result is not None and w._last_result.ok, w._last_result
        w._last_result = None

    for wf in [DEFAULT_WORKFLOW, *sorted((DEFAULT_WORKFLOW.parent / "builtin").glob("*.json"))]:
        assert w.load_file(wf)
        noise = w.doc.graph.nodes.get("noise")
        if noise is not None:
            w.scene.set_value("noise", "batch", 1)
        w.save()                      # asks where; cancelled: nothing written
        w.save_to(wf)                 # the shipped file itself: refused
        for nid in list(w.doc.graph.nodes):
            if w.scene.mask_capable(nid):
                dlg = w.edit_mask_for(nid)
                dlg.canvas.stroke([QPointF(5, 5), QPointF(30, 30)])
                dlg.save()
        w.doc.write_recovery()
        if wf == DEFAULT_WORKFLOW or wf.stem == "inpaint":
            assert w.run()
            wait_run()
        w.choose_save_path = lambda start: start
        assert w.save(), w.status_label.text()   # to the user's workflows folder
        w.choose_save_path = lambda start: None
    w.doc.discard_recovery()
    print("SESSION DONE", flush=True)
""")


def test_a_session_changes_nothing_under_resources(tmp_path):
    """Opening every bundled workflow, editing, Save (asked, cancelled), Save onto the shipped
    file (refused), painting masks, running, saving copies: Loom's `resources/` is byte for
    byte what it was. Run in a copy of the install (others may be editing this checkout)."""
    install = tmp_path / "loom"
    install.mkdir()
    for name in ("main.py", "pyproject.toml"):
        shutil.copy2(ROOT / name, install / name)
    for name in ("engine", "nodes", "editor", "resources"):
        shutil.copytree(ROOT / name, install / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    before = tree_digest(install / "resources")
    home = tmp_path / "home"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(install),
               HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_DATA_HOME=str(home / ".local/share"), LOOM_NO_DIALOGS="1",
               LOOM_DATA_DIR=str(tmp_path / "data"),
               LOOM_SETTINGS_FILE=str(tmp_path / "settings.ini"),
               LOOM_OUTPUT_DIR=str(tmp_path / "out"))
    env.pop("LOOM_RECOVERY_DIR", None)
    env.pop("LOOM_WORKFLOWS_DIR", None)
    r = subprocess.run([sys.executable, "-c", SESSION], cwd=install, env=env,
                       capture_output=True, text=True, timeout=600)
    assert "SESSION DONE" in r.stdout, r.stdout + r.stderr
    assert tree_digest(install / "resources") == before
    # what the session wrote went to the user's folders
    saved = sorted(p.name for p in (tmp_path / "data" / "workflows").glob("*.json"))
    assert "default.json" in saved and "inpaint.json" in saved
    assert list((tmp_path / "data" / "masks").glob("*.png"))
    assert list((tmp_path / "out").glob("*.png"))


def test_saving_elsewhere_keeps_relative_paths_pointing_at_their_files(window, isolated):
    """A workflow that names a file relative to its folder, saved into another folder: the
    path is rewritten so the copy still finds the file (one undo step)."""
    a, b = isolated / "a", isolated / "b"
    a.mkdir()
    (a / "pic.png").write_bytes(b"png")
    m = add(window, "edtest.mask")
    assert window.save_to(a / "wf.json")
    window.scene.set_value(m, "mask", "pic.png")
    assert window.save_to(b / "wf.json")
    assert Path(window.doc.graph.nodes[m].values["mask"]) == (a / "pic.png").resolve()
    assert json.loads((b / "wf.json").read_text())["nodes"][m]["inputs"]["mask"] == \
        str((a / "pic.png").resolve())
    # a path that still resolves from the new folder (Loom's own resources) is left alone
    window.scene.set_value(m, "mask", "resources/workflows/builtin/mask_center.png")
    assert window.save_to(isolated / "c" / "wf.json")
    assert window.doc.graph.nodes[m].values["mask"] == \
        "resources/workflows/builtin/mask_center.png"


def test_a_mask_for_the_users_workflow_goes_beside_it(window, isolated):
    from editor.mask_editor import MaskEditor

    m = add(window, "edtest.mask")
    assert window.save_to(isolated / "mine" / "wf.json")
    path = MaskEditor(window, window.scene, m, "mask").save()
    assert path == isolated / "mine" / "masks" / "wf_mask_mask.png"
    assert window.doc.graph.nodes[m].values["mask"] == "masks/wf_mask_mask.png"


def test_recovered_copy_of_a_bundled_workflow_stays_untitled(make_window, isolated):
    from editor.app import offer_recovery
    from engine.api import DEFAULT_WORKFLOW

    rec = isolated / "recovery"
    rec.mkdir(parents=True, exist_ok=True)
    (rec / "loom-1-dead.json").write_text(json.dumps(
        {"loom_recovery": 1, "saved_at": 0, "path": str(DEFAULT_WORKFLOW),
         "workflow": {"schema_version": 1, "nodes": {}}}))
    w = make_window()
    assert offer_recovery(w, "accept")
    assert w.doc.path is None and w.doc.bundled
