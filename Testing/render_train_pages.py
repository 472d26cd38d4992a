"""Render each page of the MedNeXtV2Train wizard to a PNG, outside Slicer (layout previews).

    python Testing/render_train_pages.py [OUT_DIR]     # default docs/images -> train_page_*.png

Used by Testing/test_slicer_train_ui.py (into a temporary folder). The sample content is what
the wizard shows for three labeled MR cases; the curves are drawn by the module's own
curve_painter from a sample training run, with real Qt (PySide6).
"""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))  # when run as a script from elsewhere
from repo_folders import REPO, import_like_slicer  # noqa: E402

import_like_slicer()
from qt_ui_helpers import QtCore, QtGui, QtWidgets, application, load_ui, render_png  # noqa: E402

from MedNeXtV2TrainLib.curve_painter import render_curves  # noqa: E402
from MedNeXtV2TrainLib.train_progress import parse_training_line  # noqa: E402
from MedNeXtV2TrainLib.training_curves import TrainingCurves  # noqa: E402

UI_PATH = REPO / "MedNeXtV2Train" / "Resources" / "UI" / "MedNeXtV2Train.ui"
PAGE_FILES = ("train_page_1_cases.png", "train_page_2_labels.png", "train_page_3_settings.png",
              "train_page_4_train.png", "train_page_5_finish.png")
# The names PythonQt exposes as `qt.*`, taken from PySide6 for drawing outside Slicer.
PYSIDE_QT = types.SimpleNamespace(QPixmap=QtGui.QPixmap, QColor=QtGui.QColor, QPainter=QtGui.QPainter,
                                  QPen=QtGui.QPen, QPointF=QtCore.QPointF)


def sample_curves() -> TrainingCurves:
    """A plausible 12-epoch run, fed through the real progress parser."""
    import json
    import math

    curves = TrainingCurves()
    dice = None
    for epoch in range(1, 13):
        for it in range(0, 50, 5):
            step = (epoch - 1) * 50 + it
            loss = 0.25 + 0.9 * math.exp(-step / 180) + 0.03 * math.sin(step)
            curves.add(parse_training_line(json.dumps({"stage": "train", "fraction": epoch / 12, "epoch": epoch,
                                                       "iteration": it, "loss": loss, "dice": dice})))
        dice = {"liver": 0.93 - 0.5 * math.exp(-epoch / 3), "tumor": 0.72 - 0.6 * math.exp(-epoch / 4)}
    curves.add(parse_training_line(json.dumps({"stage": "done", "fraction": 1.0, "epoch": 13, "dice": dice})))
    return curves


def _table(widget: QtWidgets.QTableWidget, rows: List[List[object]]) -> None:
    widget.setRowCount(0)
    for values in rows:
        row = widget.rowCount()
        widget.insertRow(row)
        for column, value in enumerate(values):
            if isinstance(value, list):
                combo = QtWidgets.QComboBox()
                combo.addItems(value)
                widget.setCellWidget(row, column, combo)
            elif isinstance(value, QtGui.QColor):
                item = QtWidgets.QTableWidgetItem("")
                item.setBackground(QtGui.QBrush(value))
                widget.setItem(row, column, item)
            elif isinstance(value, bool):
                item = QtWidgets.QTableWidgetItem()
                item.setCheckState(QtCore.Qt.Checked if value else QtCore.Qt.Unchecked)
                widget.setItem(row, column, item)
            else:
                widget.setItem(row, column, QtWidgets.QTableWidgetItem(str(value)))
    widget.resizeColumnsToContents()


def _page(index: int):
    root = load_ui(UI_PATH)
    find = lambda cls, name: root.findChild(cls, name)  # noqa: E731
    find(QtWidgets.QStackedWidget, "wizardStack").setCurrentIndex(index)
    find(QtWidgets.QPushButton, "backButton").setEnabled(index > 0)
    next_button = find(QtWidgets.QPushButton, "nextButton")  # as TrainWizard.goTo sets them
    next_button.setEnabled(index < 4)
    next_button.setText("Next >" if index < 3 else "Finish >")
    return root, find


