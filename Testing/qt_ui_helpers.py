"""Load Slicer module .ui files with real Qt (PySide6, offscreen) and render layout previews.

Shared by the Segment and Train module tests. Slicer's own widgets (CTK, MRML) do not exist in
plain Qt, so each gets a simple stand-in registered under the same class name: the layout,
names and texts are real, the MRML behaviour is not. Rendered PNGs are labelled as a
"layout preview rendered outside Slicer".

    widget = load_ui(path)                      # QWidget tree, every child named as in the .ui
    names = widget_names(widget)                # objectName of every child
    used = ui_names_used(source_files)          # names the Python code reaches as `ui.<name>`
    render_png(widget, out_png, previews={...}) # fill stand-ins with sample texts, save a PNG
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Set

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtCore, QtGui, QtWidgets  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402


class qMRMLWidget(QtWidgets.QWidget):
    """Slicer's MRML-aware base widget; the stand-in is a plain container."""


class ctkCollapsibleButton(QtWidgets.QGroupBox):
    """Collapsible section: a checkable group box with the same `text` and `collapsed` properties."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._collapsed = False

    def getText(self) -> str:
        return self.title()

    def setText(self, text: str) -> None:
        self.setTitle(("\u25b8 " if self._collapsed else "\u25be ") + text.lstrip("\u25b8\u25be "))

    text = QtCore.Property(str, getText, setText)

    def getCollapsed(self) -> bool:
        return self._collapsed

    def setCollapsed(self, collapsed: bool) -> None:
        self._collapsed = bool(collapsed)
        self.setText(self.title())
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            child.setVisible(not self._collapsed)
        self.setMaximumHeight(24 if self._collapsed else 16777215)

    collapsed = QtCore.Property(bool, getCollapsed, setCollapsed)


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    """Node selector: a combo box; `noneDisplay` is shown when nothing else is previewed."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._none_display = "None"

    def getNoneDisplay(self) -> str:
        return self._none_display

    def setNoneDisplay(self, text: str) -> None:
        self._none_display = text
        if self.count() == 0:
            self.addItem(text)

    noneDisplay = QtCore.Property(str, getNoneDisplay, setNoneDisplay)


class ctkMenuButton(QtWidgets.QPushButton):
    """Push button with a menu arrow."""


class qMRMLSegmentationShow3DButton(ctkMenuButton):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setText("Show 3D")


