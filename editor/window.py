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
    QSizePolicy,
    QToolButton,
    QUndoView,
    QWidget,
)

from editor.document import Document, moved_paths
from editor.items import EdgeItem, NodeItem, SocketItem, to_qimage
from editor.panels import ImageViewer, ProblemsPanel, Shown
from editor.places import default_output_dir, is_shipped, workflows_dir
from editor.plugins_panel import PluginsPanel
from editor.scene import CLIPBOARD_MIME, GraphScene
from editor.search import NodeSearch
from editor.view import GraphView
from engine.errors import LoomError, ValidationError
from engine.validate import problems as find_problems

MAX_RECENT = 10
MENU_TEXT_MAX = 48
WORKFLOW_FILTER = ("Loom workflows (*.json *.png);;ComfyUI workflows (*.json *.png);;"
                   "JSON (*.json);;PNG with workflow (*.png)")


CANVAS_GESTURES = [
    ("Add a node", "Tab, double-click the canvas, or drop a wire on empty canvas"),
    ("Menu of a node, wire or the canvas", "Right-click"),
    ("Connect", "Drag from a socket to another"),
    ("Move a connection", "Drag it off its input"),
    ("Pan", "Middle-drag, or Space + drag"),
    ("Zoom", "Mouse wheel"),
    ("Select several", "Drag a rectangle on the canvas"),
    ("Edit a number", "Drag it sideways to scrub, click to type"),
    ("Collapse a node", "Double-click its title"),
    ("Cancel an edit", "Esc"),
]


