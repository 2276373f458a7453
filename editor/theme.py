"""One dark theme for the whole editor: palette, style sheet and the canvas colours."""

from __future__ import annotations

from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

BG = QColor("#1b1c1f")
GRID_MINOR = QColor("#232427")
GRID_MAJOR = QColor("#2c2e32")
NODE_BODY = QColor("#2a2c30")
NODE_TITLE = QColor("#34373d")
NODE_BORDER = QColor("#101113")
FIELD = QColor("#202226")
FIELD_HOVER = QColor("#26292e")
FIELD_FILL = QColor("#3a5f8f")
TEXT = QColor("#dcdde0")
TEXT_DIM = QColor("#8b8f96")
ACCENT = QColor("#4f9cf9")
SELECTED = QColor("#f0b33c")
GROUP = QColor(80, 120, 200, 40)

STATUS_COLORS = {
    "queued": QColor("#8b8f96"),
    "running": QColor("#4f9cf9"),
    "cached": QColor("#3fa7a0"),
    "done": QColor("#5cc26b"),
    "error": QColor("#ef5350"),
    "skipped": QColor("#9aa0a8"),
    "blocked": QColor("#9aa0a8"),
    "not run": QColor("#8b8f96"),
    "cancelled": QColor("#b08a3c"),
}
BADGE = QColor(20, 21, 24, 210)
BYPASS_TINT = QColor(160, 90, 220, 55)

NODE_COLORS = ["#34373d", "#4a3a3a", "#3f4a36", "#36424f", "#4a3f52", "#4f4533", "#334a4a"]

STYLE = """
QMainWindow, QDialog { background: #1f2023; }
QWidget { color: #dcdde0; font-size: 10pt; }
QToolBar { background: #25272b; border: none; border-bottom: 1px solid #141517; spacing: 4px;
           padding: 3px; }
QToolButton { background: transparent; border: 1px solid transparent; border-radius: 4px;
              padding: 4px 8px; }
QToolButton:hover { background: #30333a; border-color: #3b3f46; }
QToolButton:pressed, QToolButton:checked { background: #3a3f48; }
QToolButton#runButton { background: #2f6fdb; color: white; font-weight: 600; padding: 4px 14px; }
QToolButton#runButton:hover { background: #3b7cf0; }
QToolButton#runButton:disabled { background: #2b3a55; color: #9aa7bd; }
QToolButton#cancelButton:enabled { color: #ff8a80; }
QMenuBar { background: #25272b; }
QMenuBar::item:selected { background: #34373d; }
QMenu { background: #2a2c30; border: 1px solid #3b3f46; padding: 4px; }
QMenu::item { padding: 4px 22px 4px 18px; border-radius: 3px; }
QMenu::item:selected { background: #3a5f8f; }
QMenu::separator { height: 1px; background: #3b3f46; margin: 4px 6px; }
QDockWidget { titlebar-close-icon: none; }
QDockWidget::title { background: #25272b; padding: 5px 8px; border-bottom: 1px solid #141517; }
QTabBar::tab { background: #25272b; padding: 5px 12px; border: none; color: #8b8f96; }
QTabBar::tab:selected { background: #2f3237; color: #dcdde0; border-bottom: 2px solid #4f9cf9; }
QListView, QListWidget, QTreeView, QPlainTextEdit, QTextEdit {
    background: #1b1c1f; border: 1px solid #2e3035; border-radius: 4px;
    selection-background-color: #3a5f8f; }
QLineEdit, QSpinBox, QDoubleSpinBox, QComboBox {
    background: #1b1c1f; border: 1px solid #3b3f46; border-radius: 4px; padding: 3px 6px;
    selection-background-color: #3a5f8f; }
QLineEdit:focus, QPlainTextEdit:focus { border-color: #4f9cf9; }
QPushButton { background: #34373d; border: 1px solid #43474f; border-radius: 4px;
              padding: 5px 12px; }
QPushButton:hover { background: #3d4148; }
QPushButton:default { border-color: #4f9cf9; }
QProgressBar { background: #1b1c1f; border: 1px solid #2e3035; border-radius: 4px;
               text-align: center; height: 14px; }
QProgressBar::chunk { background: #2f6fdb; border-radius: 3px; }
QStatusBar { background: #25272b; color: #a9adb4; border-top: 1px solid #141517; }
QSlider::groove:horizontal { height: 4px; background: #3b3f46; border-radius: 2px; }
QSlider::handle:horizontal { width: 12px; margin: -5px 0; border-radius: 6px;
                             background: #4f9cf9; }
QScrollBar:vertical { background: #1b1c1f; width: 10px; }
QScrollBar::handle:vertical { background: #3b3f46; border-radius: 4px; min-height: 20px; }
QScrollBar:horizontal { background: #1b1c1f; height: 10px; }
QScrollBar::handle:horizontal { background: #3b3f46; border-radius: 4px; min-width: 20px; }
QScrollBar::add-line, QScrollBar::sub-line { width: 0; height: 0; }
QToolTip { background: #2a2c30; color: #dcdde0; border: 1px solid #4f9cf9; padding: 4px; }
QSplitter::handle { background: #141517; }
"""


def apply(app: QApplication) -> None:
    app.setStyle("Fusion")
    pal = QPalette()
    roles = {
        QPalette.Window: "#1f2023", QPalette.WindowText: "#dcdde0", QPalette.Base: "#1b1c1f",
        QPalette.AlternateBase: "#25272b", QPalette.ToolTipBase: "#2a2c30",
        QPalette.ToolTipText: "#dcdde0", QPalette.Text: "#dcdde0", QPalette.Button: "#2a2c30",
        QPalette.ButtonText: "#dcdde0", QPalette.BrightText: "#ff8a80",
        QPalette.Highlight: "#3a5f8f", QPalette.HighlightedText: "#ffffff",
        QPalette.Link: "#4f9cf9", QPalette.PlaceholderText: "#6b6f76",
    }
    for role, color in roles.items():
        pal.setColor(role, QColor(color))
    for role in (QPalette.Text, QPalette.ButtonText, QPalette.WindowText):
        pal.setColor(QPalette.Disabled, role, QColor("#6b6f76"))
    app.setPalette(pal)
    app.setStyleSheet(STYLE)


def ui_font(size: float = 9.0, bold: bool = False) -> QFont:
    f = QFont()
    f.setPointSizeF(size)
    f.setBold(bold)
    return f
