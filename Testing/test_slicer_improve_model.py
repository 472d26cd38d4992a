""""Improve this model": the Segment panel hands its last result and the model that made it to the
Train module through the Train module widget's public `improveModel`; the wizard ticks that case
and selects that base model. On Slicer's real core (scene, nodes, module classes, engine model list).

The panels need Slicer's Qt (PythonQt). The hand-over test mocks `qt` and records the two
slicer.util calls that need Slicer's module manager; the wizard tests run the real cases and
settings pages on real Qt widgets (PySide6), read the way PythonQt reads them (`pythonqt_style_qt`).
"""
from __future__ import annotations

import sys
from unittest import mock

import pytest

import slicer_stubs


def _uninstall(before) -> None:
    """Remove the stand-ins; nothing built on the qt stand-in outlives the test (only the modules'
    own packages are dropped: torch, if imported here first, cannot be re-imported)."""
    slicer_stubs.uninstall()
    for name in set(sys.modules) - before:
        if name.startswith("MedNeXtV2"):
            del sys.modules[name]


@pytest.fixture
def modules(tmp_path, monkeypatch):
    before = set(sys.modules)
    slicer = slicer_stubs.install(str(tmp_path / "slicer-temp"))
    monkeypatch.setitem(sys.modules, "qt", mock.MagicMock())  # the widget files' import only
    try:
        from MedNeXtV2SegmentLib.widget import SegmentPanel
        from MedNeXtV2Train import MedNeXtV2TrainWidget

        yield slicer, SegmentPanel, MedNeXtV2TrainWidget
    finally:
        _uninstall(before)


def test_improve_opens_train_with_the_result_and_its_model(modules, data_dir, monkeypatch):
    slicer, SegmentPanel, MedNeXtV2TrainWidget = modules
    volume = slicer_stubs.load_volume(data_dir / "mr-breast" / "breast1_image.nrrd", "breast1")
    result = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "breast1 lesion")

    calls = []
    trainWidget = MedNeXtV2TrainWidget.__new__(MedNeXtV2TrainWidget)  # as Slicer made it; setup() needs Qt
    trainWidget.wizard = mock.Mock(improveModel=lambda *args: calls.append(("improveModel",) + args))
    monkeypatch.setattr(slicer.util, "selectModule", lambda name: calls.append(("selectModule", name)), raising=False)
    monkeypatch.setattr(slicer.util, "getModuleWidget", lambda name: {"MedNeXtV2Train": trainWidget}[name], raising=False)

    panel = SegmentPanel.__new__(SegmentPanel)
    panel.ui, panel.run, panel.lastResult = mock.Mock(), None, None
    panel.updateButtons = lambda: None
    panel.onImproveModel()  # no run yet: nothing to improve
    assert calls == []

    panel.lastResult = (volume, result, "breast-lesion-mr")  # what onTimer keeps after a segment run
    panel.onImproveModel()
    assert calls == [("selectModule", "MedNeXtV2Train"), ("improveModel", volume, result, "breast-lesion-mr")]

    slicer.mrmlScene.RemoveNode(result)  # the user deleted the result: the action has nothing to train on
    assert panel.improvableResult() is None
    panel.onImproveModel()
    assert len(calls) == 2


def pythonqt_style_qt():
    """The `qt` members the cases page and the engine client use, from real Qt (PySide6), read the
    way PythonQt reads them in Slicer: `table.rowCount` and `combo.currentData` are properties there,
    methods here; a signal is connected by its signature (`timer.connect("timeout()", slot)`)."""
    import types

    from qt_ui_helpers import QtCore, QtWidgets

    QtWidgets.QApplication.instance() or QtWidgets.QApplication([])

    class QComboBox(QtWidgets.QComboBox):
        currentData = property(lambda self: QtWidgets.QComboBox.currentData(self))

    class QTableWidget(QtWidgets.QTableWidget):
        rowCount = property(lambda self: QtWidgets.QTableWidget.rowCount(self))

    class QTimer(QtCore.QTimer):
        def connect(self, signal, slot):
            getattr(self, signal.split("(")[0]).connect(slot)

    return types.SimpleNamespace(QComboBox=QComboBox, QTableWidget=QTableWidget, Qt=QtCore.Qt,
                                 QTableWidgetItem=QtWidgets.QTableWidgetItem, QTimer=QTimer)


