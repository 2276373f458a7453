"""The editor's canvas and undo: build a graph through user-facing actions, undo and redo every
kind of edit, save/load, copy/paste between windows (offscreen Qt)."""

from __future__ import annotations

import json
import os

import pytest
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

from tests.test_editor_support import add, snapshot, wire

pytest_plugins = ["tests.test_editor_support"]  # fixtures: window, make_window, ...


def _mouse(view, kind, scene_pos: QPointF, buttons=Qt.MouseButton.LeftButton,
           button=Qt.MouseButton.LeftButton):
    """Send a real mouse event to the canvas at a scene position."""
    vp = view.viewport()
    local = QPointF(view.mapFromScene(scene_pos))
    ev = QMouseEvent(kind, local, QPointF(vp.mapToGlobal(local.toPoint())), button,
                     buttons if kind != QEvent.Type.MouseButtonRelease else Qt.MouseButton.NoButton,
                     Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(vp, ev)


def drag(view, a: QPointF, b: QPointF, steps: int = 5) -> None:
    _mouse(view, QEvent.Type.MouseButtonPress, a)
    for k in range(1, steps + 1):
        _mouse(view, QEvent.Type.MouseMove, a + (b - a) * (k / steps))
    _mouse(view, QEvent.Type.MouseButtonRelease, b)


def test_build_graph_through_scene_actions(window):
    a = add(window, "primitive.int", 0, 0)
    b = add(window, "math.arithmetic", 300, 0)
    show = add(window, "text.show", 600, 0)
    assert set(window.doc.graph.nodes) == {a, b, show}
    assert set(window.scene.node_items) == {a, b, show}
    wire(window, a, "value", b, "a")
    wire(window, b, "result", show, "value")
    assert window.doc.graph.link(b, "a").node == a
    assert (b, "a") in window.scene.edge_items
    # type a value into a field's editor, as a user does
    editor = window.node_item(b).open_editor("b")
    editor.setText("2.5*2")
    editor.returnPressed.emit()
    assert window.doc.graph.nodes[b].values["b"] == 5.0
    assert window.node_item(b).editor is None
    # connecting an input hides its field: the row shows the label only
    assert window.node_item(b).linked("a")
    # an incompatible connection is refused with a reason, and nothing changes
    count = window.doc.undo.count()
    s = window.scene
    why = s.connect_sockets(s.node_items[show].in_sockets["value"],
                            s.node_items[a].in_sockets["value"])
    assert why
    assert window.doc.undo.count() == count


def test_wire_drag_with_the_mouse_and_compatible_sockets_light_up(window, qtbot):
    a = add(window, "primitive.int", 0, 0)
    b = add(window, "primitive.string", 400, 0)
    c = add(window, "math.arithmetic", 400, 200)
    window.view.resetTransform()
    window.view.centerOn(300, 100)
    qtbot.wait(10)
    out = window.node_item(a).out_sockets["value"]
    target = window.node_item(c).in_sockets["b"]
    scene = window.scene
    _mouse(window.view, QEvent.Type.MouseButtonPress, out.scenePos())
    _mouse(window.view, QEvent.Type.MouseMove, out.scenePos() + QPointF(30, 30))
    # INT feeds FLOAT inputs but not STRING ones
    assert target.highlight == 1
    assert window.node_item(b).in_sockets["value"].highlight == -1
    _mouse(window.view, QEvent.Type.MouseMove, target.scenePos())
    _mouse(window.view, QEvent.Type.MouseButtonRelease, target.scenePos())
    assert scene.graph.link(c, "b").node == a
    assert target.highlight == 0
    # pick the link up by its input end and drop it on empty canvas: disconnected
    drag(window.view, target.scenePos(), target.scenePos() + QPointF(-150, 250))
    assert scene.graph.link(c, "b") is None
    window.doc.undo.undo()
    assert scene.graph.link(c, "b").node == a


def test_drag_moves_nodes_as_one_undo_step(window, qtbot):
    a = add(window, "primitive.int", 0, 0)
    window.view.resetTransform()
    window.view.centerOn(100, 50)
    item = window.node_item(a)
    start = window.doc.undo.count()
    drag(window.view, item.scenePos() + QPointF(60, 10), item.scenePos() + QPointF(160, 90),
         steps=8)
    assert window.doc.graph.nodes[a].ui["pos"] == [100.0, 80.0]
    assert window.doc.undo.count() == start + 1
    window.doc.undo.undo()
    assert window.doc.graph.nodes[a].ui["pos"] == [0, 0]
    assert item.pos() == QPointF(0, 0)


def test_scrubbing_a_number_is_one_undo_step(window):
    a = add(window, "edtest.gradient", 0, 0)
    window.view.resetTransform()
    window.view.centerOn(100, 50)
    item = window.node_item(a)
    row = next(r for r in item.rows if r.kind == "field" and r.input.name == "width")
    rect = item.field_rect(row)
    p = item.mapToScene(rect.center())
    start = window.doc.undo.count()
    drag(window.view, p, p + QPointF(60, 0), steps=6)
    width = window.doc.graph.nodes[a].values["width"]
    assert width > 32
    assert window.doc.undo.count() == start + 1
    window.doc.undo.undo()
    assert window.doc.graph.nodes[a].values["width"] == 32


def test_undo_redo_every_kind_of_edit(window):
    doc = window.doc
    states = [snapshot(window)]

    def step(fn):
        fn()
        states.append(snapshot(window))

    ids = {}
    step(lambda: ids.setdefault("a", add(window, "primitive.int", 0, 0)))
    step(lambda: ids.setdefault("b", add(window, "math.arithmetic", 300, 0)))
    step(lambda: ids.setdefault("s", add(window, "text.show", 600, 0)))
    step(lambda: wire(window, ids["a"], "value", ids["b"], "a"))
    step(lambda: wire(window, ids["b"], "result", ids["s"], "value"))
    step(lambda: window.scene.set_value(ids["b"], "op", "multiply"))
    step(lambda: window.scene.set_value(ids["a"], "value", 7))

    def move():
        before = {n: QPointF(i.pos()) for n, i in window.scene.node_items.items()}
        window.node_item(ids["a"]).setPos(40, 120)
        window.scene.commit_moves(before, [])
    step(move)
    step(lambda: window.scene.toggle_collapsed([ids["b"]]))
    step(lambda: window.scene.set_color([ids["s"]], "#4a3a3a"))

    def group():
        window.scene.clearSelection()
        window.node_item(ids["a"]).setSelected(True)
        window.scene.group_selected("Inputs")
    step(group)
    step(lambda: window.scene.rename_group(window.scene.group_items[0], "Numbers"))
    step(lambda: window.scene.disconnect_input(ids["s"], "value"))

    def paste():
        window.scene.clearSelection()
        window.node_item(ids["a"]).setSelected(True)
        window.node_item(ids["b"]).setSelected(True)
        assert len(window.scene.duplicate_selected()) == 2
    step(paste)

    def delete():
        window.scene.clearSelection()
        window.node_item(ids["b"]).setSelected(True)
        window.scene.delete_selected()
    step(delete)
    step(lambda: window.scene.toggle_randomize(ids["a"], "value"))
    assert len(set(states)) == len(states), "every step changed the graph"
    assert doc.undo.count() == len(states) - 1
    # back to the start, checking every intermediate state, then forward again
    for expected in reversed(states[:-1]):
        doc.undo.undo()
        assert snapshot(window) == expected
    assert not window.scene.node_items and not window.scene.edge_items
    assert not doc.modified
    for expected in states[1:]:
        doc.undo.redo()
        assert snapshot(window) == expected
    # the scene mirrors the graph exactly
    assert set(window.scene.node_items) == set(doc.graph.nodes)
    assert set(window.scene.edge_items) == set(doc.graph.links)
    assert [g.title for g in window.scene.group_items] == ["Numbers"]
    assert window.node_item(ids["a"]).pos() == QPointF(40, 120)


def test_history_panel_lists_the_steps(window):
    add(window, "primitive.int")
    add(window, "primitive.float", 0, 100)
    model = window.history.model()
    assert model.rowCount() == 3  # "Start" + two steps
    assert "Integer" in model.index(1, 0).data()


def test_save_load_round_trip(make_window, isolated):
    w1 = make_window()
    a = add(w1, "primitive.int", 10, 20)
    b = add(w1, "math.arithmetic", 300, 40)
    wire(w1, a, "value", b, "a")
    w1.scene.set_value(b, "b", 1.5)
    w1.scene.group_selected("Everything")
    assert w1.doc.modified and "•" in w1.windowTitle()
    path = isolated / "wf.json"
    assert w1.save_to(path)
    assert not w1.doc.modified and "•" not in w1.windowTitle()
    assert "wf.json" in w1.windowTitle()
    w2 = make_window()
    assert w2.load_file(path)
    assert snapshot(w2) == snapshot(w1)
    assert json.loads(path.read_text())["ui"]["viewport"]["zoom"] > 0
    assert str(path.resolve()) in w2.recent_files()
    # a document opened from a .png with an embedded workflow
    from tests.support.png import png_bytes, text

    png = isolated / "result.png"
    png.write_bytes(png_bytes([text("workflow", path.read_text())]))
    w3 = make_window()
    assert w3.load_file(png)
    assert set(w3.doc.graph.nodes) == {a, b}


def test_a_failed_save_keeps_the_old_file_and_says_why(window, isolated, monkeypatch):
    path = isolated / "keep.json"
    add(window, "primitive.int")
    assert window.save_to(path)
    before = path.read_text()
    add(window, "primitive.float", 0, 100)

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("engine.workflow.os.replace", broken_replace)
    assert not window.save_to(path)
    assert path.read_text() == before
    assert "No space left" in window.status_label.text()
    assert window.doc.modified
    assert [p.name for p in isolated.iterdir() if p.name.startswith(".keep")] == []


def test_copy_paste_between_two_windows(make_window):
    w1, w2 = make_window(), make_window()
    a = add(w1, "primitive.int", 0, 0)
    b = add(w1, "math.arithmetic", 300, 0)
    wire(w1, a, "value", b, "a")
    w1.scene.set_value(a, "value", 42)
    w1.select_all()
    assert w1.copy()
    add(w2, "primitive.int", 0, 0)  # takes id "int": the pasted one gets a new id
    ids = w2.paste()
    assert len(ids) == 2
    g = w2.doc.graph
    new_int = next(i for i in ids if g.nodes[i].type == "primitive.int")
    new_ar = next(i for i in ids if g.nodes[i].type == "math.arithmetic")
    assert new_int != a and g.nodes[new_int].values["value"] == 42
    assert g.link(new_ar, "a").node == new_int
    assert w2.doc.undo.count() == 2  # the add, and the paste as one step
    w2.doc.undo.undo()
    assert set(g.nodes) == {"int"}
    # junk on the clipboard pastes nothing
    QApplication.clipboard().setText("not a workflow {")
    assert w2.paste() == []


def test_cut_removes_and_paste_restores(window):
    a = add(window, "primitive.float", 0, 0)
    window.select_all()
    window.cut()
    assert a not in window.doc.graph.nodes
    ids = window.paste()
    assert len(ids) == 1 and window.doc.graph.nodes[ids[0]].type == "primitive.float"


def test_drop_a_wire_on_empty_canvas_offers_compatible_nodes(window, qtbot):
    a = add(window, "edtest.gradient", 0, 0)
    scene = window.scene
    opened = []
    scene.search_requested.connect(lambda p, s, o: opened.append(window._search))
    out = window.node_item(a).out_sockets["image"]
    scene.begin_wire(out, out.scenePos())
    scene.end_wire(QPointF(700, 400), QPointF(100, 100))
    popup = opened[0]
    titles = [popup.list.item(i).data(Qt.ItemDataRole.UserRole)
              for i in range(popup.list.count())]
    assert "edtest.show" in titles and "primitive.int" not in titles
    popup.edit.setText("show")
    count = window.doc.undo.count()
    popup._activate(popup.list.item(0))
    new = next(n for n in window.doc.graph.nodes if n != a)
    assert window.doc.graph.link(new, "image").node == a
    assert window.doc.undo.count() == count + 1
    window.doc.undo.undo()
    assert list(window.doc.graph.nodes) == [a]


def test_node_search_matches_words(registry):
    from editor.search import matching_specs

    ids = [s.type_id for s in matching_specs(registry, "join text")]
    assert ids == ["text.join"]
    assert matching_specs(registry, "int")[0].type_id == "primitive.int"


def test_fields_follow_metadata(window):
    from editor import fields

    g = add(window, "edtest.gradient")
    spec = window.doc.registry.get("edtest.gradient")
    assert fields.kind_of(spec.inputs["seed"]) == "seed"
    assert fields.kind_of(window.doc.registry.get("math.arithmetic").inputs["op"]) == "choice"
    assert fields.kind_of(window.doc.registry.get("primitive.string").inputs["value"]) == \
        "multiline"
    # values are clamped to the declared range; wrong types are refused
    assert window.scene.set_value(g, "width", 100000)
    assert window.doc.graph.nodes[g].values["width"] == 512
    assert not window.scene.set_value(g, "width", "wide")
    # the dice gives a new seed; "randomize after run" is a per-input toggle
    old = window.doc.graph.nodes[g].values["seed"]
    window.scene.randomize_seed(g, "seed")
    assert window.doc.graph.nodes[g].values["seed"] != old
    window.scene.toggle_randomize(g, "seed")
    assert window.doc.graph.nodes[g].ui["randomize"] == {"seed": True}


def test_collapsed_nodes_keep_their_edges(window):
    a = add(window, "primitive.int", 0, 0)
    b = add(window, "math.arithmetic", 300, 0)
    wire(window, a, "value", b, "a")
    window.scene.toggle_collapsed([b])
    item = window.node_item(b)
    assert item.collapsed and item.height == pytest.approx(28.0)
    edge = window.scene.edge_items[(b, "a")]
    assert edge.path().pointAtPercent(1.0).y() == pytest.approx(item.scenePos().y() + 14)


def test_view_zoom_is_clamped_and_fit_shows_everything(window):
    for i in range(5):
        add(window, "primitive.int", i * 800, i * 500)
    window.view.set_zoom(100)
    assert window.view.zoom == pytest.approx(3.0)
    window.view.set_zoom(0.0001)
    assert window.view.zoom == pytest.approx(0.1)
    window.view.fit()
    visible = window.view.mapToScene(window.view.viewport().rect()).boundingRect()
    for item in window.scene.node_items.values():
        assert visible.contains(item.sceneBoundingRect())


def test_dropping_a_workflow_file_on_the_window_opens_it(make_window, isolated):
    from PySide6.QtCore import QMimeData, QPointF, QUrl
    from PySide6.QtGui import QDropEvent

    w1 = make_window()
    add(w1, "primitive.int", 10, 20)
    path = isolated / "dropped.json"
    assert w1.save_to(path)
    w2 = make_window()
    w2.confirm_close = lambda: "discard"
    add(w2, "primitive.float", 0, 0)  # unsaved work: the drop asks first (answered: discard)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    w2.dropEvent(event)
    assert snapshot(w2) == snapshot(w1)
    assert "dropped.json" in w2.windowTitle()
    # a file of another kind is ignored, the document stays
    other = isolated / "notes.txt"
    other.write_text("hello")
    mime2 = QMimeData()
    mime2.setUrls([QUrl.fromLocalFile(str(other))])
    w2.dropEvent(QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime2,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier))
    assert snapshot(w2) == snapshot(w1)


