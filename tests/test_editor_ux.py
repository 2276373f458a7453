"""The editor as people meet it (issue 24): a toolbar that holds still, run states that say what
happened, progress while nothing can be counted yet, context menus, bypass and mute, keyboard
shortcuts and help pages, a readable zoom, socket tooltips, popups on the screen, and field
widgets that paint and hit-test from one layout (offscreen Qt, test nodes)."""

from __future__ import annotations

import importlib.metadata

import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, QSize, Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication

from editor import commands
from tests.test_editor import _mouse
from tests.test_editor_support import add, wire

pytest_plugins = ["tests.test_editor_support"]  # fixtures: window, make_window, ...


def _finished(window, run_id: int | None = None) -> bool:
    r = window._last_result
    return window.runner.handle is not None and window.runner.handle.done() \
        and not window.runner.busy and r is not None \
        and (run_id is None or r.run_id == run_id)


def _click(view, scene_pos: QPointF, button=Qt.MouseButton.LeftButton) -> None:
    _mouse(view, QEvent.Type.MouseButtonPress, scene_pos, button, button)
    _mouse(view, QEvent.Type.MouseButtonRelease, scene_pos, button, button)


def _menu_texts(menu) -> list[str]:
    return [a.text().replace("&", "").split("\t")[0] for a in menu.actions()
            if not a.isSeparator()]


# (2) a toolbar that holds still ---------------------------------------------------------------

def test_toolbar_holds_still_and_run_stays_in_view_at_1024(window, qtbot, tmp_path):
    window.resize(1024, 700)
    qtbot.wait(50)
    before = {k: b.geometry() for k, b in window.tool_buttons.items()}
    long_a, long_b = "a_source_node_with_a_long_descriptive_name", \
        "a_target_node_with_an_even_longer_descriptive_name"
    window.doc.undo.push(commands.AddNode(window.doc.graph, "primitive.int", long_a))
    window.doc.undo.push(commands.AddNode(window.doc.graph, "math.arithmetic", long_b))
    wire(window, long_a, "value", long_b, "a")
    QApplication.processEvents()
    shot = window.grab()
    shot.save(str(tmp_path / "toolbar_1024.png"))
    # the buttons did not move, their labels stayed short
    assert {k: b.geometry() for k, b in window.tool_buttons.items()} == before
    undo = window.tool_buttons["undo"]
    assert undo.text() == "Undo" and window.tool_buttons["redo"].text() == "Redo"
    # the command's text is in the tooltip (with the shortcut) and in the Edit menu
    assert f"Undo Connect {long_a}.value → {long_b}.a" in undo.toolTip()
    assert "Ctrl+Z" in undo.toolTip()
    assert window.act_undo.text().startswith("&Undo Connect")
    # Run and Cancel are inside the window, visible, on the grabbed picture
    for b in (window.run_button, window.cancel_button):
        assert b.isVisible()
        top_left = b.mapTo(window, QPoint(0, 0))
        assert window.rect().contains(top_left)
        assert window.rect().contains(top_left + QPoint(b.width() - 1, b.height() - 1))
    c = window.run_button.mapTo(window, window.run_button.rect().center())
    img = shot.toImage()
    dpr = img.devicePixelRatio()
    pixel = img.pixelColor(int(c.x() * dpr), int(c.y() * dpr))
    assert window.run_button.isEnabled() and pixel != img.pixelColor(5, int(c.y() * dpr))


# (3) run states --------------------------------------------------------------------------------