def render_pages(out_dir: Path) -> Dict[str, Path]:
    application()
    out_dir = Path(out_dir)
    written = {}

    root, find = _page(0)
    _table(find(QtWidgets.QTableWidget, "casesTable"), [
        [True, "Liver 01", ["Liver 01"], ["Liver 01 segmentation"], "ok"],
        [True, "Liver 02", ["Liver 02"], ["Liver 02 segmentation"], "ok"],
        [True, "Liver 03", ["Liver 03"], ["Segmentation"], "warning"],
        [False, "Liver 04", ["Liver 04"], ["Liver 04 seg"], "error"]])
    written["cases"] = render_png(root, out_dir / PAGE_FILES[0], previews={
        "stepLabel": "Step 1 of 5: Cases",
        "caseProblemsText": "[warning] Liver 03: no segment named tumor (other cases have it): those structures count "
                            "as background here unless you rename or leave the label out\n"
                            "[error] Liver 04: the segmentation is empty on this volume's grid",
        "statusLabel": "4 case(s) paired."})

    root, find = _page(1)
    _table(find(QtWidgets.QTableWidget, "labelsTable"), [
        # Trained from scratch: no MedNeXt-v2 weights are public, so the preview shows no base model
        ["Liver", QtGui.QColor(221, 130, 101), "4/4", ["New label", "Leave out"], "liver"],
        ["tumour", QtGui.QColor(255, 0, 0), "3/4", ["New label", "Leave out"], "tumour"],
        ["vessels", QtGui.QColor(0, 151, 206), "1/4", ["Leave out", "New label"], "vessels"]])
    written["labels"] = render_png(root, out_dir / PAGE_FILES[1], previews={
        "stepLabel": "Step 2 of 5: Labels", "labelsSummaryLabel": "3 segment name(s) across 4 case(s).",
        "statusLabel": "Labels: 1 = liver, 2 = tumour"})

    root, find = _page(2)
    written["settings"] = render_png(root, out_dir / PAGE_FILES[2], previews={
        "stepLabel": "Step 3 of 5: Base model & settings",
        "baseModelComboBox": ["Train from scratch"],
        "baseModelInfoLabel": "A new network of the chosen architecture, trained from random weights.",
        "architectureComboBox": ["v2-tiny", "v2-base", "v2-width2"],
        "presetComboBox": ["Quick (15 min)", "Standard (90 min)", "Thorough (300 epochs)"],
        "presetInfoLabel": "15 minutes; a first result on a laptop, good for checking the labels",
        "modelNameEdit": "Liver tumour (CT)", "jobsFolderEdit": "~/.local/share/mednextv2/training"})

    root, find = _page(3)
    curves = sample_curves()
    colors = {"liver": (221, 130, 101), "tumor": (200, 30, 30)}
    for name, series, title, y_range in (("lossPlotLabel", [curves.loss_series()], "Training loss", None),
                                         ("dicePlotLabel", curves.dice_series(), "Validation Dice", (0.0, 1.0))):
        find(QtWidgets.QLabel, name).setPixmap(render_curves(PYSIDE_QT, 380, 170, title, series, y_range=y_range, colors=colors))
    find(QtWidgets.QPushButton, "startButton").setEnabled(False)
    last = curves.last
    written["train"] = render_png(root, out_dir / PAGE_FILES[3], previews={
        "stepLabel": "Step 4 of 5: Train", "trainProgressBar": (62, "62%"),
        "epochLabel": "Epoch 8 · loss 0.291 · Dice 0.74 · lr 7.2e-04", "etaLabel": "5 min 40 s left",
        "resumeComboBox": ["Liver tumour (cancelled, epoch 3, 2026-11-27T17:05)"],
        "logText": "INFO mednextv2.train: 4 case(s) valid\nINFO mednextv2.train: plan: spacing [2.5, 0.8, 0.8], patch [64, 64, 64]",
        "statusLabel": f"Training in ~/.local/share/mednextv2/training/liver-tumour-ct ({last.stage})"})

    root, find = _page(4)
    _table(find(QtWidgets.QTableWidget, "metricsTable"), [["liver", "0.912"], ["tumour", "0.684"]])
    written["finish"] = render_png(root, out_dir / PAGE_FILES[4], previews={
        "stepLabel": "Step 5 of 5: Finish",
        "resultSummaryLabel": "Liver tumour (CT) (liver-tumour-ct): 2 label(s), mean validation Dice 0.798.",
        "registerStatusLabel": "Registered as 'liver-tumour-ct'.", "statusLabel": "Training finished."})
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "images"
    for page, path in render_pages(target).items():
        print(f"{page}: {path}")
