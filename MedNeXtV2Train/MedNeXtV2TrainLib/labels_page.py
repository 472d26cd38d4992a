"""The wizard's second page: what each segment name becomes in the new model (a base model's
label, a new label, or left out)."""
from __future__ import annotations

from typing import List

import qt

from MedNeXtV2TrainLib.label_table import BASE, IGNORE, NEW, LabelChoice, dataset_labels, default_choices
from MedNeXtV2TrainLib.logic import base_labels

SEGMENT, COLOR, COUNT, MAP_TO, LABEL_NAME = range(5)


class LabelsPage:
    def __init__(self, wizard) -> None:
        self.wizard, self.ui, self.say = wizard, wizard.ui, wizard.say
        self.ui.resetLabelsButton.connect("clicked(bool)", self.fillLabels)

    def fillLabels(self) -> None:
        table = self.ui.labelsTable
        table.setRowCount(0)
        if self.wizard.casesPage.fromFolder():
            labels = self.wizard.folderDataset.labels if self.wizard.folderDataset is not None else {}
            for value, name in sorted(labels.items()):
                row = table.rowCount
                table.insertRow(row)
                for column, text in ((SEGMENT, name), (COUNT, "all"), (MAP_TO, "by name"), (LABEL_NAME, name)):
                    table.setItem(row, column, qt.QTableWidgetItem(text))
            self.ui.labelsSummaryLabel.text = "Labels come from the folder's dataset.json; the engine maps them to the base model by name."
            return
        base = base_labels(self.wizard.settingsPage.currentModel())
        for segment, choice in zip(self.wizard.union, default_choices(self.wizard.union, base)):
            row = table.rowCount
            table.insertRow(row)
            table.setItem(row, SEGMENT, qt.QTableWidgetItem(segment.name))
            swatch = qt.QTableWidgetItem("")
            swatch.setBackground(qt.QBrush(qt.QColor(*segment.color)))
            table.setItem(row, COLOR, swatch)
            table.setItem(row, COUNT, qt.QTableWidgetItem(f"{segment.case_count}/{len(self.wizard.cases)}"))
            combo = qt.QComboBox()
            combo.addItem("New label", NEW)
            combo.addItem("Leave out", IGNORE)
            for label in base:
                combo.addItem(f"Base: {label.name}", label.name)
            combo.setCurrentIndex(combo.findData(choice.target) if choice.kind == BASE else 0)
            table.setCellWidget(row, MAP_TO, combo)
            table.setItem(row, LABEL_NAME, qt.QTableWidgetItem(choice.target))
        self.ui.labelsSummaryLabel.text = f"{len(self.wizard.union)} segment name(s) across {len(self.wizard.cases)} case(s)."

    def labelChoices(self) -> List[LabelChoice]:
        table, choices = self.ui.labelsTable, []
        for row in range(table.rowCount):
            segment = table.item(row, SEGMENT).text()
            data = table.cellWidget(row, MAP_TO).currentData
            if data == NEW:
                choices.append(LabelChoice(segment, NEW, table.item(row, LABEL_NAME).text()))
            elif data == IGNORE:
                choices.append(LabelChoice(segment, IGNORE))
            else:
                choices.append(LabelChoice(segment, BASE, data))
        return choices

    def checkLabels(self) -> bool:
        if self.wizard.casesPage.fromFolder():
            return True
        try:
            base = base_labels(self.wizard.settingsPage.currentModel())
            self.wizard.labels = dataset_labels(self.wizard.union, self.labelChoices(), base)
        except ValueError as e:
            return self.say(f"Labels: {e}")
        self.say("Labels: " + ", ".join(f"{l.value} = {l.name}" for l in self.wizard.labels), error=False)
        return True