def test_failing_node_red_downstream_blocked_cleared_on_edit(window, qtbot):
    f = add(window, "edtest.maybe_fail", 0, 0)
    inv = add(window, "edtest.invert", 300, 0)
    show = add(window, "edtest.show", 600, 0)
    wire(window, f, "image", inv, "image")
    wire(window, inv, "image", show, "image")
    assert window.run()
    qtbot.waitUntil(lambda: _finished(window), timeout=10000)
    failed, blocked = window.node_item(f), window.node_item(inv)
    assert failed.state == "error" and failed.error_input == "fail"
    assert blocked.state == "blocked" and window.node_item(show).state == "blocked"
    assert "did not finish" in blocked.toolTip()
    # two different looks: the failure is red and solid, the blocked nodes quieter (dashed)
    red, _, solid = failed._border()
    grey, _, dashed = blocked._border()
    assert red != grey and solid == Qt.PenStyle.SolidLine and dashed == Qt.PenStyle.DashLine
    assert failed.status_text().startswith("failed") and blocked.status_text() == "blocked"
    # the problem count is the number of problems listed (one here)
    listed = [window.problems.item(i).text() for i in range(window.problems.count())]
    assert len(listed) == 1 and "told to fail" in listed[0]
    assert window.problems_dock.windowTitle() == "Problems (1)"
    assert "2 node(s) blocked" in window.status_label.text()  # inv and show
    # fixing the value clears every mark of that run
    window.scene.set_value(f, "fail", False)
    assert failed.state is None and blocked.state is None and failed.error is None
    assert not failed._input_error("fail")
    assert window.problems.problem_count() == 0
    assert window.problems_dock.windowTitle() == "Problems"
    assert window.run()
    qtbot.waitUntil(lambda: _finished(window, 2), timeout=10000)
    assert [window.node_item(n).state for n in (f, inv, show)] == ["done"] * 3


def test_bypass_or_mute_clears_the_last_runs_marks(window, qtbot):
    """Bypass and mute change what runs: like any other edit they clear the marks."""
    f = add(window, "edtest.maybe_fail", 0, 0)
    show = add(window, "edtest.show", 300, 0)
    wire(window, f, "image", show, "image")
    assert window.run()
    qtbot.waitUntil(lambda: _finished(window), timeout=10000)
    assert window.node_item(f).state == "error" and window.node_item(show).state == "blocked"
    window.scene.toggle_mode([show], "mute")
    assert window.node_item(f).state is None and window.node_item(show).state is None
    assert window.problems.problem_count() == 0


def test_a_new_run_clears_the_last_runs_marks(window, qtbot):
    f = add(window, "edtest.maybe_fail", 0, 0)
    show = add(window, "edtest.show", 300, 0)
    wire(window, f, "image", show, "image")
    assert window.run()
    qtbot.waitUntil(lambda: _finished(window), timeout=10000)
    assert window.node_item(f).state == "error"
    assert window.run()
    assert window.node_item(show).state is None  # cleared when the run starts
    qtbot.waitUntil(lambda: _finished(window, 2), timeout=10000)
    assert window.problems_dock.windowTitle() == "Problems (1)"


def test_after_a_cancel_nodes_that_never_ran_show_no_time(window, qtbot):
    slow = add(window, "edtest.slow", 0, 0)
    inv = add(window, "edtest.sleepy", 0, 300)
    show = add(window, "edtest.show", 300, 300)
    wire(window, inv, "image", show, "image")
    window.scene.set_value(slow, "steps", 400)
    window.scene.set_value(slow, "delay", 0.02)
    item = window.node_item(slow)
    assert window.run()
    qtbot.waitUntil(lambda: window.node_item(inv).state == "running"
                    or (item.progress is not None and item.progress[0] >= 2), timeout=10000)
    window.cancel()
    qtbot.waitUntil(lambda: _finished(window), timeout=10000)
    never = [n for n in (slow, inv, show) if window.node_item(n).state == "not run"]
    assert never, [window.node_item(n).state for n in (slow, inv, show)]
    for n in never:
        assert "s" not in window.node_item(n).status_text().replace("not run", "")
    assert window.progress.value() < 1000 and window.progress.format() == "Cancelled"


# (4) progress while nothing can be counted ---------------------------------------------------

def test_a_busy_node_never_leaves_an_empty_bar(window, qtbot):
    s = add(window, "edtest.sleepy", 0, 0)
    show = add(window, "edtest.show", 300, 0)
    wire(window, s, "image", show, "image")
    window.scene.set_value(s, "seconds", 2.0)
    assert window.run()
    # at once: the toolbar's bar moves (busy) instead of sitting empty
    assert window.progress.maximum() == 0
    item = window.node_item(s)
    qtbot.waitUntil(lambda: item.state == "running", timeout=1000)
    assert window.progress.maximum() == 0 and "loading" in window.progress.format()
    assert item.status_text().startswith("loading…")  # its own state, with the time so far
    assert item.loads
    qtbot.waitUntil(lambda: _finished(window), timeout=10000)
    assert window.progress.maximum() == 1000 and window.progress.value() == 1000


