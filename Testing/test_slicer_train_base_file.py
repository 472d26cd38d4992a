"""The Train wizard's base choice "From a file": a pretrained AMAES encoder (.pth) picked in a file
dialog becomes `mednextv2 train --base FILE`. The settings page runs on real Qt widgets (PySide6)
read the way PythonQt reads them; the dialog is the one stand-in (no user to click it)."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from test_slicer_improve_model import pythonqt_style_qt

FIXTURE = Path(__file__).parent / "fixtures" / "amaes-mednext" / "amaes_small.pth"


class FileDialog:
    """qt.QFileDialog.getOpenFileName as the user answers it: a path, or "" for Cancel."""
    answers: list = []
    calls: list = []

    @classmethod
    def getOpenFileName(cls, parent, caption, folder, filters):
        cls.calls.append((caption, folder, filters))
        return cls.answers.pop(0)


@pytest.fixture
def page(monkeypatch):
    qt = pythonqt_style_qt()
    qt.QFileDialog = FileDialog
    FileDialog.answers, FileDialog.calls = [], []
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.delitem(sys.modules, "MedNeXtV2TrainLib.settings_page", raising=False)
    from MedNeXtV2TrainLib.settings_page import FROM_FILE, SettingsPage

    field = types.SimpleNamespace
    modality = qt.QComboBox()
    for text in ("CT", "MR", "other"):
        modality.addItem(text)
    page = SettingsPage.__new__(SettingsPage)  # __init__ connects PythonQt-style signals
    page.ui = field(baseModelComboBox=qt.QComboBox(), architectureComboBox=field(enabled=True),
                    baseModelInfoLabel=field(text=""), modalityComboBox=modality)
    page.wizard = field(models=[], union=[], casesPage=field(fromFolder=lambda: True))
    page.ui.baseModelComboBox.currentIndexChanged.connect(page.onBaseModelChanged)
    page.fillModels([], "")
    yield page, FROM_FILE
    sys.modules.pop("MedNeXtV2TrainLib.settings_page", None)


def _choose(combo, data) -> None:
    combo.setCurrentIndex(combo.findData(data))


def test_from_a_file_opens_a_dialog_and_the_file_becomes_the_base(page):
    page, FROM_FILE = page
    combo = page.ui.baseModelComboBox
    assert [combo.itemData(i) for i in range(combo.count())] == ["", FROM_FILE]
    FileDialog.answers = [""]  # Cancel: the choice made before stays
    _choose(combo, FROM_FILE)
    assert combo.currentData == "" and len(FileDialog.calls) == 1
    assert "*.pth" in FileDialog.calls[0][2]
    FileDialog.answers = [str(FIXTURE)]
    _choose(combo, FROM_FILE)
    assert combo.currentData == str(FIXTURE) and combo.currentText() == "Encoder file: amaes_small.pth"
    assert page.ui.architectureComboBox.enabled is False and page.ui.modalityComboBox.currentText() == "MR"
    assert str(FIXTURE) in page.ui.baseModelInfoLabel.text and "decoder starts fresh" in page.ui.baseModelInfoLabel.text
    # A refreshed model list keeps the file, once; another file replaces it.
    page.fillModels([], combo.currentData)
    assert combo.currentData == str(FIXTURE)
    other = str(FIXTURE.with_name("amaes_small_grn.pth"))
    FileDialog.answers = [other]
    _choose(combo, FROM_FILE)
    data = [combo.itemData(i) for i in range(combo.count())]
    assert data == ["", other, FROM_FILE] and combo.currentData == other
    # With a file chosen, Cancel keeps that file, not scratch.
    FileDialog.answers = [""]
    _choose(combo, FROM_FILE)
    assert combo.currentData == other


def test_a_saved_file_base_is_offered_again(page):
    page, FROM_FILE = page
    page.fillModels([], str(FIXTURE))  # the wizard's first list read, with the saved base wanted
    combo = page.ui.baseModelComboBox
    assert combo.currentData == str(FIXTURE) and FileDialog.calls == []


def test_the_engine_takes_the_file_base(page):
    from mednextv2.cli import build_parser
    from MedNeXtV2TrainLib.settings import TrainSettings
    from MedNeXtV2TrainLib.train_command import train_command

    page, _ = page
    settings = TrainSettings(base_model=str(FIXTURE), modality="MR")
    assert settings.problems() == []
    cmd = train_command("py", settings, "/data/cases", "/out/model")
    assert cmd[cmd.index("--base") + 1] == str(FIXTURE) and "--preset" not in cmd
    args = build_parser().parse_args(cmd[3:])  # after "py -m mednextv2"
    assert args.base == str(FIXTURE) and args.preset is None
