"""Running from the editor: results in nodes and the viewer, progress, cancel, errors on their
node, problems before a run, seeds randomized after a run (offscreen Qt, test nodes)."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from tests.test_editor_support import SLOW_STARTED, add, wire

pytest_plugins = ["tests.test_editor_support"]  # fixtures: window, make_window, ...


def _finished(window) -> bool:
    return window.runner.handle is not None and window.runner.handle.done() \
        and not window.runner.busy and window._last_result is not None


def test_run_shows_the_image_in_the_node_and_the_viewer(window, qtbot, isolated):
    g = add(window, "edtest.gradient", 0, 0)
    s = add(window, "edtest.show", 300, 0)
    wire(window, g, "image", s, "image")
    window.scene.set_value(g, "width", 40)
    assert window.run()
    assert window.act_cancel.isEnabled() and not window.act_run.isEnabled()
    qtbot.waitUntil(lambda: _finished(window), timeout=10000)
    item = window.node_item(s)
    assert item.state == "done" and item.elapsed is not None
    assert len(item.images) == 1 and (item.images[0].width(), item.images[0].height()) == (40, 16)
    assert any(r.kind == "image" for r in item.rows)
    cur = window.viewer.current
    assert cur is not None and cur.image.width() == 40
    assert cur.image.pixelColor(39, 0).red() == 255
    assert "Done" in window.status_label.text() and "2 ran" in window.status_label.text()
    assert window.act_run.isEnabled() and not window.act_cancel.isEnabled()
    # a second run is served from the cache, and says so
    assert window.run()
    qtbot.waitUntil(lambda: _finished(window) and window._last_result.run_id == 2,
                    timeout=10000)
    assert window.node_item(g).state == "cached"
    assert "2 cached" in window.status_label.text()
    assert "cache: 2 results" in window.cache_label.text()
    # change a value: the viewer keeps the previous image to compare, save as writes a PNG
    window.scene.set_value(g, "seed", 200)
    assert window.run()
    qtbot.waitUntil(lambda: _finished(window) and window._last_result.run_id == 3,
                    timeout=10000)
    assert window.viewer.previous and window.viewer.compare_button.isEnabled()
    assert window.viewer.current.image.pixelColor(0, 0).blue() == 200
    out = isolated / "saved.png"
    window.viewer.save_as(out)
    assert out.read_bytes().startswith(b"\x89PNG")


def test_progress_preview_and_cancel_keep_the_window_responsive(window, qtbot):
    slow = add(window, "edtest.slow", 0, 0)
    window.scene.set_value(slow, "steps", 400)
    window.scene.set_value(slow, "delay", 0.02)
    SLOW_STARTED.clear()
    item = window.node_item(slow)
    seen: list[int] = []  # every step the node reported to its item
    shown = item.set_progress
    item.set_progress = lambda step, total, preview: (seen.append(step),
                                                      shown(step, total, preview))
    assert window.run()
    qtbot.waitUntil(lambda: item.progress is not None and item.progress[0] >= 3, timeout=10000)
    assert item.state == "running" and item.preview is not None
    assert 0 < window.progress.value() < 1000
    # the GUI thread is free: an edit goes through while the node runs
    add(window, "primitive.int", 0, 300)
    window.cancel()
    qtbot.waitUntil(lambda: _finished(window), timeout=10000)
    result = window._last_result
    assert result.cancelled
    assert item.state == "cancelled"
    assert "Cancelled" in window.status_label.text()
    # it stopped part-way (the progress bar on the node is cleared once it is cancelled)
    assert 3 <= max(seen) < 400 and item.progress is None


def test_an_error_is_shown_on_its_node_and_in_problems(window, qtbot):
    f = add(window, "edtest.fail", 0, 0)
    ok = add(window, "edtest.gradient", 0, 300)
    show = add(window, "edtest.show", 300, 300)
    wire(window, ok, "image", show, "image")
    window.scene.set_value(f, "message", "the fail node failed")
    assert window.run()
    qtbot.waitUntil(lambda: _finished(window), timeout=10000)
    item = window.node_item(f)
    assert item.state == "error"
    assert "the fail node failed" in item.error and item.error_input == "message"
    assert "the fail node failed" in item.toolTip()
    # failure isolation: the other branch still ran
    assert window.node_item(show).state == "done"
    texts = [window.problems.item(i).text() for i in range(window.problems.count())]
    assert any("the fail node failed" in t for t in texts)
    window.scene.clearSelection()
    entry = next(window.problems.item(i) for i in range(window.problems.count())
                 if f in window.problems.item(i).text())
    window.problems.itemClicked.emit(entry)
    assert window.scene.selected_node_ids() == [f]


def test_problems_are_listed_before_a_run(window, qtbot):
    show = add(window, "edtest.show", 0, 0)
    qtbot.waitUntil(lambda: window.problems.problem_count() == 1, timeout=3000)
    assert "must be connected" in window.problems.item(0).text()
    assert window.node_item(show).problem
    assert not window.run()
    assert "problem" in window.status_label.text()
    g = add(window, "edtest.gradient", -300, 0)
    wire(window, g, "image", show, "image")
    qtbot.waitUntil(lambda: window.problems.problem_count() == 0, timeout=3000)
    assert window.node_item(show).problem is None


def test_seed_marked_randomize_changes_after_a_run(window, qtbot):
    g = add(window, "edtest.gradient", 0, 0)
    s = add(window, "edtest.show", 300, 0)
    wire(window, g, "image", s, "image")
    window.scene.set_value(g, "seed", 5)
    window.scene.toggle_randomize(g, "seed")
    assert window.run()
    qtbot.waitUntil(lambda: _finished(window), timeout=10000)
    assert window.doc.graph.nodes[g].values["seed"] != 5
    window.doc.undo.undo()
    assert window.doc.graph.nodes[g].values["seed"] == 5


def test_text_results_show_in_the_node(window, qtbot):
    a = add(window, "primitive.int", 0, 0)
    show = add(window, "text.show", 300, 0)
    wire(window, a, "value", show, "value")
    window.scene.set_value(a, "value", 1234)
    assert window.run()
    qtbot.waitUntil(lambda: _finished(window), timeout=10000)
    assert window.node_item(show).text_result == "1234"


@pytest.mark.parametrize("shape", [(8, 6), (8, 6, 3), (8, 6, 4), (1, 8, 6, 3)])
def test_images_of_several_shapes_convert(shape):
    np = pytest.importorskip("numpy")
    from editor.items import to_qimage

    q = to_qimage(np.zeros(shape, np.uint8))
    assert (q.width(), q.height()) == (6, 8)


def test_viewer_compare_toggle(window):
    from PySide6.QtGui import QImage

    from editor.panels import Shown

    a, b = QImage(10, 10, QImage.Format.Format_RGB888), QImage(10, 10, QImage.Format.Format_RGB888)
    a.fill(Qt.GlobalColor.red)
    b.fill(Qt.GlobalColor.blue)
    window.viewer.show_images([Shown(a, "first")])
    # with a single image, Compare says why it cannot compare instead of doing nothing
    window.viewer.compare_button.setChecked(True)
    assert not window.viewer.compare_button.isChecked() and not window.viewer.canvas.compare
    assert "Nothing to compare yet" in window.viewer.canvas.note
    assert "run again" in window.viewer.compare_button.toolTip()
    window.viewer.show_images([Shown(b, "second")])
    assert window.viewer.canvas.note == ""
    window.viewer.compare_button.setChecked(True)
    assert window.viewer.canvas.compare and window.viewer.canvas.previous is a
    img = window.viewer.canvas.grab().toImage()
    w = img.width()
    left = img.pixelColor(w // 4, img.height() // 2)
    right = img.pixelColor(3 * w // 4, img.height() // 2)
    assert left.red() > 200 and right.blue() > 200


def test_default_workflow_runs_and_shows_an_image(qtbot, isolated):
    """The bundled workflow with the built-in model renders an image into the viewer."""
    from engine.api import DEFAULT_WORKFLOW
    from engine.paths import PROJECT_ROOT

    assert DEFAULT_WORKFLOW.is_file()
    assert (PROJECT_ROOT / "resources" / "models" / "loom-shapes" / "model_index.json").is_file()
    from editor.window import MainWindow
    from engine.api import Session

    w = MainWindow(session=Session(), output_dir=isolated / "out")
    w.confirm_close = lambda: "discard"
    qtbot.addWidget(w)
    w.show()
    assert w.load_file(DEFAULT_WORKFLOW, remember=False)
    assert w.problems.problem_count() == 0
    w.runner.device = "cpu"
    assert w.run()
    qtbot.waitUntil(lambda: _finished(w), timeout=300_000)
    assert w._last_result.ok, w._last_result.errors
    assert w.viewer.current is not None and w.viewer.current.image.width() == 64
    assert w.node_item("save").state == "done" and len(w._last_result.files) == 4


def test_on_the_qasync_loop_a_run_is_awaited_and_reported_once(window, qtbot):
    """`python main.py` runs Qt on qasync's asyncio loop: the runner awaits the engine's run
    handle there, the GUI stays live, and the result arrives exactly once."""
    import asyncio

    import qasync
    from PySide6.QtWidgets import QApplication

    g = add(window, "edtest.gradient", 0, 0)
    s = add(window, "edtest.show", 300, 0)
    wire(window, g, "image", s, "image")
    finished = []
    window.runner.finished.connect(finished.append)
    loop = qasync.QEventLoop(QApplication.instance(), already_running=False)
    asyncio.set_event_loop(loop)
    try:
        async def go():
            assert window.run()
            watch = window.runner._awaiting
            assert watch is not None  # awaited on the loop, not only relayed
            await asyncio.wait_for(watch, 30)  # a run that never finishes fails, not hangs
            await asyncio.sleep(0.05)  # the relayed final event must not report it again

        loop.run_until_complete(go())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    assert len(finished) == 1 and finished[0].ok
    assert window.node_item(s).state == "done"
    assert window.viewer.current is not None