def test_load_checkpoint_reports_the_components_it_loaded(isolated):
    """Load Checkpoint counts the parts it has loaded (UNet, text encoder, VAE) through
    ctx.progress, so the editor's bar moves during a first run's long load."""
    pytest.importorskip("torch")
    from engine.api import Session
    from engine.executor import Progress
    from engine.graph import Graph

    s = Session()
    g = Graph(s.registry)
    g.add_node("loaders.checkpoint", "checkpoint")
    events = []
    r = s.executor.run(g, ["checkpoint"], s.options(g, isolated / "out", "cpu"), events.append)
    assert r.ok, r.errors
    steps = [(e.step, e.total) for e in events if isinstance(e, Progress)]
    assert steps == [(0, 3), (1, 3), (2, 3), (3, 3)]


# (5) context menus, bypass, mute, edit mask --------------------------------------------------

def test_node_wire_and_canvas_menus(window, qtbot):
    g = add(window, "edtest.gradient", 0, 0)
    show = add(window, "edtest.show", 400, 0)
    wire(window, g, "image", show, "image")
    item = window.node_item(g)
    seed = item.widgets["seed"]
    texts = _menu_texts(window.scene.build_node_menu(item, seed))
    for want in ("Rename Node…", "Duplicate", "Delete", "Bypass", "Mute", "Collapse / Expand",
                 "Colour", "Help: Gradient", "New random seed", "Randomize after each run"):
        assert want in texts, (want, texts)
    shortcuts = {a.text().replace("&", ""): a.shortcut().toString()
                 for a in window.scene.build_node_menu(item).actions()}
    assert shortcuts["Duplicate"] == "Ctrl+D" and shortcuts["Bypass"] == "Ctrl+B"
    # rename gives the node its own title (one undo step); empty gives the type's back
    assert window.scene.rename_node(g, "Sky gradient")
    assert item.title == "Sky gradient" and window.doc.graph.nodes[g].ui["title"] == "Sky gradient"
    window.doc.undo.undo()
    assert item.title == "Gradient" and "title" not in window.doc.graph.nodes[g].ui
    # help
    dlg = window.show_node_help(g)
    assert "Gradient" in dlg.text() and "seed" in dlg.text()
    dlg.close()
    # the wire's menu
    edge = window.scene.edge_items[(show, "image")]
    assert _menu_texts(window.scene.build_edge_menu(edge, QPointF(200, 0))) == [
        f"{g}.image → {show}.image", "Insert Node…", "Delete Connection"]
    start = window.doc.undo.index()
    new = window.scene.insert_node_on_edge((show, "image"), "edtest.invert", QPointF(200, 0))
    graph = window.doc.graph
    assert graph.link(new, "image").node == g and graph.link(show, "image").node == new
    assert window.doc.undo.index() == start + 1
    window.doc.undo.undo()
    assert graph.link(show, "image").node == g and new not in graph.nodes
    # the canvas menu
    texts = _menu_texts(window.scene.build_canvas_menu(QPointF(0, 300)))
    assert texts[:2] == ["Add Node…", "Paste"] and "Select All" in texts \
        and "Fit to View" in texts


def test_search_from_a_wire_lists_nodes_that_fit_into_it(window):
    g = add(window, "edtest.gradient", 0, 0)
    show = add(window, "edtest.show", 400, 0)
    wire(window, g, "image", show, "image")
    popup = window.open_search(QPointF(200, 0), QPointF(), window.scene.edge_items[(show,
                                                                                    "image")])
    ids = [popup.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(popup.list.count())]
    assert ids == ["edtest.invert"]
    popup._activate(popup.list.item(0))
    assert window.doc.graph.link(show, "image").node != g
    popup.close()


