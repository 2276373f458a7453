"""Choosing a model from the library: a searchable list of the files in the model library's
folders of one kind (engine.library), each with the family its header tells, and the path field
of inputs that name a model (`Input.library`), which opens it.

The list shows every file at once; families are read a few files per event-loop turn (headers
only, through the describer the node package registers), so a big library does not freeze the
window. The search matches every word typed against the name and the family.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QPointF, Qt, QTimer
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from editor.field_widgets import BUTTON_W, WIDGETS, Action, FileField
from engine import library as lib_mod

KIND_TITLES = {"checkpoints": "checkpoint", "loras": "LoRA", "embeddings": "embedding",
               "controlnet": "ControlNet", "vae": "VAE", "upscale_models": "upscale model"}
FAMILIES_PER_TICK = 8
COL_NAME, COL_FAMILY, COL_SIZE, COL_FOLDER = range(4)


def _size_text(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


class ModelPicker(QDialog):
    """The files of one kind in the model library; `chosen()` is the selected file's name
    (what the path input stores) after the dialog is accepted."""

    def __init__(self, kind: str, current: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.kind = kind
        self.current = current or ""
        self.setWindowTitle(f"Choose a {KIND_TITLES.get(kind, kind)} — model library")
        self.search = QLineEdit()
        self.search.setPlaceholderText("search names and families (e.g. \"xl inpaint\")")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self.apply_filter)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Name", "Family", "Size", "Folder"])
        self.tree.setRootIsDecorated(False)
        self.tree.setUniformRowHeights(True)
        self.tree.setSortingEnabled(False)
        self.tree.itemDoubleClicked.connect(lambda *_: self.accept())
        self.where = QLabel()
        self.where.setWordWrap(True)
        self.where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        folder_button = QPushButton("Models folder…")
        folder_button.setToolTip("choose the folder Loom reads models from (a models folder, "
                                 "or a ComfyUI or AUTOMATIC1111 install); saved in "
                                 f"{lib_mod.settings_path()}")
        folder_button.clicked.connect(self.choose_models_folder)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                   | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        self.ok_button = buttons.button(QDialogButtonBox.StandardButton.Ok)
        bottom = QHBoxLayout()
        bottom.addWidget(folder_button)
        bottom.addStretch(1)
        bottom.addWidget(buttons)
        lay = QVBoxLayout(self)
        lay.addWidget(self.search)
        lay.addWidget(self.tree, 1)
        lay.addWidget(self.where)
        lay.addLayout(bottom)
        self.resize(720, 460)
        self._pending: list[tuple[QTreeWidgetItem, lib_mod.Entry]] = []
        self._timer = QTimer(self)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._describe_some)
        self.tree.currentItemChanged.connect(lambda *_: self._update_ok())
        self.reload()
        self.search.setFocus()

    # contents ---------------------------------------------------------------------------------
    def reload(self) -> None:
        """Read the library's files of this kind again (families are filled in as the event
        loop turns; `finish()` fills them now)."""
        library = lib_mod.current_library()
        self.entries = library.entries(self.kind)
        self.tree.clear()
        self._pending = []
        select = None
        for e in self.entries:
            item = QTreeWidgetItem([e.name, "…", "" if e.is_dir else _size_text(e.size),
                                    str(e.folder)])
            item.setData(COL_NAME, Qt.ItemDataRole.UserRole, e.name)
            item.setToolTip(COL_NAME, str(e.path))
            item.setTextAlignment(COL_SIZE, Qt.AlignmentFlag.AlignRight
                                  | Qt.AlignmentFlag.AlignVCenter)
            self.tree.addTopLevelItem(item)
            self._pending.append((item, e))
            if e.name == self.current or str(e.path) == self.current:
                select = item
        for col in (COL_NAME, COL_FAMILY, COL_SIZE):
            self.tree.resizeColumnToContents(col)
        folders = library.folders(self.kind)
        shown = ", ".join(str(f) for f in folders[:4]) + (" …" if len(folders) > 4 else "")
        if self.entries:
            self.where.setText(f"{len(self.entries)} in {shown}")
        else:
            self.where.setText(f"No {KIND_TITLES.get(self.kind, self.kind)} files yet: put "
                               f"them in {shown or 'a models folder'}, or choose a models "
                               "folder (a ComfyUI or AUTOMATIC1111 install works too).")
        self.where.setToolTip("\n".join(f"{f}  [{s}]" for f, s in library.roots[self.kind]))
        if select is not None:
            self.tree.setCurrentItem(select)
        elif self.tree.topLevelItemCount():
            self.tree.setCurrentItem(self.tree.topLevelItem(0))
        self.apply_filter(self.search.text())
        self._timer.start()

    def _describe_some(self) -> None:
        for _ in range(FAMILIES_PER_TICK):
            if not self._pending:
                self._timer.stop()
                self.apply_filter(self.search.text())
                return
            item, entry = self._pending.pop(0)
            info = lib_mod.describe(entry)
            text = info.get("title") or info.get("family") or \
                ("unreadable" if info.get("error") else "")
            item.setText(COL_FAMILY, text)
            if info.get("error"):
                item.setToolTip(COL_FAMILY, info["error"])

    def finish(self) -> None:
        """Read every family now (tests; the dialog does it a few files at a time)."""
        while self._pending:
            self._describe_some()
        self._timer.stop()
        self.apply_filter(self.search.text())

    # filtering and choosing ------------------------------------------------------------------
    def apply_filter(self, text: str) -> None:
        words = text.lower().split()
        first_visible = None
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            hay = f"{item.text(COL_NAME)} {item.text(COL_FAMILY)}".lower()
            hidden = not all(w in hay for w in words)
            item.setHidden(hidden)
            if not hidden and first_visible is None:
                first_visible = item
        cur = self.tree.currentItem()
        if (cur is None or cur.isHidden()) and first_visible is not None:
            self.tree.setCurrentItem(first_visible)
        self._update_ok()

    def visible_names(self) -> list[str]:
        return [self.tree.topLevelItem(i).text(COL_NAME)
                for i in range(self.tree.topLevelItemCount())
                if not self.tree.topLevelItem(i).isHidden()]

    def family_of(self, name: str) -> str:
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item.text(COL_NAME) == name:
                return item.text(COL_FAMILY)
        raise KeyError(name)

    def select(self, name: str) -> None:
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item.text(COL_NAME) == name:
                self.tree.setCurrentItem(item)
                return
        raise KeyError(name)

    def chosen(self) -> str | None:
        item = self.tree.currentItem()
        if item is None or item.isHidden():
            return None
        return item.data(COL_NAME, Qt.ItemDataRole.UserRole)

    def _update_ok(self) -> None:
        self.ok_button.setEnabled(self.chosen() is not None)

    def choose_models_folder(self) -> None:
        start = str(lib_mod.current_library().folders(self.kind)[0].parent) \
            if lib_mod.current_library().folders(self.kind) else str(Path.home())
        chosen = QFileDialog.getExistingDirectory(self, "Models folder", start)
        if chosen:
            self.set_models_folder(chosen)

    def set_models_folder(self, folder: str) -> None:
        """Save `folder` as the models folder (settings.json) and list it."""
        lib_mod.write_settings({"models_dir": folder})
        self.reload()

    def done(self, result: int) -> None:  # noqa: D401 - Qt's name
        self._timer.stop()
        super().done(result)


class LibraryField(FileField):
    """A path field for an input that names a model (Input.library): besides browsing for a
    file (…), a list button (☰) opens the model library's files of its kind."""

    kind = "file"
    hint = "click to type a name or path · ☰ the model library · … to browse"

    def buttons(self) -> list[tuple[str, float, str, str]]:
        kind = KIND_TITLES.get(self.inp.library or "", "model")
        return [*super().buttons(),
                ("library", BUTTON_W, "☰", f"choose a {kind} from the model library")]

    def click(self, zone: str, screen_pos: QPointF) -> None:
        if zone == "library":
            self.open_picker()
        else:
            super().click(zone, screen_pos)

    def actions(self) -> list[Action]:
        return [Action("Choose from the model library…", self.open_picker), *super().actions()]

    def open_picker(self) -> ModelPicker:
        """Open the list (window-modal, not blocking); choosing sets the value (one undo
        step)."""
        scene = self.item.scene()
        parent = scene.views()[0] if scene is not None and scene.views() else None
        dlg = ModelPicker(self.inp.library or "checkpoints", str(self.value or ""), parent)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)

        def chosen() -> None:
            name = dlg.chosen()
            if name:
                self.set(name)

        dlg.accepted.connect(chosen)
        dlg.open()
        return dlg


WIDGETS["library"] = LibraryField  # field_widgets.widget_for picks it for Input.library paths
