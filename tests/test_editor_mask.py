"""The mask editor: paint, erase, invert, clear; saved as a PNG beside the workflow and
referenced by the node (undoable)."""

from __future__ import annotations

from PySide6.QtCore import QPointF

from tests.test_editor_support import add

pytest_plugins = ["tests.test_editor_support"]  # fixtures: window, make_window, ...


def test_paint_invert_and_save_a_mask(window, isolated):
    from PySide6.QtGui import QImage

    from editor.mask_editor import MaskEditor

    wf = isolated / "wf.json"
    m = add(window, "edtest.mask")
    assert window.save_to(wf)
    dlg = MaskEditor(window, window.scene, m, "mask")
    c = dlg.canvas
    assert (c.mask.width(), c.mask.height()) == (512, 512)
    dlg.size_slider.setValue(40)
    c.stroke([QPointF(100, 100), QPointF(200, 100)])
    assert c.mask.pixelColor(150, 100).value() == 255
    assert c.mask.pixelColor(150, 300).value() == 0
    c.stroke([QPointF(150, 100)], erase=True)
    assert c.mask.pixelColor(150, 100).value() == 0
    c.invert()
    assert c.mask.pixelColor(150, 300).value() == 255
    path = dlg.save()
    assert path.parent == isolated / "masks"
    value = window.doc.graph.nodes[m].values["mask"]
    assert value == "masks/wf_mask_mask.png"
    saved = QImage(str(isolated / value))
    assert saved.pixelColor(150, 300).value() == 255 and saved.pixelColor(110, 100).value() == 0
    # reopening edits the saved mask; clear then save; undo gives the old reference back
    dlg2 = MaskEditor(window, window.scene, m, "mask")
    assert dlg2.canvas.mask.pixelColor(150, 300).value() == 255
    dlg2.canvas.clear()
    assert dlg2.canvas.mask.pixelColor(150, 300).value() == 0
    window.doc.undo.undo()
    assert window.doc.graph.nodes[m].values["mask"] == ""


def test_mask_field_opens_the_editor(window, qtbot):
    m = add(window, "edtest.mask")
    window.scene.edit_mask(m, window.doc.registry.get("edtest.mask").inputs["mask"])
    dlg = window._mask_editor
    assert dlg.isVisible()
    dlg.reject()
