"""Start the editor: show the window first, then load the node registry and the workflow
(node discovery imports no torch; running a graph imports it on the worker thread)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

_T0 = time.perf_counter()


def _registry():
    """Loom's node types and the plugins' (engine.plugins; built-in only with --safe). Plugins
    that fail to load are in `registry.report.errors`, which the Plugins panel lists."""
    from engine.plugins import load_registry

    return load_registry()


def offer_recovery(window: Any, answer: str | None = None) -> bool:
    """If a crashed session left a recovery file, offer to restore it (the newest one).
    `answer` ("accept"/"discard") or $LOOM_RECOVERY skips the question. True if restored."""
    from PySide6.QtWidgets import QMessageBox

    from editor.document import find_orphaned_recoveries, read_recovery

    found = find_orphaned_recoveries()
    if not found:
        return False
    newest = found[0]
    try:
        data = read_recovery(newest)
    except (OSError, ValueError, Exception):  # noqa: BLE001 - a broken recovery is dropped
        data = None
    answer = answer or os.environ.get("LOOM_RECOVERY")
    if data is not None and answer is None:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(data.get("saved_at", 0)))
        name = Path(data["path"]).name if data.get("path") else "an unsaved workflow"
        r = QMessageBox.question(window, "Restore unsaved work?",
                                 f"Loom did not close normally. Restore the changes to {name} "
                                 f"from {when}?",
                                 QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
        answer = "accept" if r == QMessageBox.StandardButton.Yes else "discard"
    restored = False
    if data is not None and answer == "accept":
        try:
            path = Path(data["path"]) if data.get("path") else None
            source = Path(data["source"]) if data.get("source") else None
            window.doc.load_text(json.dumps(data["workflow"]), path, modified=True,
                                 source=source)
            window.doc.write_recovery()
            window.say(f"Restored unsaved work from {newest.name}")
            restored = True
        except Exception as exc:  # noqa: BLE001
            window.say(f"Could not restore: {exc}")
    for p in found:
        for f in (p, Path(str(p) + ".lock")):
            try:
                f.unlink()
            except OSError:
                pass
    return restored


def clean_stale_temp_files(window: Any, file: str | None = None) -> None:
    """Remove temp files that killed Loom processes left (engine/files.py) where this editor
    writes: the output folder, the recovery folder, and the folders of the workflow being
    opened and of the recent files. Other files are never touched."""
    from editor.document import recovery_dir
    from engine.files import clean_stale_temp_files as clean

    folders = {Path(window.output_dir), recovery_dir()}
    for f in ([file] if file else []) + list(window.recent_files()):
        folders.add(Path(f).parent)
    for folder in folders:
        try:
            clean(folder)
        except OSError:
            pass


def _exec(app: Any) -> int:
    """Runs Qt's event loop as an asyncio loop (qasync), so runs are awaited, not polled."""
    try:
        import asyncio

        import qasync
    except ImportError:  # the editor still works on plain Qt signals
        return app.exec()
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    quit_event = asyncio.Event()
    app.aboutToQuit.connect(quit_event.set)
    with loop:
        try:
            loop.run_until_complete(quit_event.wait())
        except RuntimeError:  # Qt's loop ended (app.exit) before the coroutine saw it
            pass
    asyncio.set_event_loop(None)
    return 0


def main(file: str | None = None, screenshot: str | None = None, session: Any = None,
         argv: list[str] | None = None, render: bool = False) -> int:
    os.environ.setdefault("QT_AUTO_SCREEN_SCALE_FACTOR", "1")
    if screenshot and not os.environ.get("QT_QPA_PLATFORM") and sys.platform.startswith("linux") \
            and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from editor import theme
    from editor.window import MainWindow

    app = QApplication.instance() or QApplication(argv or sys.argv[:1])
    app.setApplicationName("Loom")
    app.setOrganizationName("Loom")
    theme.apply(app)
    window = MainWindow()
    if screenshot:  # the README picture: wide enough for the default workflow at 80 % or more
        window.resize(1920, 1080)
    status = {"code": 0}

    def report_shown() -> None:
        if os.environ.get("LOOM_STARTUP_REPORT"):
            print(f"loom-window-shown {time.time():.6f} {time.perf_counter() - _T0:.4f}",
                  file=sys.stderr, flush=True)

    window.shown.connect(report_shown)
    window.show()

    def finish_startup() -> None:
        from engine.api import DEFAULT_WORKFLOW, Session

        try:
            s = session or Session(_registry())
        except Exception as exc:  # noqa: BLE001
            window.say(f"Cannot load the node types: {exc}")
            status["code"] = 1
            if screenshot:
                app.exit(1)
            return
        window.attach(s)
        clean_stale_temp_files(window, file)
        restored = False if (file or screenshot) else offer_recovery(window)
        if file:
            if not window.load_file(file):
                status["code"] = 1
        elif not restored and DEFAULT_WORKFLOW.is_file():
            window.load_file(DEFAULT_WORKFLOW, remember=False)
        elif not restored:
            window.say("No default workflow found — Tab or double-click to add nodes")
        window.ready.emit()
        if screenshot:
            if render and window.run():
                window.runner.finished.connect(lambda _r: QTimer.singleShot(400,
                                                                            take_screenshot))
            else:
                QTimer.singleShot(400, take_screenshot)

    def take_screenshot() -> None:
        from editor.document import image_bytes
        from engine.files import write_atomic

        try:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(screenshot, image_bytes(window.grab().toImage(), "PNG"))
        except (OSError, ValueError) as exc:
            print(f"could not write {screenshot}: {exc}", file=sys.stderr)
            status["code"] = 1
        window.doc.discard_recovery()
        window.doc.undo.setClean()
        window.close()
        app.exit(status["code"])

    QTimer.singleShot(0, finish_startup)
    code = _exec(app)
    if window.runner is not None and window.runner.busy:
        window.runner.cancel()
    return status["code"] if screenshot else code
