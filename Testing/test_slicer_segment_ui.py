"""The Segment panel's .ui loads with real Qt, has every widget the code uses, and renders.

Run this file as a script to refresh docs/images/segment_panel.png.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import slicer_segment_paths  # noqa: F401
from slicer_segment_paths import REPO, SEGMENT_DIR
from qt_ui_helpers import QtGui, QtWidgets, load_ui, load_warnings, render_png, ui_names_used, widget_names

UI = SEGMENT_DIR / "Resources" / "UI" / "MedNeXtV2Segment.ui"
SOURCES = sorted([SEGMENT_DIR / "MedNeXtV2Segment.py", *(SEGMENT_DIR / "MedNeXtV2SegmentLib").glob("*.py")])
PREVIEW = {
    "inputVolumeSelector": "CT chest",
    "modelSelector": ["Lung tumour (CT) - CT - 120.2 MB - downloaded", "Brain lesion (MR) - MR - 98.0 MB - not downloaded"],
    "modelInfoLabel": "Lung tumour (CT). Structures: tumor.",
    "deviceSelector": ["Auto (GPU if available)", "NVIDIA GPU (CUDA)", "Apple GPU (MPS)", "CPU"],
    "deviceHintLabel": "About 20 s per image on GPU (measured).",
    "structuresList": ["tumor"],
    "progressBar": (42, "predict 42% - ETA 1 min 20 s - tile 5/12"),
    "statusLabel": "",
}


def test_ui_loads_without_qt_warnings():
    widget = load_ui(UI)
    assert widget.objectName() == "MedNeXtV2Segment"
    assert load_warnings(widget) == []


def test_every_widget_the_code_uses_is_in_the_ui():
    used = ui_names_used(SOURCES)
    assert len(used) >= 15, f"suspiciously few ui names parsed: {sorted(used)}"
    missing = {name: sorted(files) for name, files in used.items() if name not in widget_names(load_ui(UI))}
    assert not missing, f"used in code but not in {UI.name}: {missing}"


def test_widget_types_match_how_the_code_uses_them():
    widget = load_ui(UI)
    kinds = {"applyButton": QtWidgets.QPushButton, "downloadModelButton": QtWidgets.QPushButton,
             "modelSelector": QtWidgets.QComboBox, "deviceSelector": QtWidgets.QComboBox,
             "structuresList": QtWidgets.QListWidget, "progressBar": QtWidgets.QProgressBar,
             "logTextEdit": QtWidgets.QPlainTextEdit, "ttaCheckBox": QtWidgets.QCheckBox}
    for name, kind in kinds.items():
        assert isinstance(widget.findChild(QtWidgets.QWidget, name), kind), name
    assert widget.findChild(QtWidgets.QWidget, "logCollapsibleButton").property("collapsed") is True
    assert widget.findChild(QtWidgets.QCheckBox, "ttaCheckBox").isChecked()


def test_mrml_selectors_have_node_types_and_a_scene_connection():
    root = ET.parse(UI).getroot()
    selectors = {w.get("name"): w for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    assert set(selectors) == {"inputVolumeSelector", "outputSegmentationSelector"}
    for name, element in selectors.items():
        types = [s.text for s in element.iter("string") if element.find("property[@name='nodeTypes']") is not None]
        assert types, f"{name} has no nodeTypes"
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert connected == set(selectors)
    names = {w.get("name") for w in root.iter("widget")}
    assert {c.findtext("sender") for c in root.iter("connection")} <= names


def render_segment_panel(out_png: Path) -> Path:
    return render_png(load_ui(UI), out_png, PREVIEW)


def test_panel_renders_to_a_non_blank_png(tmp_path):
    out = render_segment_panel(tmp_path / "segment_panel.png")
    image = QtGui.QImage(str(out))
    assert image.width() >= 400 and image.height() >= 400
    colors = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colors) > 20, "the render looks blank"


def test_docs_preview_exists():
    assert (REPO / "docs" / "images" / "segment_panel.png").is_file(), \
        "run `python Testing/test_slicer_segment_ui.py` to render docs/images/segment_panel.png"


if __name__ == "__main__":
    print(render_segment_panel(REPO / "docs" / "images" / "segment_panel.png"))