def test_bypass_passes_the_input_through_and_mute_skips_the_node(window, qtbot):
    g = add(window, "edtest.gradient", 0, 0)
    inv = add(window, "edtest.invert", 300, 0)
    show = add(window, "edtest.show", 600, 0)
    other = add(window, "edtest.show", 600, 300)
    wire(window, g, "image", inv, "image")
    wire(window, inv, "image", show, "image")
    wire(window, g, "image", other, "image")
    window.scene.clearSelection()
    window.node_item(inv).setSelected(True)
    window.act_bypass.trigger()
    assert window.doc.graph.nodes[inv].ui["mode"] == "bypass"
    assert "bypassed" in window.node_item(inv).status_text()
    assert window.run()
    qtbot.waitUntil(lambda: _finished(window), timeout=10000)
    shown = window.node_item(show).images[0]
    assert shown.pixelColor(31, 0).red() == 255  # the gradient itself, not inverted
    assert window.node_item(inv).state is None  # it did not run
    window.act_bypass.trigger()  # off again: one more undo step
    assert "mode" not in window.doc.graph.nodes[inv].ui
    # mute: the node and the outputs that need it do not run; the other output does
    window.scene.toggle_mode([inv], "mute")
    assert window.run()
    qtbot.waitUntil(lambda: _finished(window, 2), timeout=10000)
    r = window._last_result
    assert other in r.status and show not in r.status and inv not in r.status
    window.scene.toggle_mode([g], "mute")
    assert not window.run() and "muted" in window.status_label.text()
    # saved with the workflow and undone like any edit
    window.doc.undo.undo()
    window.doc.undo.undo()
    assert all("mode" not in n.ui for n in window.doc.graph.nodes.values())


def test_edit_mask_on_an_image_node_and_in_the_viewer(window, isolated):
    from editor.panels import Shown

    pic = add(window, "edtest.picture", 0, 0)
    m = add(window, "edtest.mask", 0, 200)
    ref = isolated / "ref.png"
    img = QImage(40, 30, QImage.Format.Format_RGB888)
    img.fill(Qt.GlobalColor.green)
    img.save(str(ref))
    window.scene.set_value(pic, "image", str(ref))
    assert window.scene.mask_capable(pic) and window.scene.mask_capable(m)
    dlg = window.edit_mask_for(pic)  # a Load Image paints the graph's mask over its image
    assert (dlg.node_id, dlg.input) == (m, "mask")
    assert dlg.canvas.base.size() == QSize(40, 30) and dlg.canvas.mask.size() == QSize(40, 30)
    dlg.reject()
    # the node menu of both offers it (with its shortcut); the picture opens in the viewer
    for n in (pic, m):
        texts = _menu_texts(window.scene.build_node_menu(window.node_item(n)))
        assert "Edit Mask…" in texts
    assert "Show Image in Viewer" in _menu_texts(window.scene.build_node_menu(
        window.node_item(pic)))
    window.show_node_in_viewer(pic)
    assert window.viewer.current.image.size() == QSize(40, 30)
    # the viewer's "Edit mask…" paints over the image shown
    shown = QImage(20, 10, QImage.Format.Format_RGB888)
    shown.fill(Qt.GlobalColor.blue)
    window.viewer.show_images([Shown(shown, "result")])
    window.viewer.mask_button.click()
    dlg = window._mask_editor
    assert dlg.node_id == m and dlg.canvas.mask.size() == QSize(20, 10)
    assert dlg.canvas.base.pixelColor(0, 0).blue() == 255
    dlg.reject()


def test_edit_mask_adds_a_load_mask_node_when_the_graph_has_none(isolated, qtbot):
    from editor.window import MainWindow
    from engine.api import Session

    w = MainWindow(session=Session(), output_dir=isolated / "out")
    w.confirm_close = lambda: "discard"
    qtbot.addWidget(w)
    w.show()
    img = w.scene.add_node("image.load", QPointF(0, 0))
    dlg = w.edit_mask_for(img)
    node = w.doc.graph.nodes[dlg.node_id]
    assert node.type == "image.load_mask" and "Load Mask" in w.status_label.text()
    dlg.reject()


# (6) keyboard, help, about ---------------------------------------------------------------------