def _blocked_reason(reason: str) -> str:
    """The engine's "input from 'x' is not available", as a user reads it."""
    import re

    m = re.search(r"'([^']+)'", reason or "")
    return f"blocked: '{m.group(1)}' did not finish, so this node could not run" if m \
        else "blocked: an input it needs did not finish"


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def elide(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def tooltip_for(action: QAction) -> str:
    """What a toolbar button or help page says of an action: its command, what it does, and
    its shortcuts."""
    name = action.property("command") or action.text().replace("&", "").split("\t")[0].strip()
    tip = action.property("tip") or ""
    keys = ", ".join(k.toString(QKeySequence.SequenceFormat.NativeText)
                     for k in action.shortcuts())
    text = name + (f" — {tip}" if tip and tip != name else "")
    return text + (f" ({keys})" if keys else "")


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
        self.resize(*self._initial_size())
        self.setAcceptDrops(True)
        self.session = None
        self.doc: Document | None = None
        self.scene: GraphScene | None = None
        self.runner = None
        self.output_dir = Path(output_dir or os.environ.get("LOOM_OUTPUT_DIR")
                               or settings().value("output_dir") or default_output_dir())
        self.confirm_close: Callable[[], str] | None = None
        """Tests set this: returns "save", "discard" or "cancel" instead of asking."""
        self.choose_save_path: Callable[[str], str | None] | None = None
        """Tests set this: given the suggested path, returns the chosen one (None: cancelled)
        instead of showing the Save As dialog."""
        self._run_total = 0
        self._run_done: set[str] = set()
        self._run_fraction = 0.0
        self._run_started: set[str] = set()
        self._run_current: str | None = None
        self._run_marks = False
        self._cancelling = False
        self._anim = QTimer(self)
        self._anim.setInterval(100)
        self._anim.timeout.connect(self._animate)
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

    def _initial_size(self) -> tuple[int, int]:
        """1480×900, or less to fit the screen (the toolbar's Run stays in view)."""
        screen = self.screen() or QGuiApplication.primaryScreen()
        if screen is None:
            return 1480, 900
        area = screen.availableGeometry()
        return min(1480, area.width()), min(900, area.height())

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
        self.plugins = PluginsPanel()  # node packages, plugin errors, ComfyUI import notes
        self.plugins_dock = self._dock("Plugins", self.plugins,
                                       Qt.DockWidgetArea.RightDockWidgetArea)
        self.tabifyDockWidget(self.problems_dock, self.plugins_dock)
        self.problems_dock.raise_()
        # the canvas gets most of the width: a quarter for the side panels (260-360 px)
        self.resizeDocks([self.viewer_dock], [int(max(260, min(360, self.width() * 0.25)))],
                         Qt.Orientation.Horizontal)
        self.resizeDocks([self.viewer_dock, self.problems_dock], [560, 240],
                         Qt.Orientation.Vertical)
        self.problems.node_clicked.connect(self.focus_node)
        self.viewer.edit_mask_requested.connect(self.edit_mask_from_viewer)
        self.viewer.save_dir = self.output_dir
        self.problems.count_changed.connect(
            lambda n: self.problems_dock.setWindowTitle(f"Problems ({n})" if n else "Problems"))

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
            a.setProperty("tip", tip)
        a.triggered.connect(lambda _checked=False: slot())
        self.addAction(a)
        return a

    def _build_actions(self) -> None:
        K = QKeySequence.StandardKey
        sel = lambda: self.scene.selected_node_ids() if self.scene else []  # noqa: E731
        self.act_new = self._act("&New", self.new_file, K.New, "Start an empty workflow")
        self.act_open = self._act("&Open…", self.open_dialog, K.Open,
                                  "Open a workflow (.json, or a .png Loom wrote)")
        self.act_save = self._act("&Save", self.save, K.Save,
                                  "Save the workflow (a copy of a bundled one asks where)")
        self.act_save_as = self._act("Save &As…", self.save_as_dialog, K.SaveAs)
        self.act_quit = self._act("&Quit", self.close, "Ctrl+Q")
        self.act_undo = self._act("&Undo", lambda: self.doc and self.doc.undo.undo(), K.Undo)
        self.act_redo = self._act("&Redo", lambda: self.doc and self.doc.undo.redo(),
                                  ["Ctrl+Shift+Z", "Ctrl+Y"])
        self.act_cut = self._act("Cu&t", self.cut, K.Cut)
        self.act_copy = self._act("&Copy", self.copy, K.Copy)
        self.act_paste = self._act("&Paste", self.paste, K.Paste)
        self.act_duplicate = self._act("&Duplicate", lambda: self.scene.duplicate_selected(),
                                       "Ctrl+D")
        self.act_delete = self._act("De&lete", lambda: self.scene.delete_selected(),
                                    [QKeySequence(K.Delete), "Backspace"])
        self.act_select_all = self._act("Select &All", self.select_all, K.SelectAll)
        self.act_add = self._act("&Add Node…\tTab", self.open_search_at_center, None,
                                 "Search node types (Tab or double-click on the canvas)")
        self.act_rename = self._act("Re&name Node…", lambda: self.scene.rename_selected(),
                                    "F2")
        self.act_collapse = self._act("Co&llapse / Expand", lambda: self.scene.toggle_collapsed(
            sel()), "Ctrl+L")
        self.act_bypass = self._act("&Bypass", lambda: self.scene.toggle_mode(sel(), "bypass"),
                                    "Ctrl+B", "Pass the node's input through to its output")
        self.act_mute = self._act("&Mute", lambda: self.scene.toggle_mode(sel(), "mute"),
                                  "Ctrl+M", "Do not run the node (nor what needs it)")
        self.act_group = self._act("&Group Selection", lambda: self.scene.group_selected(),
                                   "Ctrl+G")
        self.act_edit_mask = self._act("Edit &Mask…", self.edit_mask_of_selection, "Ctrl+E",
                                       "Paint a mask for the selected Load Image / Load Mask "
                                       "node")
        self.act_fit = self._act("&Fit to View", self.view.fit, ["F", "Home"])
        self.act_zoom_in = self._act("Zoom &In", lambda: self.view.set_zoom(self.view.zoom * 1.25),
                                     [QKeySequence(K.ZoomIn), "Ctrl+="])
        self.act_zoom_out = self._act("Zoom &Out", lambda: self.view.set_zoom(
            self.view.zoom / 1.25), K.ZoomOut)
        self.act_zoom_reset = self._act("Actual &Size", lambda: self.view.set_zoom(1.0), "Ctrl+0")
        self.act_run = self._act("▶  Run", self.run, ["Ctrl+Return", "Ctrl+Enter"],
                                 "Render the outputs")
        self.act_cancel = self._act("■  Cancel", self.cancel, "Esc",
                                    "Stop the run after the current step")
        self.act_clear_cache = self._act("Clear &Cache", self.clear_cache, "Ctrl+Shift+Del",
                                         "Forget cached results and loaded models")
        self.act_output_dir = self._act("&Output Folder…", self.choose_output_dir,
                                        "Ctrl+Shift+O", "Where Save Image writes")
        self.act_snap = self._act("Snap to &Grid", lambda: None, "Ctrl+Shift+G")
        self.act_snap.setCheckable(True)
        self.act_snap.toggled.connect(lambda on: self.scene and setattr(self.scene,
                                                                        "snap_to_grid", on))
        self.act_shortcuts = self._act("&Keyboard Shortcuts", self.show_shortcuts, "F1")
        self.act_about = self._act("&About Loom", self.show_about)
        mb = self.menuBar()
        m = mb.addMenu("&File")
        for a in (self.act_new, self.act_open):
            m.addAction(a)
        self.recent_menu = m.addMenu("Open &Recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        self.examples_menu = m.addMenu("&Examples")
        self.examples_menu.aboutToShow.connect(self._fill_examples)
        m.addSeparator()
        for a in (self.act_save, self.act_save_as):
            m.addAction(a)
        m.addSeparator()
        m.addAction(self.act_quit)
        m = mb.addMenu("&Edit")
        for a in (self.act_undo, self.act_redo, None, self.act_cut, self.act_copy,
                  self.act_paste, self.act_duplicate, self.act_delete, None,
                  self.act_select_all, self.act_add, self.act_rename, self.act_collapse,
                  self.act_bypass, self.act_mute, self.act_group, None, self.act_edit_mask):
            m.addSeparator() if a is None else m.addAction(a)
        for k, dock in enumerate((self.viewer_dock, self.problems_dock, self.history_dock,
                                  self.plugins_dock), start=1):
            dock.toggleViewAction().setShortcut(QKeySequence(f"Ctrl+{k}"))  # show/hide panels
        m = mb.addMenu("&View")
        for a in (self.act_fit, self.act_zoom_in, self.act_zoom_out, self.act_zoom_reset, None,
                  self.act_snap, None, self.viewer_dock.toggleViewAction(),
                  self.problems_dock.toggleViewAction(), self.history_dock.toggleViewAction(),
                  self.plugins_dock.toggleViewAction()):
            m.addSeparator() if a is None else m.addAction(a)
        m = mb.addMenu("&Run")
        for a in (self.act_run, self.act_cancel, None, self.act_clear_cache,
                  self.act_output_dir):
            m.addSeparator() if a is None else m.addAction(a)
        m = mb.addMenu("&Help")
        for a in (self.act_shortcuts, None, self.act_about):
            m.addSeparator() if a is None else m.addAction(a)

        # The toolbar holds still: short fixed labels (the command text of Undo/Redo goes to
        # their tooltips and the Edit menu), and Run / Cancel at the right at any width
        tb = self.addToolBar("Main")
        tb.setObjectName("mainToolbar")
        tb.setMovable(False)
        tb.setFloatable(False)
        tb.toggleViewAction().setVisible(False)  # Run must not be hidden by a stray click
        self.toolbar = tb
        self.tool_buttons: dict[str, QToolButton] = {}
        for entry in (("new", "New", self.act_new), ("open", "Open", self.act_open),
                      ("save", "Save", self.act_save), None,
                      ("undo", "Undo", self.act_undo), ("redo", "Redo", self.act_redo),
                      None, ("add", "Add Node", self.act_add), ("fit", "Fit", self.act_fit)):
            if entry is None:
                tb.addSeparator()
            else:
                tb.addWidget(self._tool_button(*entry))
        spacer = QWidget()
        spacer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        tb.addWidget(spacer)
        self.progress = QProgressBar()
        self.progress.setMinimumWidth(120)
        self.progress.setMaximumWidth(260)
        self.progress.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.progress.setValue(0)
        tb.addWidget(self.progress)
        cancel = self._tool_button("cancel", "■ Cancel", self.act_cancel)
        cancel.setObjectName("cancelButton")
        tb.addWidget(cancel)
        run = self._tool_button("run", "▶ Run", self.act_run)
        run.setObjectName("runButton")
        tb.addWidget(run)
        self.run_button, self.cancel_button = run, cancel
        self.act_cancel.setEnabled(False)

    def _tool_button(self, key: str, label: str, action: QAction) -> QToolButton:
        """A toolbar button with a fixed label that triggers `action` and follows its enabled
        state; its tooltip names the command and its shortcut."""
        b = QToolButton()
        b.setText(label)
        b.setObjectName(f"{key}Button")
        b.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        b.clicked.connect(action.trigger)

        def sync() -> None:
            b.setEnabled(action.isEnabled())
            b.setToolTip(tooltip_for(action))

        action.changed.connect(sync)
        sync()
        self.tool_buttons[key] = b
        return b

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
        self.scene.structure_changed.connect(self._graph_edited)
        self.scene.viewer_requested.connect(self.show_node_in_viewer)
        self.scene.mask_requested.connect(self._mask_requested)
        self.scene.help_requested.connect(self.show_node_help)
        self.scene.actions = {
            "rename": self.act_rename, "duplicate": self.act_duplicate,
            "delete": self.act_delete, "bypass": self.act_bypass, "mute": self.act_mute,
            "collapse": self.act_collapse, "edit_mask": self.act_edit_mask,
            "paste": self.act_paste, "select_all": self.act_select_all, "fit": self.act_fit,
            "group": self.act_group}
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
        self.plugins.attach(self)

    def _update_undo_actions(self) -> None:
        """The Edit menu and the buttons' tooltips name the command; the buttons' labels stay
        "Undo" and "Redo" (a long command name must not push Run off the toolbar)."""
        if self.doc is not None:
            for act, verb, can, text in (
                    (self.act_undo, "Undo", self.doc.undo.canUndo(), self.doc.undo.undoText()),
                    (self.act_redo, "Redo", self.doc.undo.canRedo(), self.doc.undo.redoText())):
                act.setProperty("command", f"{verb} {text}".rstrip())
                act.setText(f"&{verb} {elide(text, MENU_TEXT_MAX)}".rstrip())
                act.setEnabled(can)

    def _update_title(self) -> None:
        if self.doc is not None:
            self.setWindowTitle(self.doc.title())
            self._update_undo_actions()

    def _graph_replaced(self) -> None:
        self.problems.clear_errors()
        self._last_result = None
        if not self.view.restore_viewport(self.doc.graph.ui.get("viewport")):
            QTimer.singleShot(0, self.view.open_fit)
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
        note = " — a copy: Loom's own workflows stay as installed, Save asks where" \
            if self.doc.bundled else ""
        relinked = self.doc.graph.ui.get("_relinked") or ()  # engine.library.relink
        note += f" — {len(relinked)} model path(s) found elsewhere (see Problems)" \
            if relinked else ""
        self.say(f"Opened {Path(path).name} — {len(self.doc.graph.nodes)} nodes{note}")
        return True

    def new_file(self) -> None:
        if self._maybe_save():
            self.doc.discard_recovery()
            self.doc.new()

    def open_dialog(self) -> None:
        if not self._maybe_save():
            return
        start = self.doc.path.parent if self.doc.path else workflows_dir()
        if not start.is_dir():
            start = Path.cwd()
        path, _ = QFileDialog.getOpenFileName(self, "Open workflow", str(start),
                                              WORKFLOW_FILTER)
        if path:
            self.doc.discard_recovery()
            self.load_file(path)

    def save(self) -> bool:
        """Save to the workflow's file; an untitled one (a bundled workflow opens as one)
        asks where first."""
        if self.doc.path is None:
            return self.save_as_dialog()
        return self.save_to(self.doc.path)

    def save_to(self, path: str | Path) -> bool:
        """Save atomically; on failure the old file stays and the user is told why. Loom's
        shipped files are never written. Relative file paths that would point elsewhere from
        the new folder are rewritten (one undo step) so the saved copy finds its images."""
        path = Path(path)
        if path.suffix.lower() != ".json":
            path = path.with_suffix(".json")
        if is_shipped(path):
            why = (f"{path.name} is one of the workflows that ship with Loom, which stay as "
                   f"installed. Save your copy elsewhere (File > Save As…), e.g. in "
                   f"{workflows_dir()}.")
            self._error("Not saved", why)
            self.say(f"Not saved: {path.name} ships with Loom — use Save As")
            return False
        moved = moved_paths(self.doc.graph, self.session.registry, self.doc.base_dir(),
                            path.parent)
        if moved:
            self.doc.undo.beginMacro("Keep file paths")
            for (nid, name), value in moved.items():
                self.scene.set_value(nid, name, value)
            self.doc.undo.endMacro()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.doc.save(path)
        except (OSError, LoomError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._error("Could not save", f"{path}\n\n{why}\n\nThe file on disk was not changed.")
            self.say(f"Save failed: {why}")
            return False
        self._remember(path)
        self.say(f"Saved {path.name}")
        return True

    def suggested_save_path(self) -> Path:
        """Where Save As starts: the workflow's own file, else the user's workflows folder
        (a bundled workflow's copy keeps its name there)."""
        if self.doc.path is not None:
            return self.doc.path
        name = self.doc.source.with_suffix(".json").name if self.doc.source else "workflow.json"
        return workflows_dir() / name

    def save_as_dialog(self) -> bool:
        start = self.suggested_save_path()
        if self.choose_save_path is not None:
            path = self.choose_save_path(str(start))
        else:
            try:
                start.parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                pass
            path, _ = QFileDialog.getSaveFileName(self, "Save workflow", str(start),
                                                  "JSON (*.json)")
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

    def _fill_examples(self) -> None:
        """Bundled workflows, each opened as an untitled copy."""
        from engine.api import DEFAULT_WORKFLOW

        self.examples_menu.clear()
        root = DEFAULT_WORKFLOW.parent
        groups = [("", [DEFAULT_WORKFLOW]),
                  ("Built-in model", sorted((root / "builtin").glob("*.json"))),
                  ("Stable Diffusion (needs your checkpoint)",
                   sorted((root / "examples").glob("*.json")))]
        for title, files in groups:
            if not files:
                continue
            menu = self.examples_menu.addMenu(title) if title else self.examples_menu
            for f in files:
                a = menu.addAction(f.stem.replace("_", " "))
                a.setToolTip(str(f))
                a.triggered.connect(lambda _c=False, f=f: self._open_recent(str(f), False))

    def _open_recent(self, path: str, remember: bool = True) -> None:
        if self._maybe_save():
            self.doc.discard_recovery()
            self.load_file(path, remember)

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
                    origin: SocketItem | EdgeItem | None) -> NodeSearch:
        """The node search popup at `screen_pos`; a node picked goes to `scene_pos`, wired to
        the socket the search was opened from (a dropped wire), or into a wire (its menu's
        Insert Node…)."""
        if self._search is not None:
            self._search.close()
        if isinstance(origin, EdgeItem):
            key = origin.key
            popup = NodeSearch(self.session.registry, self,
                               through=(origin.src.type_name, origin.dst.type_name))
            popup.picked.connect(lambda type_id: self.scene.insert_node_on_edge(
                key, type_id, scene_pos))
            self._show_popup(popup, screen_pos)
            return popup
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
        self._show_popup(popup, screen_pos)
        return popup

    def _show_popup(self, popup: NodeSearch, screen_pos: QPointF) -> None:
        pt = screen_pos.toPoint() if screen_pos != QPointF() else \
            self.view.viewport().mapToGlobal(self.view.viewport().rect().center())
        popup.popup(pt)
        self._search = popup

    def _mask_requested(self, node_id: str, input: str) -> None:
        """A field's Paint button or "Edit mask…": a mask input opens the mask editor on
        itself; an image input paints the graph's mask over its image."""
        from editor import fields

        spec = self.session.registry.get(self.doc.graph.nodes[node_id].type)
        inp = spec.inputs.get(input) if spec else None
        if inp is not None and fields.kind_of(inp) == "mask":
            self.open_mask_editor(node_id, input)
        else:
            self.edit_mask_for(node_id)

    def show_node_help(self, node_id: str) -> QWidget | None:
        from editor.panels import InfoDialog, node_help_html

        node = self.doc.graph.nodes.get(node_id)
        spec = self.session.registry.get(node.type) if node else None
        if spec is None:
            self.say(f"No help for {node.type if node else node_id}: this Loom does not know "
                     "that node type")
            return None
        dlg = InfoDialog(self, f"Help — {spec.title}", node_help_html(spec))
        dlg.show()
        self._info_dialog = dlg
        return dlg

    # problems --------------------------------------------------------------------------------
    def refresh_problems(self) -> None:
        if self.doc is None:
            return
        found = find_problems(self.doc.graph, self.session.registry)
        notes = [p for p in self.doc.graph.ui.get("_relinked") or ()  # model files found
                 if p.node_id in self.doc.graph.nodes]                # elsewhere: notes only
        self.problems.set_validation(found + notes)
        self.scene.set_problems(found)

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
        from engine.modes import run_plan

        for item in self.scene.node_items.values():
            item.close_editor()
            item.set_run_state(None)  # the last run's marks go when the next one starts
        self.problems.clear_errors()
        try:
            run_graph, outputs, notes = run_plan(self.doc.graph, self.session.registry)
            self.runner.run(self.doc.graph, self.output_dir, outputs, run_graph)
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
        self._run_total, self._run_done, self._run_fraction = 0, set(), 0.0
        self._run_started: set[str] = set()
        self._run_current: str | None = None
        self._cancelling = False
        self._set_progress(busy=True, text="Starting…")
        self._anim.start()
        self.say("Running…" + "".join(f" — {n}" for n in notes))
        return True

    def cancel(self) -> None:
        if self.runner is not None and self.runner.busy:
            self.runner.cancel()
            self._cancelling = True
            self._set_progress(busy=self.progress.maximum() == 0, value=None,
                               text="Cancelling…")
            self.say("Cancelling after the current step…")

    def clear_cache(self) -> None:
        self.session.cache.clear()
        self.cache_label.setText(self.runner.cache_summary())
        self.say("Cache cleared")

    def _on_busy(self, busy: bool) -> None:
        self.act_run.setEnabled(not busy)
        self.act_cancel.setEnabled(busy)
        if not busy:
            self._anim.stop()

    def _graph_edited(self) -> None:
        """An edit (nodes, wires, values): the last run's failure marks no longer describe
        this graph, so they go (a running node keeps its state)."""
        if not getattr(self, "_run_marks", False):
            return
        self._run_marks = False
        for item in self.scene.node_items.values():
            if item.state in ("error", "blocked", "cancelled", "not run"):
                item.set_run_state(None)
        self.problems.clear_errors()

    def _set_progress(self, busy: bool = False, value: float | None = None,
                      text: str = "") -> None:
        """The toolbar's bar: moving (busy) while nothing can be counted yet (a model loads,
        a node without steps runs), else the run's share done."""
        bar = self.progress
        if busy:
            bar.setRange(0, 0)
        else:
            bar.setRange(0, 1000)
            if value is not None:
                bar.setValue(int(1000 * max(0.0, min(1.0, value))))
        bar.setFormat(text.replace("%", "%%"))
        bar.setToolTip(text)

    def _animate(self) -> None:
        """Redraw running nodes (their busy stripe and running time) a few times a second."""
        for nid in list(getattr(self, "_run_started", ())):
            item = self.scene.node_items.get(nid) if self.scene else None
            if item is not None and item.state == "running":
                item.update()
                if nid == self._run_current and (item.progress is None or item.loads):
                    if self._cancelling:
                        self.say(f"Cancelling when {item.title} ({nid}) finishes its current "
                                 f"step… {item.busy_text().split()[-1]}")
                    else:
                        self.say(f"{item.status_text()} — {item.title} ({nid})")

    def _on_started(self, event) -> None:
        run_nodes = set(event.nodes)
        for nid, item in self.scene.node_items.items():
            if nid not in run_nodes:
                item.set_run_state(None)
        self._run_total = 0
        self._run_done = set()
        self._run_fraction = 0.0

    def _on_status(self, event) -> None:
        item = self.scene.node_items.get(event.node_id)
        status = event.status
        nid = event.node_id
        if status == "queued":
            self._run_total += 1
        elif status in ("done", "error", "skipped"):
            self._run_done.add(nid)
            self._run_fraction = 0.0
        if status == "running":
            self._run_started.add(nid)
            self._run_current = nid
        elif status == "cancelled" and nid not in self._run_started:
            status = "not run"  # cancelled before it started: no time to show
        elif status == "skipped":
            status = "blocked"  # did not run because an input it needs failed
        err = event.error
        if err is not None:
            self.problems.set_error(nid, err.message)
        if status in ("error", "blocked", "not run", "cancelled"):
            self._run_marks = True
        if item is not None:
            reason = None
            if status == "blocked":
                reason = _blocked_reason(event.reason)
            item.set_run_state(status, event.elapsed if status in ("done", "error",
                                                                   "cancelled") else None,
                               err.message if err is not None else reason,
                               err.input if err is not None else None)
        if status == "running":
            title = item.title if item is not None else nid
            self._set_progress(busy=True, text=f"{title}: "
                               f"{'loading' if item is not None and item.loads else 'running'}…")
            self.say(f"Running {title} ({nid})…")
        elif nid == self._run_current and status != "queued":
            self._run_current = None
            self._update_progress()

    def _on_progress(self, event) -> None:
        item = self.scene.node_items.get(event.node_id)
        preview = to_qimage(event.preview) if event.preview is not None else None
        if item is not None:
            item.set_progress(event.step, event.total, preview)
        self._run_fraction = event.step / event.total if event.total else 0.0
        title = item.title if item is not None else event.node_id
        self._update_progress(f"{title} {event.step}/{event.total}")

    def _update_progress(self, text: str = "") -> None:
        total = max(self._run_total, 1)
        value = (len(self._run_done) + self._run_fraction) / total
        text = text or f"{len(self._run_done)}/{total} nodes"
        running = self.runner is not None and self.runner.busy
        if running:  # a bar with nothing in it looks frozen: it moves until there is a share
            self._set_progress(busy=value <= 0, value=max(value, 0.02), text=text)
        else:
            self._set_progress(value=value, text=text)

    def _on_finished(self, result) -> None:
        self._last_result = result
        self._anim.stop()
        self._run_current = None
        if result.cancelled:
            self._set_progress(value=0.0, text="Cancelled")
        elif result.errors:
            self._update_progress(f"{len(result.errors)} failed")
        else:
            self._set_progress(value=1.0, text=f"Done in {result.elapsed:.1f}s")
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
        blocked = sum(1 for s in result.status.values() if s == "skipped")
        if result.cancelled:
            head = "Cancelled"
        elif result.errors:
            head = f"Finished with {len(result.errors)} error(s)"
            if blocked:
                head += f", {blocked} node(s) blocked by them"
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
        """The node's last results in the viewer, or the image file it loads."""
        item = self.scene.node_items.get(node_id)
        if item is None:
            return
        if item.images:
            self.viewer.show_images([Shown(q, node_id) for q in item.images])
        else:
            found = self.scene.file_image(node_id)
            if found is None:
                return
            img, path = found
            self.viewer.show_images([Shown(img, f"{node_id} · {Path(path).name}", path)])
        self.viewer_dock.show()
        self.viewer_dock.raise_()

    # mask editor ---------------------------------------------------------------------------
    def open_mask_editor(self, node_id: str, input: str, reference: Any = None) -> Any:
        """Paint the mask that `node_id`.`input` names (over `reference`, a QImage, when
        given; else over the first image the graph loads)."""
        from editor.mask_editor import MaskEditor

        dlg = MaskEditor(self, self.scene, node_id, input, reference)
        dlg.open()
        self._mask_editor = dlg
        return dlg

    def edit_mask_for(self, node_id: str) -> Any:
        """"Edit mask…" on a node: a Load Mask paints its own mask; a Load Image paints the
        mask of the graph's Load Mask node (added beside it when there is none) over its
        image."""
        target = self.scene.mask_target(node_id)
        if target is None:
            return None
        mask_node, mask_input, reference = target
        return self.open_mask_editor(mask_node, mask_input, reference)

    def edit_mask_of_selection(self) -> Any:
        for nid in self.scene.selected_node_ids():
            if self.scene.mask_capable(nid):
                return self.edit_mask_for(nid)
        self.say("Edit mask: select a Load Image or Load Mask node first (or right-click it)")
        return None

    def edit_mask_from_viewer(self) -> Any:
        """The viewer's "Edit mask…": paint the graph's mask over the image shown."""
        cur = self.viewer.current
        target = self.scene.mask_target(None)
        if target is None:
            return None
        mask_node, mask_input, _ = target
        return self.open_mask_editor(mask_node, mask_input, cur.image if cur else None)

    # output folder, help ---------------------------------------------------------------------
    def choose_output_dir(self, folder: str | Path | None = None) -> bool:
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Output folder",
                                                      str(self.output_dir))
            if not folder:
                return False
        if is_shipped(folder):
            self._error("Output folder", f"{folder} is inside Loom's installation, whose files "
                                         "stay as shipped: choose another folder.")
            return False
        self.output_dir = Path(folder)
        self.viewer.save_dir = self.output_dir
        settings().setValue("output_dir", str(self.output_dir))
        self.say(f"Images are saved to {self.output_dir}")
        return True

    def shortcut_rows(self) -> list[tuple[str, str, str]]:
        """(section, command, keys) for every menu action with a shortcut, then the canvas
        gestures: what Help > Keyboard Shortcuts lists."""
        rows: list[tuple[str, str, str]] = []
        for menu_action in self.menuBar().actions():
            menu = menu_action.menu()
            if menu is None:
                continue
            section = menu_action.text().replace("&", "")
            for a in menu.actions():
                if a.isSeparator() or a.menu() is not None:
                    continue
                name, _, hint = a.text().replace("&", "").partition("\t")
                if a.property("command"):
                    name = name.split(" ", 1)[0]  # "Undo", not the command of the moment
                keys = ", ".join(k.toString(QKeySequence.SequenceFormat.NativeText)
                                 for k in a.shortcuts()) or hint
                if keys:
                    rows.append((section, name.strip("▶■ "), keys))
        rows += [("Canvas", name, keys) for name, keys in CANVAS_GESTURES]
        return rows

    def show_shortcuts(self) -> QWidget:
        from editor.panels import InfoDialog

        html = ["<table cellspacing=0 cellpadding=3>"]
        section = None
        for sec, name, keys in self.shortcut_rows():
            if sec != section:
                html.append(f"<tr><td colspan=2><br><b>{sec}</b></td></tr>")
                section = sec
            html.append(f"<tr><td>{_html(name)}</td><td style='color:#8fb8ff'>"
                        f"{_html(keys)}</td></tr>")
        html.append("</table>")
        dlg = InfoDialog(self, "Keyboard shortcuts", "".join(html))
        dlg.show()
        self._info_dialog = dlg
        return dlg

    def about_text(self) -> str:
        from editor.about import versions

        rows = "".join(f"<tr><td>{_html(k)}</td><td>{_html(v)}</td></tr>"
                       for k, v in versions(self.runner.device if self.runner else "auto"))
        from editor.places import data_dir

        folders = "".join(
            f"<tr><td>{k}</td><td>{_html(str(v))}</td></tr>"
            for k, v in (("Images", self.output_dir), ("Workflows", workflows_dir()),
                         ("Masks, recovery", data_dir())))
        return ("<h3>Loom</h3><p>A node-graph editor for diffusion image generation.</p>"
                f"<table cellpadding=3>{rows}</table><h4>Your folders</h4>"
                f"<table cellpadding=3>{folders}</table>")

    def show_about(self) -> QWidget:
        from editor.panels import InfoDialog

        dlg = InfoDialog(self, "About Loom", self.about_text())
        dlg.show()
        self._info_dialog = dlg
        return dlg

    # helpers for tests and scripts -----------------------------------------------------------
    def node_item(self, node_id: str) -> NodeItem:
        return self.scene.node_items[node_id]