def test_an_ignored_seed_is_greyed_out_with_the_reason(qtbot, isolated, tmp_path):
    """Latent Noise continues a VAE Encode's random stream when `after` is connected: its own
    seed then has no effect, and the editor shows that instead of hiding it."""
    from pathlib import Path

    from editor.window import MainWindow
    from engine.api import Session, ignored_values

    window = MainWindow(session=Session(), output_dir=isolated / "out")
    window.confirm_close = lambda: "discard"
    qtbot.addWidget(window)
    window.resize(1200, 800)
    window.show()
    ex = Path(__file__).resolve().parent.parent / "resources" / "workflows" / "examples"
    assert window.load_file(ex / "sd15_img2img.json", remember=False)
    item = window.scene.node_items["noise"]
    assert item.ignored() == {"seed": "input 'after' is connected"}
    QApplication.processEvents()  # the deferred fit-to-view after opening
    window.view.resetTransform()  # 100 %: fields are drawn
    window.view.centerOn(item)
    window.view.viewport().repaint()
    window.grab().save(str(Path(os.environ.get("LOOM_SHOT_DIR", tmp_path)) / "ignored.png"))
    assert "seed is ignored: input 'after' is connected" in item.toolTip()  # set by painting
    assert ignored_values(window.doc.graph, Session().registry, ["noise.seed=3"]) == [
        "node 'noise' (latents.noise) input 'seed' is ignored: input 'after' is connected"]
    window.doc.graph.disconnect("noise", "after")
    assert item.ignored() == {}
    # VAE Encode's seed in mode 'mean'
    enc = window.scene.node_items["encode"]
    window.doc.graph.set_value("encode", "mode", "mean")
    assert enc.ignored() == {"seed": "'mode' is 'mean'"}


def test_a_hand_edited_position_that_is_not_a_number_is_ignored(window, tmp_path):
    doc = {"schema_version": 1, "nodes": {
        "a": {"type": "primitive.int", "inputs": {"value": 1}, "ui": {"pos": ["x", 1]}},
        "b": {"type": "primitive.int", "inputs": {"value": 2}, "ui": {"pos": [1e309, None]}},
        "c": {"type": "primitive.int", "inputs": {"value": 3}, "ui": {"pos": [40, 60]}}}}
    p = tmp_path / "odd.json"
    p.write_text(json.dumps(doc).replace("Infinity", "1e999"))
    assert window.load_file(p, remember=False)
    items = window.scene.node_items
    assert set(items) == {"a", "b", "c"} and all(i.rows for i in items.values())
    assert (items["c"].x(), items["c"].y()) == (40, 60)
