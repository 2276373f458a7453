"""No lost work: autosave after edits, recovery after the process is killed, closing asks,
and the command line's --screenshot. The killed editor is a real subprocess."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.test_editor_support import add

pytest_plugins = ["tests.test_editor_support"]  # fixtures: window, make_window, ...

ROOT = Path(__file__).resolve().parent.parent
CHILD_DEADLINE_S = 60

EDITING_CHILD = textwrap.dedent("""
    import sys, time
    from PySide6.QtCore import QPointF
    from PySide6.QtWidgets import QApplication
    from engine.api import Session
    from editor.window import MainWindow
    from tests.test_editor_support import make_registry

    app = QApplication([])
    w = MainWindow(session=Session(make_registry()))
    w.show()
    a = w.scene.add_node("primitive.int", QPointF(0, 0))
    b = w.scene.add_node("math.arithmetic", QPointF(300, 0))
    w.scene.connect_sockets(w.scene.node_items[a].out_sockets["value"],
                            w.scene.node_items[b].in_sockets["a"])
    w.scene.set_value(a, "value", 77)
    deadline = time.time() + 20
    while time.time() < deadline:
        app.processEvents()
        p = w.doc.recovery_path
        if p is not None and p.exists() and '"value": 77' in p.read_text():
            print("READY", flush=True)
            break
        time.sleep(0.02)
    else:
        print("NOT READY: no recovery file with the edit after 20 s", flush=True)
        sys.exit(1)
    while True:  # an editor at work, until it is killed
        app.processEvents()
        time.sleep(0.02)
""")


def _env(isolated: Path) -> dict:
    return dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(ROOT),
                LOOM_RECOVERY_DIR=str(isolated / "recovery"),
                LOOM_SETTINGS_FILE=str(isolated / "settings.ini"), LOOM_NO_DIALOGS="1")


def test_recovery_after_the_editor_is_killed(make_window, isolated):
    proc = subprocess.Popen([sys.executable, "-c", EDITING_CHILD], cwd=ROOT, env=_env(isolated),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # read both pipes in threads: the first stdout line with a deadline (a child that never
    # says READY fails the test instead of hanging it), stderr so a chatty child cannot block
    first: queue.Queue[str] = queue.Queue()
    err: list[str] = []
    readers = [threading.Thread(target=lambda: first.put(proc.stdout.readline()), daemon=True),
               threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)]
    for t in readers:
        t.start()
    try:
        line = first.get(timeout=CHILD_DEADLINE_S)
    except queue.Empty:
        line = None
    finally:
        proc.kill()  # SIGKILL: no clean-up runs in the child
        proc.wait(10)
    readers[1].join(10)
    if line is None:
        pytest.fail(f"the child editor printed nothing within {CHILD_DEADLINE_S} s; "
                    f"its stderr:\n{''.join(err)}")
    assert line.strip() == "READY", f"the child printed {line!r}; its stderr:\n{''.join(err)}"
    # the killed editor's own file (named by its pid): a window left over from an earlier test
    # in this process may autosave into this test's folder too, as a live editor's file
    left = list((isolated / "recovery").glob(f"loom-{proc.pid}-*.json"))
    assert len(left) == 1
    from editor.app import offer_recovery
    from editor.document import find_orphaned_recoveries

    assert find_orphaned_recoveries() == left
    w = make_window()
    assert offer_recovery(w, "accept")
    g = w.doc.graph
    assert {n.type for n in g.nodes.values()} == {"primitive.int", "math.arithmetic"}
    assert g.nodes["int"].values["value"] == 77
    assert g.link("arithmetic", "a").node == "int"
    assert w.doc.modified and "•" in w.windowTitle()
    assert not left[0].exists()
    # the restored document is itself protected again, by this (live) window
    assert w.doc.recovery_path is not None and w.doc.recovery_path.exists()
    assert find_orphaned_recoveries() == []


def test_autosave_follows_edits_and_a_clean_close_removes_it(window, qtbot, isolated):
    from editor.document import find_orphaned_recoveries

    a = add(window, "primitive.int")
    window.scene.set_value(a, "value", 5)
    qtbot.waitUntil(lambda: window.doc.recovery_path is not None
                    and window.doc.recovery_path.exists(), timeout=3000)
    data = json.loads(window.doc.recovery_path.read_text())
    assert data["workflow"]["nodes"]["int"]["inputs"]["value"] == 5
    # a recovery file of a window still open is never offered to another one
    assert find_orphaned_recoveries() == []
    path = window.doc.recovery_path
    window.confirm_close = lambda: "discard"
    assert window.close()
    assert not path.exists()


def test_declining_recovery_discards_it(make_window, isolated):
    rec = isolated / "recovery"
    rec.mkdir(parents=True, exist_ok=True)
    (rec / "loom-1-dead.json").write_text(json.dumps(
        {"loom_recovery": 1, "saved_at": time.time(), "path": None,
         "workflow": {"schema_version": 1, "nodes": {}}}))
    from editor.app import offer_recovery

    w = make_window()
    assert not offer_recovery(w, "discard")
    assert not list(rec.glob("loom-*.json"))


def test_closing_with_unsaved_changes_asks(window, isolated):
    add(window, "primitive.int")
    asked = []
    window.confirm_close = lambda: asked.append(1) or "cancel"
    assert not window.close()
    assert window.isVisible() and asked
    path = isolated / "saved_on_close.json"
    window.doc.path = path
    window.confirm_close = lambda: "save"
    assert window.close()
    assert json.loads(path.read_text())["nodes"]["int"]["type"] == "primitive.int"


def test_new_and_open_ask_first_and_reset_history(window, isolated):
    add(window, "primitive.int")
    window.confirm_close = lambda: "cancel"
    window.new_file()
    assert window.doc.graph.nodes  # cancelled: nothing lost
    window.confirm_close = lambda: "discard"
    window.new_file()
    assert not window.doc.graph.nodes and window.doc.undo.count() == 0
    assert window.windowTitle().startswith("Untitled")


def test_screenshot_from_the_command_line(isolated):
    wf = isolated / "wf.json"
    wf.write_text(json.dumps({"schema_version": 1, "nodes": {
        "n": {"type": "primitive.int", "inputs": {"value": 3}, "ui": {"pos": [0, 0]}},
        "show": {"type": "text.show", "inputs": {"value": {"node": "n", "output": "value"}},
                 "ui": {"pos": [300, 0]}}}}))
    shot = isolated / "shot.png"
    env = _env(isolated)
    env["LOOM_STARTUP_REPORT"] = "1"
    r = subprocess.run([sys.executable, "main.py", str(wf), "--screenshot", str(shot)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert "loom-window-shown" in r.stderr
    # a file that cannot be read fails the command
    bad = isolated / "bad.json"
    bad.write_text("{nope")
    r = subprocess.run([sys.executable, "main.py", str(bad), "--screenshot", str(shot)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1


def test_the_editor_never_imports_torch(isolated):
    code = ("import sys, editor.app, editor.window, editor.scene, editor.items, editor.panels, "
            "editor.runner, editor.mask_editor\n"
            "from PySide6.QtWidgets import QApplication\n"
            "app = QApplication([])\n"
            "from engine.api import Session\n"
            "from editor.window import MainWindow\n"
            "w = MainWindow(session=Session()); w.show(); app.processEvents()\n"
            "assert 'diffusers' in w.about_text(); w.show_about(); w.show_shortcuts()\n"
            "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
            "print('BAD', bad) if bad else print('OK')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(isolated),
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().endswith("OK"), r.stdout + r.stderr