def test_escape_cancels_a_run(window, qtbot):
    from PySide6.QtTest import QTest

    slow = add(window, "edtest.slow", 0, 0)
    window.scene.set_value(slow, "steps", 400)
    window.scene.set_value(slow, "delay", 0.02)
    item = window.node_item(slow)
    assert window.run()
    qtbot.waitUntil(lambda: item.progress is not None and item.progress[0] >= 2, timeout=10000)
    window.view.setFocus()
    QTest.keyClick(window.view, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: _finished(window), timeout=10000)
    assert window._last_result.cancelled


def test_escape_in_a_field_editor_cancels_the_edit_not_the_run(window, qtbot):
    from PySide6.QtTest import QTest

    a = add(window, "primitive.int", 0, 0)
    slow = add(window, "edtest.slow", 0, 300)
    window.scene.set_value(slow, "steps", 100)
    window.scene.set_value(slow, "delay", 0.02)
    assert window.run()
    editor = window.node_item(a).open_editor("value")
    editor.setText("9")
    QTest.keyClick(editor, Qt.Key.Key_Escape)
    assert window.node_item(a).editor is None and window.doc.graph.nodes[a].values["value"] == 0
    assert window.runner.busy
    window.cancel()
    qtbot.waitUntil(lambda: _finished(window), timeout=10000)


def test_every_menu_command_shows_its_shortcut_and_the_help_page_lists_them(window):
    no_key = {"Open Recent", "Examples", "About Loom"}  # submenus, and About by custom
    for menu_action in window.menuBar().actions():
        for a in menu_action.menu().actions():
            name = a.text().replace("&", "").split("\t")[0]
            if a.isSeparator() or name in no_key or name.startswith(("Undo", "Redo")) \
                    and a.shortcuts():
                continue
            assert a.shortcuts() or "\t" in a.text(), f"{name} has no shortcut"
    rows = window.shortcut_rows()
    keys = {name: k for _, name, k in rows}
    assert keys["Undo"] == "Ctrl+Z" and "Esc" in keys["Cancel"] and keys["Add Node…"] == "Tab"
    assert keys["Keyboard Shortcuts"] == "F1"
    dlg = window.show_shortcuts()
    text = dlg.text()
    assert "Ctrl+Enter" in text and "Middle-drag" in text and "Right-click" in text
    dlg.close()


def test_about_names_the_versions_and_the_device(window):
    text = window.about_text()
    for pkg in ("torch", "diffusers"):
        try:
            assert importlib.metadata.version(pkg) in text
        except importlib.metadata.PackageNotFoundError:
            assert "not installed" in text
    from editor.about import loom_version

    assert loom_version() != "unknown" and loom_version() in text
    assert "Device" in text
    window.show_about().close()


# (7) readable by default -----------------------------------------------------------------------

def test_workflows_open_at_a_readable_zoom(window, qtbot, isolated):
    from engine.api import DEFAULT_WORKFLOW

    small = isolated / "small.json"
    add(window, "primitive.int", 0, 0)
    add(window, "text.show", 300, 0)
    window.doc.graph.ui.pop("viewport", None)
    assert window.save_to(small)
    import json

    doc = json.loads(small.read_text())
    doc["ui"].pop("viewport", None)
    small.write_text(json.dumps(doc))
    assert window.load_file(small, remember=False)
    qtbot.wait(20)
    assert window.view.zoom == pytest.approx(1.0)  # fits: 100 %
    from editor.window import MainWindow
    from engine.api import Session

    w = MainWindow(session=Session(), output_dir=isolated / "out")
    w.confirm_close = lambda: "discard"
    qtbot.addWidget(w)
    w.resize(1280, 800)
    w.show()
    assert w.load_file(DEFAULT_WORKFLOW, remember=False)
    qtbot.wait(50)
    assert 0.8 <= w.view.zoom <= 1.0  # too big to fit: 80 %, and scroll bars
    assert w.view.horizontalScrollBar().isVisible()
    w.view.fit()  # Fit to View still shows everything, however small
    assert w.view.zoom < 0.8


def test_socket_tooltips_say_what_the_input_is_for(window):
    inv = add(window, "edtest.invert", 0, 0)
    pic = add(window, "edtest.picture", 0, 200)
    tip = window.node_item(inv).in_sockets["image"].toolTip()
    assert "the image to invert" in tip and "EDT_IMAGE" in tip and "must be connected" in tip
    assert "255 minus the image" in window.node_item(inv).out_sockets["image"].toolTip()
    assert "the picture to load" in window.node_item(pic).in_sockets["image"].toolTip()


