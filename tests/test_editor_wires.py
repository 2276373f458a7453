"""The type rules of Loom's own sampling nodes, met where a user meets them: drawing a wire on
the canvas (offscreen Qt, the full node registry; nothing runs, so no torch work)."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QEvent, QPointF

from tests.test_editor import _mouse
from tests.test_editor_support import add

pytest_plugins = ["tests.test_editor_support"]  # fixtures: window, make_window, ...

REFUSED = ("node 'sampler' (sampling.sampler) input 'denoiser' takes GUIDED_DENOISER, "
           "not DENOISER from 'unet_step.denoiser'")


@pytest.fixture
def registry():
    """Every node type Loom ships (overrides the editor tests' small registry)."""
    from engine.registry import default_registry

    return default_registry()


def draw_wire(window, out, inp) -> dict:
    """Press on an output socket, move onto an input socket and let go, as a user does.
    Returns how the input socket was highlighted while the wire hovered over it."""
    view = window.view
    _mouse(view, QEvent.Type.MouseButtonPress, out.scenePos())
    _mouse(view, QEvent.Type.MouseMove, out.scenePos() + QPointF(30, 30))
    _mouse(view, QEvent.Type.MouseMove, inp.scenePos())
    seen = {"highlight": inp.highlight}
    _mouse(view, QEvent.Type.MouseButtonRelease, inp.scenePos())
    return seen


def test_a_bare_denoiser_cannot_feed_the_sampler_but_a_guided_one_can(window, qtbot):
    unet = add(window, "sampling.unet_step", 0, 0)
    cfg = add(window, "sampling.cfg_combine", 300, 200)
    sampler = add(window, "sampling.sampler", 600, 0)
    assert (unet, cfg, sampler) == ("unet_step", "cfg_combine", "sampler")
    window.view.resetTransform()
    window.view.centerOn(400, 150)
    qtbot.wait(10)
    s, g = window.scene, window.doc.graph
    unet_out = s.node_items[unet].out_sockets["denoiser"]
    sampler_in = s.node_items[sampler].in_sockets["denoiser"]
    start = window.doc.undo.count()

    # UNet Step -> Sampler: refused while drawing (the socket is not lit) and on release,
    # with the reason naming both types in the status bar
    seen = draw_wire(window, unet_out, sampler_in)
    assert seen["highlight"] == -1
    assert g.link(sampler, "denoiser") is None
    assert window.status_label.text() == f"Cannot connect: {REFUSED}"
    assert window.doc.undo.count() == start
    assert s._wire is None  # the dashed wire is gone
    # the same through the scene's connect action (menus, drop-on-node)
    assert s.connect_sockets(unet_out, sampler_in) == REFUSED
    assert g.link(sampler, "denoiser") is None and window.doc.undo.count() == start

    # UNet Step -> CFG Combine -> Sampler: both wires are drawn, each one undo step
    seen = draw_wire(window, unet_out, s.node_items[cfg].in_sockets["denoiser"])
    assert seen["highlight"] == 1
    assert g.link(cfg, "denoiser").node == unet
    seen = draw_wire(window, s.node_items[cfg].out_sockets["denoiser"], sampler_in)
    assert seen["highlight"] == 1
    assert (g.link(sampler, "denoiser").node, g.link(sampler, "denoiser").output) == \
        (cfg, "denoiser")
    assert window.doc.undo.count() == start + 2
    # and the guided denoiser, in turn, is not a bare one: CFG Combine's output cannot be
    # guided again
    why = s.connect_sockets(s.node_items[cfg].out_sockets["denoiser"],
                            s.node_items[add(window, "sampling.cfg_combine", 300, 500)]
                            .in_sockets["denoiser"])
    assert why is not None and "takes DENOISER, not GUIDED_DENOISER" in why