def test_the_case_table_takes_the_corrected_result(tmp_path, data_dir, monkeypatch):
    """CasesPage.useCase on a real Qt table and real MRML nodes: the volume's row takes the new
    result (made after the table was filled), no second row of that volume, other cases untouched."""
    import types

    qt = pythonqt_style_qt()
    before = set(sys.modules)
    slicer = slicer_stubs.install(str(tmp_path / "slicer-temp"))
    monkeypatch.setitem(sys.modules, "qt", qt)
    try:
        from MedNeXtV2TrainLib.cases_page import CASE, SEGMENTATION, USE, CasesPage
        from MedNeXtV2TrainLib.logic import MedNeXtV2TrainLogic

        def segmentation(name, volume):
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
            return node

        breast = slicer_stubs.load_volume(data_dir / "mr-breast" / "breast1_image.nrrd", "breast1")
        brain = slicer_stubs.load_volume(data_dir / "mr-brain-lesion" / "brain1_image.nrrd", "brain1")
        old, brainLesion = segmentation("breast1 old", breast), segmentation("brain1 lesion", brain)
        page = CasesPage.__new__(CasesPage)  # __init__ only connects the page's buttons
        page.wizard, page.logic, page.say = types.SimpleNamespace(), MedNeXtV2TrainLogic, lambda *a, **k: False
        page.ui = types.SimpleNamespace(casesTable=qt.QTableWidget(0, 5))
        page.fillCasesFromScene()
        table = page.ui.casesTable
        assert [c.segmentation for c in page.sceneCases()] == [old, brainLesion]
        table.item(1, USE).setCheckState(qt.Qt.Unchecked)  # the user left brain1 out

        corrected = segmentation("breast1 - Breast", breast)  # the Segment run's result, corrected
        assert page.useCase(breast, corrected) == "breast1"
        assert table.rowCount == 2 and table.cellWidget(0, SEGMENTATION).currentData == corrected.GetID()
        assert [(c.name, c.volume, c.segmentation) for c in page.sceneCases()] == [("breast1", breast, corrected)]

        third = slicer_stubs.load_volume(data_dir / "mr-breast" / "breast1_image.nrrd", "scan3")
        result = segmentation("scan3 - Breast", third)
        table.item(1, USE).setCheckState(qt.Qt.Checked)
        assert page.useCase(third, result) == "scan3"  # a new row (or the pairing's), ticked
        assert [c.segmentation for c in page.sceneCases()] == [corrected, brainLesion, result]
        assert [table.item(r, CASE).text() for r in range(table.rowCount)] == ["breast1", "brain1", "scan3"]
    finally:
        _uninstall(before)