def test_popups_stay_on_the_screen(window):
    from editor.search import on_screen

    area = window.screen().availableGeometry()
    size = QSize(320, 400)
    for want in (area.bottomRight() - QPoint(5, 5), QPoint(area.left(), area.bottom() - 3),
                 area.topLeft()):
        tl = on_screen(want, size, window.screen())
        assert area.contains(tl) and area.contains(tl + QPoint(size.width() - 1,
                                                               size.height() - 1))
    popup = window.open_search(QPointF(0, 0), QPointF(area.right() - 2, area.bottom() - 2),
                               None)
    assert area.contains(popup.frameGeometry().bottomRight())
    popup.close()


def test_a_long_title_is_not_cut_when_the_timing_shows(window):
    n = add(window, "primitive.int", 0, 0)
    item = window.node_item(n)
    window.scene.rename_node(n, "Seed for the second pass")
    assert item.shown_title() == "Seed for the second pass"
    item.set_run_state("done", 12.34)
    assert item.shown_title() == "Seed for the second pass"
    assert item.status_text() == "12.34s"


# (8) field widgets -------------------------------------------------------------------------------

def test_each_field_kind_is_one_widget_class_chosen_by_the_inputs_widget(window):
    from editor import field_widgets as fw

    g = add(window, "edtest.gradient", 0, 0)
    m = add(window, "edtest.mask", 300, 0)
    a = add(window, "math.arithmetic", 0, 300)
    t = add(window, "primitive.string", 300, 300)
    b = add(window, "primitive.bool", 600, 300)
    p = add(window, "edtest.picture", 600, 0)
    kinds = {(n, name): type(w) for n in (g, m, a, t, b, p)
             for name, w in window.node_item(n).widgets.items()}
    assert kinds[(g, "seed")] is fw.SeedField and kinds[(g, "width")] is fw.NumberField
    assert kinds[(m, "mask")] is fw.MaskField and kinds[(p, "image")] is fw.ImageField
    assert kinds[(a, "op")] is fw.ChoiceField and kinds[(t, "value")] is fw.MultilineField
    assert kinds[(b, "value")] is fw.BoolField


def test_clicks_land_on_the_zones_the_widget_paints(window, qtbot):
    """Hit-testing reads the same zones painting uses: a click in the middle of each zone
    does that zone's action, through real mouse events on the canvas."""
    g = add(window, "edtest.gradient", 0, 0)
    m = add(window, "edtest.mask", 0, 250)
    window.view.resetTransform()
    window.view.centerOn(120, 150)
    qtbot.wait(10)
    item = window.node_item(g)
    row = item.field_row("seed")
    rect = item.field_rect(row)
    zones = {z.name: z.rect for z in row.field.zones(rect)}
    assert set(zones) == {"rand", "dice", "dec", "inc", "body"}
    graph = window.doc.graph
    seed = graph.nodes[g].values["seed"]
    _click(window.view, item.mapToScene(zones["inc"].center()))
    assert graph.nodes[g].values["seed"] == seed + 1
    _click(window.view, item.mapToScene(zones["dec"].center()))
    assert graph.nodes[g].values["seed"] == seed
    _click(window.view, item.mapToScene(zones["dice"].center()))
    assert graph.nodes[g].values["seed"] != seed
    _click(window.view, item.mapToScene(zones["rand"].center()))
    assert graph.nodes[g].ui["randomize"] == {"seed": True}
    _click(window.view, item.mapToScene(zones["body"].center()))
    assert item.editor is not None  # the middle types a value
    item.close_editor()
    # the mask field's big button opens the mask editor
    mitem = window.node_item(m)
    mrow = mitem.field_row("mask")
    paint = mrow.field.zone_rect(mitem.field_rect(mrow), "paint")
    assert paint.height() >= 18 and paint.width() > 100  # not a 5 px glyph
    _click(window.view, mitem.mapToScene(paint.center()))
    assert window._mask_editor.node_id == m
    window._mask_editor.reject()
