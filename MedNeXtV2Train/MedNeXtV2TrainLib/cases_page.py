"""The wizard's first page: which volume and segmentation make each training case.

Cases come from the scene (paired automatically, then edited by hand) or from an nnU-Net raw
dataset folder. Scene changes are merged into the table (pairing.merge_pairs), never rebuilt.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import qt
import slicer

from MedNeXtV2TrainLib.case_checks import has_errors, one_case_note
from MedNeXtV2TrainLib.pairing import CaseRow, merge_pairs, row_for_case
from MedNeXtV2TrainLib.scene_cases import SceneCase

USE, CASE, VOLUME, SEGMENTATION, CHECK = range(5)


class CasesPage:
    def __init__(self, wizard) -> None:
        self.wizard, self.ui, self.logic, self.say = wizard, wizard.ui, wizard.logic, wizard.say
        self.ui.sourceFolderRadio.connect("toggled(bool)", self.onSourceChanged)
        self.ui.browseFolderButton.connect("clicked(bool)", self.onBrowseFolder)
        self.ui.autoPairButton.connect("clicked(bool)", self.fillCasesFromScene)
        self.ui.addCaseButton.connect("clicked(bool)", lambda: self.addCaseRow("", None, None))
        self.ui.removeCaseButton.connect("clicked(bool)", self.onRemoveCase)
        self.ui.checkCasesButton.connect("clicked(bool)", lambda: self.checkCases())
        self.ui.casesTable.horizontalHeader().setSectionResizeMode(qt.QHeaderView.ResizeToContents)

    def fromFolder(self) -> bool:
        return self.ui.sourceFolderRadio.checked

    def onSourceChanged(self, fromFolder: bool) -> None:
        self.ui.folderPathEdit.enabled = fromFolder
        self.ui.browseFolderButton.enabled = fromFolder
        for button in (self.ui.autoPairButton, self.ui.addCaseButton, self.ui.removeCaseButton):
            button.enabled = not fromFolder
        self.ui.casesTable.setRowCount(0)
        if not fromFolder:
            self.fillCasesFromScene()

    def onBrowseFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(None, "Dataset folder", self.ui.folderPathEdit.text)
        if folder:
            self.ui.folderPathEdit.text = folder
            self.fillCasesFromFolder()

    def fillCasesFromFolder(self) -> bool:
        from mednextv2.errors import InputError
        from mednextv2.train.datasets import discover_dataset

        self.ui.casesTable.setRowCount(0)
        if not self.ui.folderPathEdit.text.strip():
            return self.say("Choose the dataset folder (Browse...).")
        try:
            self.wizard.folderDataset = discover_dataset(self.ui.folderPathEdit.text.strip())
        except InputError as e:
            self.ui.caseProblemsText.setPlainText(str(e))
            return False
        for case in self.wizard.folderDataset.cases:
            row = self.ui.casesTable.rowCount
            self.ui.casesTable.insertRow(row)
            for column, text in ((CASE, case.name), (VOLUME, case.images[0].name), (SEGMENTATION, case.label.name), (CHECK, "")):
                item = qt.QTableWidgetItem(text)
                item.setFlags(qt.Qt.ItemIsEnabled)
                self.ui.casesTable.setItem(row, column, item)
        count = len(self.wizard.folderDataset.cases)
        note = f"\n[warning] {one_case_note()}" if count == 1 else ""
        self.ui.caseProblemsText.setPlainText(f"{count} case(s); the engine checks every file before training starts.{note}")
        return count >= 1 or self.say("The folder has no case.")

    def fillCasesFromScene(self) -> None:
        """Merge the scene's pairs into the table: rows the user made, edited or unticked stay."""
        table = self.ui.casesTable
        rows = [CaseRow(table.cellWidget(r, VOLUME).currentData, table.cellWidget(r, SEGMENTATION).currentData,
                        table.item(r, USE).checkState() == qt.Qt.Checked) for r in range(table.rowCount)]
        pairing = self.logic.pairScene()
        stale, added = merge_pairs(rows, pairing.pairs, lambda nodeId: slicer.mrmlScene.GetNodeByID(nodeId) is not None)
        for row in reversed(stale):
            table.removeRow(row)
        for pair in added:
            volume = slicer.mrmlScene.GetNodeByID(pair.volume_id)
            self.addCaseRow(volume.GetName(), pair.volume_id, pair.segmentation_id, pair.reason)
        unpaired = len(pairing.unpaired_segmentations)
        self.say(f"{table.rowCount} case(s); {len(added)} new pair(s) found" + (
            f"; {unpaired} segmentation(s) without a volume: add a row to pair them by hand." if unpaired else "."),
            error=False)

    def addCaseRow(self, name: str, volumeId: Optional[str], segmentationId: Optional[str], reason: str = "") -> None:
        table = self.ui.casesTable
        row = table.rowCount
        table.insertRow(row)
        use = qt.QTableWidgetItem()
        use.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsUserCheckable)
        use.setCheckState(qt.Qt.Checked)
        table.setItem(row, USE, use)
        table.setItem(row, CASE, qt.QTableWidgetItem(name or f"case{row + 1}"))
        for column, className, selected in ((VOLUME, "vtkMRMLScalarVolumeNode", volumeId),
                                            (SEGMENTATION, "vtkMRMLSegmentationNode", segmentationId)):
            combo = qt.QComboBox()
            for node in slicer.util.getNodesByClass(className):
                if not node.IsA("vtkMRMLLabelMapVolumeNode"):
                    combo.addItem(node.GetName(), node.GetID())
            combo.setCurrentIndex(max(0, combo.findData(selected)) if selected else -1)
            table.setCellWidget(row, column, combo)
        table.setItem(row, CHECK, qt.QTableWidgetItem(reason))

    def useCase(self, volumeNode, segmentationNode) -> str:
        """Make (volume, segmentation) a ticked case (pairing.row_for_case); returns its case name."""
        self.fillCasesFromScene()
        table = self.ui.casesTable
        rows = [CaseRow(table.cellWidget(r, VOLUME).currentData, table.cellWidget(r, SEGMENTATION).currentData)
                for r in range(table.rowCount)]
        row, others = row_for_case(rows, volumeNode.GetID(), segmentationNode.GetID())
        if row is None:
            self.addCaseRow(volumeNode.GetName(), volumeNode.GetID(), segmentationNode.GetID(), "from Segment")
            row = table.rowCount - 1
        combo = table.cellWidget(row, SEGMENTATION)
        if combo.findData(segmentationNode.GetID()) < 0:  # made after the row's list was filled
            combo.addItem(segmentationNode.GetName(), segmentationNode.GetID())
        combo.setCurrentIndex(combo.findData(segmentationNode.GetID()))
        for other in others:
            table.item(other, USE).setCheckState(qt.Qt.Unchecked)
        table.item(row, USE).setCheckState(qt.Qt.Checked)
        table.selectRow(row)
        return table.item(row, CASE).text()

    def onRemoveCase(self) -> None:
        rows = sorted({index.row() for index in self.ui.casesTable.selectedIndexes()}, reverse=True)
        for row in rows:
            self.ui.casesTable.removeRow(row)

    def sceneCases(self) -> List[SceneCase]:
        table, cases = self.ui.casesTable, []
        for row in range(table.rowCount):
            if table.item(row, USE).checkState() != qt.Qt.Checked:
                continue
            volumeId = table.cellWidget(row, VOLUME).currentData
            segmentationId = table.cellWidget(row, SEGMENTATION).currentData
            if not volumeId or not segmentationId:
                raise ValueError(f"row {row + 1}: pick both a volume and a segmentation, or untick the row")
            cases.append(SceneCase(table.item(row, CASE).text().strip(), slicer.mrmlScene.GetNodeByID(volumeId),
                                   slicer.mrmlScene.GetNodeByID(segmentationId)))
        return cases

    def checkCases(self, onReady: Optional[Callable[[], None]] = None) -> None:
        """Check the ticked cases, one per timer tick (Slicer stays responsive; the button becomes
        Cancel meanwhile); `onReady()` once they pass."""
        if self.wizard.caseWork is not None:  # the button reads "Cancel check" meanwhile
            self.wizard.cancelCaseWork()
            return
        if self.fromFolder():
            if self.fillCasesFromFolder() and onReady is not None:
                onReady()
            return
        try:
            self.wizard.cases = self.sceneCases()
        except ValueError as e:
            self.say(str(e))
            return
        self.ui.checkCasesButton.text = "Cancel check"
        self.wizard.runCaseSteps(self.logic.checkCaseSteps(self.wizard.cases), "Checking",
                                 lambda result: self.showProblems(result, onReady),
                                 onEnd=lambda: setattr(self.ui.checkCasesButton, "text", "Check cases"))

    def showProblems(self, result, onReady: Optional[Callable[[], None]] = None) -> None:
        problems, self.wizard.union, self.wizard.segmentsByCase = result
        table = self.ui.casesTable
        for row in range(table.rowCount):
            if table.item(row, USE).checkState() != qt.Qt.Checked:
                table.item(row, CHECK).setText("left out")
                continue
            name = table.item(row, CASE).text().strip()
            own = [p for p in problems if p.case == name]
            table.item(row, CHECK).setText("error" if has_errors(own) else "warning" if own else "ok")
        self.ui.caseProblemsText.setPlainText("\n".join(f"[{p.severity}] {p}" for p in problems) or "All cases look fine.")
        if has_errors(problems):
            self.say("Fix the errors listed under the table (or untick those cases) first.")
            return
        self.say(f"{len(self.wizard.cases)} case(s) ready.", error=False)
        if onReady is not None:
            onReady()