def test_wizard_opens_with_the_case_and_the_model_as_base(tmp_path, data_dir, monkeypatch):
    """TrainWizard.improveModel with the real cases and settings pages on real Qt widgets (read
    PythonQt's way), real MRML nodes and the real engine's model list: the base model is selected at
    once when the list is cached, and when the list is still being read, once it arrives; a list read
    later keeps the base the user chose after that."""
    import time
    import types

    qt = pythonqt_style_qt()
    monkeypatch.setenv("MEDNEXTV2_HOME", str(tmp_path / "home"))
    before = set(sys.modules)
    slicer = slicer_stubs.install(str(tmp_path / "slicer-temp"))
    monkeypatch.setitem(sys.modules, "qt", qt)
    try:
        from MedNeXtV2SegmentLib.engine_client import EngineClient
        from MedNeXtV2SegmentLib.tinybundle import make_tiny_bundle
        from MedNeXtV2TrainLib.cases_page import CasesPage
        from MedNeXtV2TrainLib.logic import MedNeXtV2TrainLogic
        from MedNeXtV2TrainLib.settings_page import SettingsPage
        from MedNeXtV2TrainLib.widget import CASES, TrainWizard

        engine = EngineClient(python=sys.executable)
        logic = MedNeXtV2TrainLogic(engine)
        run = engine.startModelAction("import", str(make_tiny_bundle(tmp_path / "bundles")))  # Import button
        while not run.finished:
            time.sleep(0.1)
        engine.finishModelAction(run)  # the list is read again in the background: still being read

        def combo(*items):
            box = qt.QComboBox()
            for item in items:
                box.addItem(item)
            return box

        field = types.SimpleNamespace
        wizard = TrainWizard.__new__(TrainWizard)  # __init__ connects signals and reads the saved settings
        wizard.ui = field(casesTable=qt.QTableWidget(0, 5), sourceSceneRadio=field(checked=True),
                          sourceFolderRadio=field(checked=False), modelNameEdit=field(text="My model"),
                          baseModelComboBox=qt.QComboBox(), architectureComboBox=field(enabled=True),
                          baseModelInfoLabel=field(text=""), modalityComboBox=combo("CT", "MR", "other"),
                          wizardStack=field(setCurrentIndex=lambda index: setattr(wizard, "page", index)),
                          stepLabel=field(text=""), backButton=field(enabled=True),
                          nextButton=field(enabled=True, text=""), statusLabel=field(text=""))
        wizard.logic = logic
        wizard.models, wizard.union, wizard.wantedBaseModel = [], [], ""
        wizard.runPages, wizard.caseWork = field(busy=False), None
        engine.modelList.addListener(wizard.onModelList)  # as TrainWizard.__init__ does
        wizard.casesPage, wizard.settingsPage = CasesPage.__new__(CasesPage), SettingsPage.__new__(SettingsPage)
        for page in (wizard.casesPage, wizard.settingsPage):
            page.wizard, page.ui, page.logic, page.say = wizard, wizard.ui, wizard.logic, wizard.say

        volume = slicer_stubs.load_volume(data_dir / "mr-breast" / "breast1_image.nrrd", "breast1")
        result = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "breast1 - Self-test tiny model")
        result.SetReferenceImageGeometryParameterFromVolumeNode(volume)

        # The list is still being read (the import changed it): selected when it arrives.
        assert engine.modelList.models == [] and engine.modelList.load()  # True: a read is under way
        wizard.improveModel(volume, result, "selftest-tiny")
        assert wizard.ui.baseModelComboBox.currentData == ""  # "Train from scratch" until then
        while not engine.modelList.poll():  # what the engine client's timer does (no event loop runs here)
            time.sleep(0.1)
        assert wizard.ui.baseModelComboBox.currentData == "selftest-tiny"
        assert wizard.page == CASES and "'breast1' is ticked" in wizard.ui.statusLabel.text
        assert wizard.ui.modelNameEdit.text == "selftest-tiny improved"  # the title was not known yet
        assert [(c.volume, c.segmentation) for c in wizard.casesPage.sceneCases()] == [(volume, result)]

        # Cached list, another base chosen meanwhile: Improve selects the result's model again.
        wizard.ui.baseModelComboBox.setCurrentIndex(0)
        wizard.ui.modelNameEdit.text = "My model"
        wizard.improveModel(volume, result, "selftest-tiny")
        assert wizard.ui.modelNameEdit.text == "Self-test tiny model improved"
        assert wizard.ui.baseModelComboBox.currentData == "selftest-tiny" and wizard.wantedBaseModel == ""
        assert wizard.ui.casesTable.rowCount == 1

        # The user then picks another base; a list read later (a model added meanwhile) keeps that choice.
        wizard.ui.baseModelComboBox.setCurrentIndex(0)
        engine.modelList.reload()
        while not engine.modelList.poll():
            time.sleep(0.1)
        assert wizard.ui.baseModelComboBox.currentData == ""
    finally:
        _uninstall(before)
