"""MedNeXtV2Train: the wizard's .ui with real Qt, every widget the code uses, the curve drawing, page PNGs."""
from __future__ import annotations

import ast
import types
from pathlib import Path

import pytest

from repo_folders import REPO
from qt_ui_helpers import QtGui, QtWidgets, load_ui, load_warnings, ui_names_used, widget_names  # noqa: E402
from render_train_pages import PAGE_FILES, PYSIDE_QT, UI_PATH, render_pages, sample_curves  # noqa: E402

from MedNeXtV2TrainLib.curve_painter import PALETTE, render_curves  # noqa: E402

LIB = REPO / "MedNeXtV2Train" / "MedNeXtV2TrainLib"
SOURCES = sorted(LIB.glob("*.py")) + [REPO / "MedNeXtV2Train" / "MedNeXtV2Train.py"]


def _module_constant(path: Path, name: str):
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise KeyError(name)


@pytest.fixture(scope="module")
def wizard():
    return load_ui(UI_PATH)


def test_ui_loads_cleanly(wizard):
    assert wizard.objectName() == "MedNeXtV2Train"
    assert load_warnings(wizard) == []


def test_every_widget_the_code_uses_exists(wizard):
    used = ui_names_used(SOURCES)
    assert len(used) > 50, "the widget code should reach its widgets as ui.<name>"
    missing = {name: sorted(files) for name, files in used.items() if name not in widget_names(wizard)}
    assert missing == {}


@pytest.mark.parametrize("name, cls", [
    ("wizardStack", QtWidgets.QStackedWidget), ("casesTable", QtWidgets.QTableWidget),
    ("labelsTable", QtWidgets.QTableWidget), ("metricsTable", QtWidgets.QTableWidget),
    ("minutesSpinBox", QtWidgets.QSpinBox), ("patchZSpinBox", QtWidgets.QSpinBox),
    ("valFractionSpinBox", QtWidgets.QDoubleSpinBox), ("lossPlotLabel", QtWidgets.QLabel),
    ("logText", QtWidgets.QPlainTextEdit), ("trainProgressBar", QtWidgets.QProgressBar),
    ("sourceFolderRadio", QtWidgets.QRadioButton), ("baseModelComboBox", QtWidgets.QComboBox),
])
def test_widget_kinds_fit_the_calls_made_on_them(wizard, name, cls):
    assert isinstance(wizard.findChild(QtWidgets.QWidget, name), cls)


def test_pages_match_the_wizard_steps(wizard):
    pages = _module_constant(LIB / "widget.py", "PAGES")
    stack = wizard.findChild(QtWidgets.QStackedWidget, "wizardStack")
    assert stack.count() == len(pages) == 5
    assert [stack.widget(i).objectName() for i in range(5)] == ["casesPage", "labelsPage", "settingsPage", "trainPage", "finishPage"]
    assert ["casesTable" in widget_names(stack.widget(0)), "labelsTable" in widget_names(stack.widget(1)),
            "presetComboBox" in widget_names(stack.widget(2)), "cancelButton" in widget_names(stack.widget(3)),
            "segmentWithModelButton" in widget_names(stack.widget(4))] == [True] * 5
    combo = wizard.findChild(QtWidgets.QComboBox, "deviceComboBox")
    from mednextv2.inference.options import DEVICES
    assert [combo.itemText(i) for i in range(combo.count())] == list(DEVICES)


def _colored_pixels(image: QtGui.QImage, rgb) -> int:
    count = 0
    for y in range(0, image.height(), 2):
        for x in range(0, image.width(), 2):
            c = image.pixelColor(x, y)
            if abs(c.red() - rgb[0]) + abs(c.green() - rgb[1]) + abs(c.blue() - rgb[2]) < 30:
                count += 1
    return count


def test_curve_painter_draws_with_real_qt():
    curves = sample_curves()
    loss = render_curves(PYSIDE_QT, 300, 160, "Training loss", [curves.loss_series()]).toImage()
    assert (loss.width(), loss.height()) == (300, 160)
    assert _colored_pixels(loss, PALETTE[0]) > 40, "the loss curve is drawn in the first palette color"
    dice = render_curves(PYSIDE_QT, 300, 160, "Dice", curves.dice_series(), y_range=(0, 1),
                         colors={"liver": (0, 200, 0), "tumor": (200, 0, 200)}).toImage()
    assert _colored_pixels(dice, (0, 200, 0)) > 20 and _colored_pixels(dice, (200, 0, 200)) > 20
    empty = render_curves(PYSIDE_QT, 300, 160, "Dice", []).toImage()
    assert _colored_pixels(empty, PALETTE[0]) == 0


def test_every_page_renders(tmp_path):
    written = render_pages(tmp_path)
    assert sorted(p.name for p in written.values()) == sorted(PAGE_FILES)
    for path in written.values():
        image = QtGui.QImage(str(path))
        assert image.width() >= 400 and image.height() >= 400, path


@pytest.fixture
def settings_page(monkeypatch):
    """The settings page module, imported with a stand-in `qt` (its import only; the tests call no Qt)."""
    import sys
    from unittest import mock

    monkeypatch.setitem(sys.modules, "qt", mock.MagicMock())
    from MedNeXtV2TrainLib import settings_page

    return settings_page


def test_patch_boxes_offer_auto_which_leaves_the_patch_to_the_engine(wizard, settings_page):
    SettingsPage = settings_page.SettingsPage
    for axis in "ZYX":
        box = wizard.findChild(QtWidgets.QSpinBox, f"patch{axis}SpinBox")
        box.setValue(0)
        assert (box.minimum(), box.singleStep(), box.text()) == (0, 16, "auto")
        box.setValue(48)
        assert box.text() == "48"

    def page(z, y, x):  # PythonQt reads a spin box's value as a property
        boxes = {f"patch{a}SpinBox": types.SimpleNamespace(value=v) for a, v in zip("ZYX", (z, y, x))}
        return types.SimpleNamespace(ui=types.SimpleNamespace(**boxes))

    assert SettingsPage._patch(page(32, 48, 64)) == (32, 48, 64)
    assert SettingsPage._patch(page(0, 0, 0)) is None and SettingsPage._patch(page(32, 0, 32)) is None


def test_validation_box_offers_auto_which_leaves_the_split_to_the_engine(wizard, settings_page):
    AUTO_VAL_FRACTION, SettingsPage = settings_page.AUTO_VAL_FRACTION, settings_page.SettingsPage
    box = wizard.findChild(QtWidgets.QDoubleSpinBox, "valFractionSpinBox")
    assert box.value() == box.minimum() == AUTO_VAL_FRACTION and box.text() == "auto"  # the default
    box.setValue(0.0)
    assert box.text() == "0.00"  # 0 stays a real choice: hold nothing out

    def page(value):
        return types.SimpleNamespace(ui=types.SimpleNamespace(valFractionSpinBox=types.SimpleNamespace(value=value)))

    assert SettingsPage._val_fraction(page(AUTO_VAL_FRACTION)) is None
    assert SettingsPage._val_fraction(page(0.0)) == 0.0 and SettingsPage._val_fraction(page(0.25)) == 0.25
