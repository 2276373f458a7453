"""Shared fixtures and tiny node types for the editor tests (offscreen Qt, no torch).

The editor gets its registry and session injected: primitives plus the `edtest.*` nodes below
(a numpy image source, an image display, a slow cancellable node with previews, a failing one).
"""

from __future__ import annotations

import os
import threading
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["LOOM_NO_DIALOGS"] = "1"

import pytest  # noqa: E402

from engine.errors import NodeInputError  # noqa: E402
from engine.node import Input, Output, RunContext, node  # noqa: E402
from engine.registry import Registry  # noqa: E402
from engine.types import INT, STRING, TYPES  # noqa: E402

EDT_IMAGE = "EDT_IMAGE"
TYPES.register(EDT_IMAGE, "#64b5f6")

SLOW_STARTED = threading.Event()


@node("edtest.gradient", title="Gradient", category="edtest", version="1.0.0",
      outputs=[Output("image", EDT_IMAGE)])
class Gradient:
    """A numpy RGB gradient image."""

    width = Input(INT, default=32, min=1, max=512)
    height = Input(INT, default=16, min=1, max=512)
    seed = Input(INT, default=0, min=0, max=2**32 - 1, widget="seed")

    def run(self, ctx: RunContext):
        import numpy as np

        x = np.linspace(0, 255, self.width, dtype=np.float32)
        img = np.zeros((self.height, self.width, 3), np.uint8)
        img[..., 0] = x.astype(np.uint8)
        img[..., 2] = self.seed % 256
        return img


@node("edtest.show", title="Show Image", category="edtest", version="1.0.0", output_node=True)
class ShowImage:
    """Shows its input image in the editor."""

    image = Input(EDT_IMAGE)

    def run(self, ctx: RunContext):
        ctx.set_ui(images=[self.image])


@node("edtest.slow", title="Slow Steps", category="edtest", version="1.0.0", output_node=True,
      deterministic=False)
class Slow:
    """Takes `steps` steps of `delay` seconds, with a preview each step; cancellable."""

    steps = Input(INT, default=50, min=1, max=10000)
    delay = Input("FLOAT", default=0.05, min=0.0, max=5.0)

    def run(self, ctx: RunContext):
        import numpy as np

        SLOW_STARTED.set()
        for i in range(1, self.steps + 1):
            ctx.check_cancelled()
            time.sleep(self.delay)
            ctx.progress(i, self.steps, np.full((8, 8, 3), i % 256, np.uint8))
        ctx.set_ui(text=f"{self.steps} steps")


@node("edtest.fail", title="Fails", category="edtest", version="1.0.0", output_node=True)
class Fail:
    """Always fails, naming its input."""

    message = Input(STRING, default="boom")

    def run(self, ctx: RunContext):
        raise NodeInputError("message", self.message)


@node("edtest.maybe_fail", title="Maybe Fails", category="edtest", version="1.0.0",
      outputs=[Output("image", EDT_IMAGE, "a tiny image, when it does not fail")])
class MaybeFail:
    """Fails (naming its input `fail`) while `fail` is on; else gives a 4×4 image."""

    fail = Input("BOOLEAN", default=True, description="fail when on")

    def run(self, ctx: RunContext):
        import numpy as np

        if self.fail:
            raise NodeInputError("fail", "told to fail")
        return np.full((4, 4, 3), 7, np.uint8)


@node("edtest.invert", title="Invert Image", category="edtest", version="1.0.0",
      outputs=[Output("image", EDT_IMAGE, "255 minus the image")])
class InvertImage:
    """255 minus the image (something to bypass)."""

    image = Input(EDT_IMAGE, description="the image to invert")

    def run(self, ctx: RunContext):
        return 255 - self.image


@node("edtest.sleepy", title="Load Slowly", category="loaders", version="1.0.0",
      outputs=[Output("image", EDT_IMAGE)], deterministic=False)
class Sleepy:
    """Takes `seconds` without reporting any step (as a model loads), cancellable."""

    seconds = Input("FLOAT", default=1.5, min=0.0, max=30.0)

    def run(self, ctx: RunContext):
        import numpy as np

        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            ctx.check_cancelled()
            time.sleep(0.02)
        return np.zeros((4, 4, 3), np.uint8)


@node("edtest.picture", title="Load Picture", category="edtest", version="1.0.0",
      outputs=[Output("image", EDT_IMAGE)])
class Picture:
    """An image file (a Load Image stand-in: its field is an image path)."""

    image = Input(STRING, default="", widget="image", path=True,
                  description="the picture to load")

    def run(self, ctx: RunContext):
        import numpy as np

        return np.zeros((4, 4, 3), np.uint8)


def make_registry() -> Registry:
    import sys

    import nodes.primitives

    r = Registry()
    r.register_module(nodes.primitives)
    r.register_module(sys.modules[__name__])
    return r


@pytest.fixture
def registry() -> Registry:
    return make_registry()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Recovery files, settings, outputs and the user's data folder in the test's own folder."""
    monkeypatch.setenv("LOOM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LOOM_WORKFLOWS_DIR", raising=False)
    monkeypatch.setenv("LOOM_RECOVERY_DIR", str(tmp_path / "recovery"))
    monkeypatch.setenv("LOOM_SETTINGS_FILE", str(tmp_path / "settings.ini"))
    monkeypatch.setenv("LOOM_OUTPUT_DIR", str(tmp_path / "out"))
    return tmp_path


@pytest.fixture
def make_window(qtbot, registry, isolated):
    from editor.window import MainWindow
    from engine.api import Session

    made = []

    def make():
        w = MainWindow(session=Session(registry), output_dir=isolated / "out")
        w.confirm_close = lambda: "discard"
        qtbot.addWidget(w)
        w.resize(1200, 800)
        w.show()
        made.append(w)
        return w

    yield make
    for w in made:
        if w.runner is not None and w.runner.busy:
            w.runner.cancel()
            w.runner.handle.result(timeout=10)


@pytest.fixture
def window(make_window):
    return make_window()


def add(window, type_id: str, x: float = 0, y: float = 0) -> str:
    from PySide6.QtCore import QPointF

    return window.scene.add_node(type_id, QPointF(x, y))


def wire(window, src: str, output: str, dst: str, input: str) -> None:
    s = window.scene
    why = s.connect_sockets(s.node_items[src].out_sockets[output],
                            s.node_items[dst].in_sockets[input])
    assert why is None, why


def snapshot(window) -> str:
    """The graph as its saved document, minus runtime-only entries."""
    import json

    from engine.workflow import graph_to_document

    doc = graph_to_document(window.doc.graph)
    doc["ui"].pop("viewport", None)
    return json.dumps(doc, sort_keys=True)


@node("edtest.mask", title="Mask File", category="edtest", version="1.0.0",
      outputs=[Output("path", STRING)])
class MaskFile:
    """A mask painted in the editor (its path)."""

    mask = Input(STRING, default="", widget="mask", path=True)

    def run(self, ctx: RunContext):
        return self.mask
