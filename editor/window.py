"""The main window: canvas, panels, menus, files, running, autosave and recovery."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QMimeData, QPointF, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QGuiApplication,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QGraphicsScene,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QToolButton,
    QUndoView,
    QWidget,
)

from editor.document import Document
from editor.items import NodeItem, SocketItem, to_qimage
from editor.panels import ImageViewer, ProblemsPanel, Shown
from editor.scene import CLIPBOARD_MIME, GraphScene
from editor.search import NodeSearch
from editor.view import GraphView
from engine.errors import LoomError, ValidationError
from engine.validate import problems as find_problems

MAX_RECENT = 10
WORKFLOW_FILTER = "Loom workflows (*.json *.png);;JSON (*.json);;PNG with workflow (*.png)"


def settings() -> QSettings:
    path = os.environ.get("LOOM_SETTINGS_FILE")
    if path:
        return QSettings(path, QSettings.Format.IniFormat)
    return QSettings("Loom", "Loom")


class MainWindow(QMainWindow):
    shown = Signal()
    ready = Signal()
    """The session is attached and the first graph is drawn."""

    def __init__(self, session: Any = None, output_dir: str | Path | None = None):
        super().__init__()
        self.setWindowTitle("Loom")
        self.resize(1480, 900)
        self.setAcceptDrops(True)
        self.session = None
        self.doc: Document | None = None
        self.scene: GraphScene | None = None
        self.runner = None
        self.output_dir = Path(output_dir or os.environ.get("LOOM_OUTPUT_DIR")
                               or Path.cwd() / "out")
        self.confirm_close: Callable[[], str] | None = None
        """Tests set this: returns "save", "discard" or "cancel" instead of asking."""
        self._run_total = 0
        self._run_done: set[str] = set()
        self._run_fraction = 0.0
        self._last_result = None
        self._search: NodeSearch | None = None
        self.view = GraphView(QGraphicsScene(self))
        self.setCentralWidget(self.view)
        self._build_panels()
        self._build_actions()
        self._build_status()
        self._problems_timer = QTimer(self)
        self._problems_timer.setSingleShot(True)
        self._problems_timer.setInterval(250)
        self._problems_timer.timeout.connect(self.refresh_problems)
        self._set_enabled(False)
        if session is not None:
            self.attach(session)

    # construction -------------------------------------------------------------------------
    def _build_panels(self) -> None:
        self.viewer = ImageViewer()
        self.viewer_dock = self._dock("Image", self.viewer, Qt.DockWidgetArea.RightDockWidgetArea)
        self.problems = ProblemsPanel()
        self.problems_dock = self._dock("Problems", self.problems,
                                        Qt.DockWidgetArea.RightDockWidgetArea)
        self.history = QUndoView()
        self.history.setEmptyLabel("Start")
        self.history_dock = self._dock("History", self.history,
                                       Qt.DockWidgetArea.RightDockWidgetArea)
        self.tabifyDockWidget(self.problems_dock, self.history_dock)
        self.problems_dock.raise_()
        self.resizeDocks([self.viewer_dock], [360], Qt.Orientation.Horizontal)
        self.resizeDocks([self.viewer_dock, self.problems_dock], [560, 240],
                         Qt.Orientation.Vertical)
        self.problems.node_clicked.connect(self.focus_node)

    def _dock(self, title: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(title.lower() + "Dock")
        dock.setWidget(widget)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QDockWidget.DockWidgetFeature.DockWidgetClosable
                         | QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        self.addDockWidget(area, dock)
        return dock

    def _act(self, text: str, slot: Callable, shortcut: Any = None, tip: str = "") -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            if isinstance(shortcut, (list, tuple)):
                a.setShortcuts([QKeySequence(s) for s in shortcut])
            else:
                a.setShortcut(QKeySequence(shortcut))
        a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        if tip:
            a.setToolTip(tip)
            a.setStatusTip(tip)
        a.triggered.connect(lambda _checked=False: slot())
        self.addAction(a)
        return a

    def _build_actions(self) -> None:
        K = QKeySequence.StandardKey
        self.act_new = self._act("&New", self.new_file, K.New)
        self.act_open = self._act("&Open…", self.open_dialog, K.Open)
        self.act_save = self._act("&Save", self.save, K.Save)
        self.act_save_as = self._act("Save &As…", self.save_as_dialog, K.SaveAs)
        self.act_quit = self._act("&Quit", self.close, K.Quit)
        self.act_undo = self._act("&Undo", lambda: self.doc and self.doc.undo.undo(), K.Undo)
        self.act_redo = self._act("&Redo", lambda: self.doc and self.doc.undo.redo(),
                                  [QKeySequence(K.Redo), "Ctrl+Y"])
        self.act_cut = self._act("Cu&t", self.cut, K.Cut)
        self.act_copy = self._act("&Copy", self.copy, K.Copy)
        self.act_paste = self._act("&Paste", self.paste, K.Paste)
        self.act_duplicate = self._act("&Duplicate", lambda: self.scene.duplicate_selected(),
                                       "Ctrl+D")
        self.act_delete = self._act("De&lete", lambda: self.scene.delete_selected(),
                                    [QKeySequence(K.Delete), "Backspace"])
        self.act_select_all = self._act("Select &All", self.select_all, K.SelectAll)
        self.act_add = self._act("&Add Node…", self.open_search_at_center, None,
                                 "Search node types (Tab or double-click on the canvas)")
        self.act_collapse = self._act("Co&llapse / Expand", lambda: self.scene.toggle_collapsed(
            self.scene.selected_node_ids()), "Ctrl+L")
        self.act_group = self._act("&Group Selection", lambda: self.scene.group_selected(),
                                   "Ctrl+G")
        self.act_fit = self._act("&Fit to View", self.view.fit, ["F", "Home"])
        self.act_zoom_in = self._act("Zoom &In", lambda: self.view.set_zoom(self.view.zoom * 1.25),
                                     K.ZoomIn)
        self.act_zoom_out = self._act("Zoom &Out", lambda: self.view.set_zoom(
            self.view.zoom / 1.25), K.ZoomOut)
        self.act_zoom_reset = self._act("Actual &Size", lambda: self.view.set_zoom(1.0), "Ctrl+0")
        self.act_run = self._act("▶  Run", self.run, ["Ctrl+Return", "Ctrl+Enter"],
                                 "Render the outputs (Ctrl+Enter)")
        self.act_cancel = self._act("■  Cancel", self.cancel, None,
                                    "Stop the run after the current step")
        self.act_clear_cache = self._act("Clear &Cache", self.clear_cache)
        self.act_snap = QAction("Snap to &Grid", self, checkable=True)
        self.act_snap.toggled.connect(lambda on: self.scene and setattr(self.scene,
                                                                        "snap_to_grid", on))
        mb = self.menuBar()
        m = mb.addMenu("&File")
        for a in (self.act_new, self.act_open):
            m.addAction(a)
        self.recent_menu = m.addMenu("Open &Recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        m.addSeparator()
        for a in (self.act_save, self.act_save_as):
            m.addAction(a)
        m.addSeparator()
        m.addAction(self.act_quit)
        m = mb.addMenu("&Edit")
        for a in (self.act_undo, self.act_redo, None, self.act_cut, self.act_copy,
                  self.act_paste, self.act_duplicate, self.act_delete, None,
                  self.act_select_all, self.act_add, self.act_collapse, self.act_group):
            m.addSeparator() if a is None else m.addAction(a)
        m = mb.addMenu("&View")
        for a in (self.act_fit, self.act_zoom_in, self.act_zoom_out, self.act_zoom_reset, None,
                  self.act_snap, None, self.viewer_dock.toggleViewAction(),
                  self.problems_dock.toggleViewAction(), self.history_dock.toggleViewAction()):
            m.addSeparator() if a is None else m.addAction(a)
        m = mb.addMenu("&Run")
        for a in (self.act_run, self.act_cancel, None, self.act_clear_cache):
            m.addSeparator() if a is None else m.addAction(a)

        tb = self.addToolBar("Main")
        tb.setObjectName("mainToolbar")
        tb.setMovable(False)
        for a in (self.act_new, self.act_open, self.act_save):
            tb.addAction(a)
        tb.addSeparator()
        for a in (self.act_undo, self.act_redo):
            tb.addAction(a)
        tb.addSeparator()
        tb.addAction(self.act_add)
        tb.addAction(self.act_fit)
        spacer = QWidget()
        spacer.setSizePolicy(spacer.sizePolicy().horizontalPolicy().Expanding,
                             spacer.sizePolicy().verticalPolicy().Preferred)
        tb.addWidget(spacer)
        self.progress = QProgressBar()
        self.progress.setFixedWidth(220)
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.progress.setValue(0)
        tb.addWidget(self.progress)
        tb.addAction(self.act_cancel)
        tb.addAction(self.act_run)
        btn = tb.widgetForAction(self.act_run)
        if isinstance(btn, QToolButton):
            btn.setObjectName("runButton")
        btn = tb.widgetForAction(self.act_cancel)
        if isinstance(btn, QToolButton):
            btn.setObjectName("cancelButton")
        self.act_cancel.setEnabled(False)

    def _build_status(self) -> None:
        self.status_label = QLabel("Starting…")
        self.cache_label = QLabel("")
        self.zoom_label = QLabel("100%")
        self.statusBar().addWidget(self.status_label, 1)
        self.statusBar().addPermanentWidget(self.cache_label)
        self.statusBar().addPermanentWidget(self.zoom_label)
        self.view.zoom_changed.connect(lambda z: self.zoom_label.setText(f"{z * 100:.0f}%"))

    def _set_enabled(self, on: bool) -> None:
        for a in self.actions():
            a.setEnabled(on)
        self.act_quit.setEnabled(True)
        if on:
            self.act_cancel.setEnabled(False)

    def showEvent(self, event) -> None:  # noqa: N802
        super().showEvent(event)
        self.shown.emit()

    # session --------------------------------------------------------------------------------
    def attach(self, session: Any) -> None:
        """Connect the engine (registry, cache, executor): done after the window is shown."""
        from editor.runner import RunController

        self.session = session
        self.doc = Document(session.registry, self)
        self.doc.viewport_getter = self.view.viewport_state
        self.scene = GraphScene(self.doc, self)
        self.scene.snap_to_grid = self.act_snap.isChecked()
        self.view.setScene(self.scene)
        self.history.setStack(self.doc.undo)
        self.doc.changed.connect(self._update_title)
        self.doc.graph_replaced.connect(self._graph_replaced)
        self.doc.undo.canUndoChanged.connect(self._update_undo_actions)
        self.doc.undo.canRedoChanged.connect(self._update_undo_actions)
        self.scene.message.connect(self.say)
        self.scene.search_requested.connect(self.open_search)
        self.view.search_requested.connect(self.open_search)
        self.scene.structure_changed.connect(self._problems_timer.start)
        self.scene.viewer_requested.connect(self.show_node_in_viewer)
        self.scene.mask_requested.connect(self.open_mask_editor)
        self.runner = RunController(session, self)
        self.runner.started.connect(self._on_started)
        self.runner.node_status.connect(self._on_status)
        self.runner.progress.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self.runner.busy_changed.connect(self._on_busy)
        self._set_enabled(True)
        self._update_undo_actions()
        self._update_title()
        self.cache_label.setText(self.runner.cache_summary())
        self.say("Ready — Tab or double-click to add a node, Ctrl+Enter to run")

    def _update_undo_actions(self) -> None:
        if self.doc is not None:
            self.act_undo.setEnabled(self.doc.undo.canUndo())
            self.act_redo.setEnabled(self.doc.undo.canRedo())
            self.act_undo.setText(f"&Undo {self.doc.undo.undoText()}".rstrip())
            self.act_redo.setText(f"&Redo {self.doc.undo.redoText()}".rstrip())

    def _update_title(self) -> None:
        if self.doc is not None:
            self.setWindowTitle(self.doc.title())
            self._update_undo_actions()

    def _graph_replaced(self) -> None:
        self.problems.clear_errors()
        self._last_result = None
        if not self.view.restore_viewport(self.doc.graph.ui.get("viewport")):
            QTimer.singleShot(0, self.view.fit)
        self.refresh_problems()

    def say(self, text: str) -> None:
        self.status_label.setText(text)

    # files ------------------------------------------------------------------------------------
    def load_file(self, path: str | Path, remember: bool = True) -> bool:
        try:
            self.doc.load(path)
        except (LoomError, OSError) as exc:
            self._error("Cannot open workflow", str(exc))
            return False
        if remember:
            self._remember(Path(path))
        self.say(f"Opened {Path(path).name} — {len(self.doc.graph.nodes)} nodes")
        return True

    def new_file(self) -> None:
        if self._maybe_save():
            self.doc.discard_recovery()
            self.doc.new()

    def open_dialog(self) -> None:
        if not self._maybe_save():
            return
        start = str(self.doc.path.parent) if self.doc.path else str(Path.cwd())
        path, _ = QFileDialog.getOpenFileName(self, "Open workflow", start, WORKFLOW_FILTER)
        if path:
            self.doc.discard_recovery()
            self.load_file(path)

    def save(self) -> bool:
        if self.doc.path is None:
            return self.save_as_dialog()
        return self.save_to(self.doc.path)

    def save_to(self, path: str | Path) -> bool:
        """Save atomically; on failure the old file stays and the user is told why."""
        path = Path(path)
        if path.suffix.lower() != ".json":
            path = path.with_suffix(".json")
        try:
            self.doc.save(path)
        except (OSError, LoomError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._error("Could not save", f"{path}\n\n{why}\n\nThe file on disk was not changed.")
            self.say(f"Save failed: {why}")
            return False
        self._remember(path)
        self.say(f"Saved {path.name}")
        return True

    def save_as_dialog(self) -> bool:
        start = str(self.doc.path or Path.cwd() / "workflow.json")
        path, _ = QFileDialog.getSaveFileName(self, "Save workflow", start, "JSON (*.json)")
        return self.save_to(path) if path else False

    def _remember(self, path: Path) -> None:
        s = settings()
        recent = [p for p in (s.value("recent") or []) if p != str(path.resolve())]
        if isinstance(recent, str):
            recent = [recent]
        recent.insert(0, str(path.resolve()))
        s.setValue("recent", recent[:MAX_RECENT])

    def recent_files(self) -> list[str]:
        value = settings().value("recent") or []
        return [value] if isinstance(value, str) else list(value)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for p in self.recent_files():
            a = self.recent_menu.addAction(p)
            a.triggered.connect(lambda _c=False, p=p: self._open_recent(p))
        if not self.recent_menu.actions():
            self.recent_menu.addAction("(none)").setEnabled(False)

    def _open_recent(self, path: str) -> None:
        if self._maybe_save():
            self.doc.discard_recovery()
            self.load_file(path)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802
        if any(u.toLocalFile().lower().endswith((".json", ".png"))
               for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        for u in event.mimeData().urls():
            path = u.toLocalFile()
            if path.lower().endswith((".json", ".png")):
                event.acceptProposedAction()
                if self._maybe_save():
                    self.doc.discard_recovery()
                    self.load_file(path)
                return

    def _maybe_save(self) -> bool:
        """Ask about unsaved changes. True when it is fine to drop the current graph."""
        if self.doc is None or not self.doc.modified:
            return True
        if self.confirm_close is not None:
            answer = self.confirm_close()
        else:
            name = self.doc.path.name if self.doc.path else "Untitled"
            box = QMessageBox(QMessageBox.Icon.Warning, "Unsaved changes",
                              f"Save the changes to {name}?",
                              QMessageBox.StandardButton.Save
                              | QMessageBox.StandardButton.Discard
                              | QMessageBox.StandardButton.Cancel, self)
            box.setDefaultButton(QMessageBox.StandardButton.Save)
            r = box.exec()
            answer = {QMessageBox.StandardButton.Save: "save",
                      QMessageBox.StandardButton.Discard: "discard"}.get(
                QMessageBox.StandardButton(r), "cancel")
        if answer == "save":
            return self.save()
        return answer == "discard"

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        if not self._maybe_save():
            event.ignore()
            return
        if self.runner is not None and self.runner.busy:
            self.runner.cancel()
        if self.doc is not None:
            self.doc.discard_recovery()
        event.accept()

    def _error(self, title: str, text: str) -> None:
        if os.environ.get("LOOM_NO_DIALOGS"):
            self.say(f"{title}: {text}")
            return
        QMessageBox.warning(self, title, text)

    # clipboard ----------------------------------------------------------------------------
    def copy(self) -> bool:
        text = self.scene.copy_selected()
        if text is None:
            return False
        mime = QMimeData()
        mime.setData(CLIPBOARD_MIME, text.encode("utf-8"))
        mime.setText(text)
        QGuiApplication.clipboard().setMimeData(mime)
        self.say(f"Copied {len(self.scene.selected_node_ids())} node(s)")
        return True

    def cut(self) -> None:
        if self.copy():
            self.scene.delete_selected()

    def paste(self) -> list[str]:
        mime = QGuiApplication.clipboard().mimeData()
        if mime is None:
            self.say("Nothing pasted: the clipboard is empty")
            return []
        if mime.hasFormat(CLIPBOARD_MIME):
            text = bytes(mime.data(CLIPBOARD_MIME)).decode("utf-8", errors="replace")
        else:
            text = mime.text()
        pos = self.view.mapToScene(self.view.mapFromGlobal(self.cursor().pos()))
        if not self.view.viewport().rect().contains(self.view.mapFromScene(pos)):
            pos = self.view.mapToScene(self.view.viewport().rect().center())
        return self.scene.paste_text(text, pos)  # it says what it pasted, or why not

    def select_all(self) -> None:
        for item in self.scene.node_items.values():
            item.setSelected(True)

    # search --------------------------------------------------------------------------------
    def open_search_at_center(self) -> None:
        c = self.view.viewport().rect().center()
        self.open_search(self.view.mapToScene(c), QPointF(self.view.viewport().mapToGlobal(c)),
                         None)

    def open_search(self, scene_pos: QPointF, screen_pos: QPointF,
                    origin: SocketItem | None) -> NodeSearch:
        if self._search is not None:
            self._search.close()
        popup = NodeSearch(self.session.registry, self,
                           origin.type_name if origin is not None else None,
                           origin.is_output if origin is not None else True)

        def picked(type_id: str) -> None:
            pos = scene_pos if origin is None or origin.is_output else \
                scene_pos - QPointF(200, 20)
            nid = self.scene.add_node(type_id, pos, origin)
            self.scene.clearSelection()
            item = self.scene.node_items.get(nid)
            if item is not None:
                item.setSelected(True)

        popup.picked.connect(picked)
        pt = screen_pos.toPoint() if screen_pos != QPointF() else \
            self.view.viewport().mapToGlobal(self.view.viewport().rect().center())
        popup.popup(pt)
        self._search = popup
        return popup

    # problems --------------------------------------------------------------------------------
    def refresh_problems(self) -> None:
        if self.doc is None:
            return
        found = find_problems(self.doc.graph, self.session.registry)
        self.problems.set_validation(found)
        self.scene.set_problems(found)
        n = self.problems.problem_count()
        self.problems_dock.setWindowTitle(f"Problems ({n})" if n else "Problems")

    def focus_node(self, node_id: str) -> None:
        item = self.scene.node_items.get(node_id)
        if item is None:
            return
        self.scene.clearSelection()
        item.setSelected(True)
        self.view.centerOn(item)

    # running -------------------------------------------------------------------------------
    def run(self) -> bool:
        if self.runner is None or self.runner.busy:
            return False
        for item in self.scene.node_items.values():
            item.close_editor()
        self.problems.clear_errors()
        try:
            self.runner.run(self.doc.graph, self.output_dir)
        except ValidationError as exc:
            self.problems.set_validation(exc.problems)
            self.scene.set_problems(exc.problems)
            self.problems_dock.show()
            self.problems_dock.raise_()
            self.say(f"Cannot run: {len(exc.problems)} problem(s) — see Problems")
            return False
        except LoomError as exc:
            self.say(f"Cannot run: {exc}")
            return False
        self.say("Running…")
        return True

    def cancel(self) -> None:
        if self.runner is not None and self.runner.busy:
            self.runner.cancel()
            self.say("Cancelling after the current step…")

    def clear_cache(self) -> None:
        self.session.cache.clear()
        self.cache_label.setText(self.runner.cache_summary())
        self.say("Cache cleared")

    def _on_busy(self, busy: bool) -> None:
        self.act_run.setEnabled(not busy)
        self.act_cancel.setEnabled(busy)

    def _on_started(self, event) -> None:
        run_nodes = set(event.nodes)
        for nid, item in self.scene.node_items.items():
            if nid not in run_nodes:
                item.set_run_state(None)
        self._run_total = 0
        self._run_done = set()
        self._run_fraction = 0.0
        self.progress.setValue(0)

    def _on_status(self, event) -> None:
        item = self.scene.node_items.get(event.node_id)
        status = event.status
        if status == "queued":
            self._run_total += 1
        elif status in ("done", "error", "skipped", "cancelled"):
            self._run_done.add(event.node_id)
            self._run_fraction = 0.0
        err = event.error
        if err is not None:
            self.problems.set_error(event.node_id, err.message)
        if item is not None:
            item.set_run_state(status, event.elapsed if status != "cached" else None,
                               err.message if err is not None else
                               (event.reason or None if status == "skipped" else None),
                               err.input if err is not None else None)
        if status == "running":
            self.say(f"Running {event.node_id}…")
        self._update_progress()

    def _on_progress(self, event) -> None:
        item = self.scene.node_items.get(event.node_id)
        preview = to_qimage(event.preview) if event.preview is not None else None
        if item is not None:
            item.set_progress(event.step, event.total, preview)
        self._run_fraction = event.step / event.total if event.total else 0.0
        self._update_progress()

    def _update_progress(self) -> None:
        total = max(self._run_total, 1)
        value = (len(self._run_done) + self._run_fraction) / total
        self.progress.setValue(int(1000 * min(1.0, value)))

    def _on_finished(self, result) -> None:
        self._last_result = result
        self.progress.setValue(1000 if result.ok else self.progress.value())
        shown: list[Shown] = []
        for nid, ui in result.ui.items():
            images = [q for q in (to_qimage(i) for i in ui.get("images") or []) if q is not None]
            text = ui.get("text")
            item = self.scene.node_items.get(nid)
            if item is not None and (images or text is not None):
                item.set_results(images, text if isinstance(text, str) else None)
            files = list(ui.get("files") or [])
            for k, q in enumerate(images):
                f = files[k] if k < len(files) and str(files[k]).lower().endswith(".png") else None
                shown.append(Shown(q, f"{nid}" + (f" · {Path(f).name}" if f else ""), f))
        if shown:
            self.viewer.show_images(shown)
        ran, cached = len(result.ran), len(result.cached)
        if result.cancelled:
            head = "Cancelled"
        elif result.errors:
            head = f"Finished with {len(result.errors)} error(s)"
            self.problems_dock.show()
            self.problems_dock.raise_()
        else:
            head = "Done"
        warnings = [f"{nid}: {w}" for nid, ui in result.ui.items()
                    for w in ui.get("warnings") or ()]  # e.g. a PNG saved without its workflow
        self.say(f"{head} in {result.elapsed:.2f}s — {ran} ran, {cached} cached"
                 + "".join(f" — {w}" for w in warnings))
        self.cache_label.setText(self.runner.cache_summary())
        if result.ok:
            self.scene.randomize_after_run()

    def show_node_in_viewer(self, node_id: str) -> None:
        item = self.scene.node_items.get(node_id)
        if item is not None and item.images:
            self.viewer.show_images([Shown(q, node_id) for q in item.images])
            self.viewer_dock.show()
            self.viewer_dock.raise_()

    # mask editor ---------------------------------------------------------------------------
    def open_mask_editor(self, node_id: str, input: str) -> None:
        from editor.mask_editor import MaskEditor

        dlg = MaskEditor(self, self.scene, node_id, input)
        dlg.open()
        self._mask_editor = dlg

    # helpers for tests and scripts -----------------------------------------------------------
    def node_item(self, node_id: str) -> NodeItem:
        return self.scene.node_items[node_id]