class ctkSliderWidget(QtWidgets.QDoubleSpinBox):
    """Slider + spin box; the stand-in keeps the spin box (same value/min/max/singleStep/decimals)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._tracking = True

    def hasTracking(self) -> bool:
        return self._tracking

    def setTracking(self, tracking: bool) -> None:
        self._tracking = bool(tracking)

    tracking = QtCore.Property(bool, hasTracking, setTracking)


class ctkPathLineEdit(QtWidgets.QLineEdit):
    """Path chooser; `currentPath` maps to the line edit text."""

    def getCurrentPath(self) -> str:
        return self.text()

    def setCurrentPath(self, path: str) -> None:
        self.setText(path)

    currentPath = QtCore.Property(str, getCurrentPath, setCurrentPath)


class ctkCheckableComboBox(QtWidgets.QComboBox):
    """Combo box of checkable items."""


class ctkSearchBox(QtWidgets.QLineEdit):
    """Search field."""


class qMRMLSubjectHierarchyTreeView(QtWidgets.QTreeView):
    """Subject hierarchy tree."""


class qMRMLSegmentSelectorWidget(QtWidgets.QComboBox):
    """Segmentation + segment selector."""


STAND_INS = (qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox, ctkMenuButton, qMRMLSegmentationShow3DButton,
             ctkSliderWidget, ctkPathLineEdit, ctkCheckableComboBox, ctkSearchBox, qMRMLSubjectHierarchyTreeView,
             qMRMLSegmentSelectorWidget)


def application() -> QtWidgets.QApplication:
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication(["qt_ui_helpers"])


def custom_classes(ui_path: Path) -> Set[str]:
    return set(re.findall(r"<customwidget>\s*<class>(\w+)</class>", Path(ui_path).read_text(encoding="utf-8")))


def load_ui(ui_path: Path) -> QtWidgets.QWidget:
    """Load with QUiLoader; fails if the .ui uses a custom class that has no stand-in here."""
    application()
    missing = custom_classes(ui_path) - {c.__name__ for c in STAND_INS}
    if missing:
        raise AssertionError(f"{ui_path}: no stand-in for custom widget class(es) {sorted(missing)}; add one to {__file__}")
    loader = QUiLoader()
    for cls in STAND_INS:
        loader.registerCustomWidget(cls)
    ui_file = QtCore.QFile(str(ui_path))
    if not ui_file.open(QtCore.QIODevice.ReadOnly):
        raise FileNotFoundError(ui_path)
    messages = []
    previous = QtCore.qInstallMessageHandler(lambda mode, context, text: messages.append(text))
    try:
        widget = loader.load(ui_file)
    finally:
        ui_file.close()
        QtCore.qInstallMessageHandler(previous)
    if widget is None:
        raise AssertionError(f"QUiLoader could not load {ui_path}: {loader.errorString()}")
    # The MRML scene signal exists only in Slicer; anything else Qt complains about is a real defect.
    widget.setProperty("loadWarnings", [m for m in messages if not _is_mrml_scene_message(m)])
    return widget


def _is_mrml_scene_message(text: str) -> bool:
    return "mrmlSceneChanged(vtkMRMLScene*)" in text or "(sender name:" in text or "(receiver name:" in text


def load_warnings(widget: QtWidgets.QWidget) -> list:
    """Qt warnings from loading (unknown properties, bad connections), MRML-scene ones excluded."""
    return list(widget.property("loadWarnings") or [])


def widget_names(root: QtWidgets.QWidget) -> Set[str]:
    names = {w.objectName() for w in root.findChildren(QtCore.QObject) if w.objectName()}
    names.add(root.objectName())
    return names


_UI_ATTRIBUTE = re.compile(r"\bui\.([A-Za-z_]\w*)")


def ui_names_used(sources: Iterable[Path]) -> Dict[str, Set[str]]:
    """name -> files, for every `ui.<name>` (or `self.ui.<name>`) in the given Python files."""
    used: Dict[str, Set[str]] = {}
    for source in sources:
        for name in _UI_ATTRIBUTE.findall(Path(source).read_text(encoding="utf-8")):
            used.setdefault(name, set()).add(Path(source).name)
    return used


def fill_previews(root: QtWidgets.QWidget, previews: Mapping[str, object]) -> None:
    """Sample content so the preview looks like a panel in use: combo texts, list items, labels."""
    for name, value in previews.items():
        w = root.findChild(QtWidgets.QWidget, name)
        if w is None:
            raise KeyError(f"preview for unknown widget {name!r}")
        if isinstance(w, QtWidgets.QComboBox):
            w.clear()
            w.addItems([value] if isinstance(value, str) else list(value))
        elif isinstance(w, QtWidgets.QListWidget):
            w.clear()
            for text in value:
                item = QtWidgets.QListWidgetItem(text)
                item.setFlags(item.flags() | QtCore.Qt.ItemIsUserCheckable)
                item.setCheckState(QtCore.Qt.Checked)
                w.addItem(item)
        elif isinstance(w, QtWidgets.QAbstractButton) and isinstance(value, bool):
            if w.isCheckable():  # a check box's state
                w.setChecked(value)
            else:  # a push button the code enables after a run
                w.setEnabled(value)
        elif isinstance(w, QtWidgets.QTableWidget):  # (header, rows of cell texts)
            header, rows = value
            w.setColumnCount(len(header))
            w.setHorizontalHeaderLabels(list(header))
            w.setRowCount(len(rows))
            for r, row in enumerate(rows):
                for c, text in enumerate(row):
                    w.setItem(r, c, QtWidgets.QTableWidgetItem(str(text)))
            w.resizeColumnsToContents()
        elif isinstance(w, QtWidgets.QProgressBar):
            w.setValue(int(value[0]))
            w.setFormat(str(value[1]))
        elif isinstance(w, QtWidgets.QPlainTextEdit):
            w.setPlainText(str(value))
        elif hasattr(w, "setText"):
            w.setText(str(value))
        else:
            raise TypeError(f"no preview filler for {type(w).__name__} {name!r}")


def render_png(root: QtWidgets.QWidget, out_png: Path, previews: Optional[Mapping[str, object]] = None,
               width: int = 420, caption: str = "Layout preview rendered outside Slicer (Qt stand-ins for CTK/MRML widgets)") -> Path:
    """Render the panel (with a caption) to a PNG; returns the path."""
    application()
    if previews:
        fill_previews(root, previews)
    frame = QtWidgets.QWidget()
    layout = QtWidgets.QVBoxLayout(frame)
    note = QtWidgets.QLabel(caption)
    note.setStyleSheet("color: #666; font-style: italic;")
    note.setWordWrap(True)
    layout.addWidget(root)
    layout.addWidget(note)
    frame.resize(width, 10)
    frame.adjustSize()
    frame.resize(width, frame.sizeHint().height())
    image = frame.grab()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(out_png), "PNG"):
        raise OSError(f"could not write {out_png}")
    root.setParent(None)
    return out_png
