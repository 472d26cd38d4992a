"""Saved settings: one policy in both modules, and choices remembered across restarts (QSettings).

The panel uses qt.QSettings inside Slicer; here the same calls go to PySide6's real QSettings,
written to an .ini file and read back by a new QSettings object, as after a restart.
"""
from __future__ import annotations

import json
import logging

import pytest
from PySide6 import QtCore

from MedNeXtV2SegmentLib.parameters import SegmentChoices, from_saved
from MedNeXtV2SegmentLib.preferences import Preferences
from MedNeXtV2TrainLib.settings import TrainSettings


def settings_file(path):
    return QtCore.QSettings(str(path), QtCore.QSettings.IniFormat)


def test_device_tta_and_model_survive_a_restart(tmp_path):
    first = settings_file(tmp_path / "Slicer.ini")
    Preferences(first).save(SegmentChoices(model="tiny-ct", device="cpu", tta=False, structures=("lesion",)))
    first.sync()
    del first
    again = Preferences(settings_file(tmp_path / "Slicer.ini")).load()
    assert again == SegmentChoices(model="tiny-ct", device="cpu", tta=False)  # the subset belongs to one study
    assert Preferences(settings_file(tmp_path / "empty.ini")).load() == SegmentChoices()


def test_measured_cpu_rate_survives_a_restart(tmp_path):
    first = Preferences(settings_file(tmp_path / "Slicer.ini"))
    assert first.cpuRate("tiny-ct") is None
    first.setCpuRate("tiny-ct", 0.123456789)
    first.settings.sync()
    again = Preferences(settings_file(tmp_path / "Slicer.ini"))
    assert again.cpuRate("tiny-ct") == pytest.approx(0.123457) and again.cpuRate("other") is None


@pytest.mark.parametrize("cls, what, build", [
    (SegmentChoices, "Segment choices", None),
    (TrainSettings, "training settings", TrainSettings.from_dict),
])
def test_both_modules_treat_unknown_and_old_keys_alike(cls, what, build, caplog):
    """Both modules ignore unknown keys and keep the known ones, rather than reject the whole set."""
    read = (lambda text: cls.from_json(text)) if cls is SegmentChoices else (
        lambda text: from_saved(cls, text, what, build))
    default = cls()
    changed = {"device": "cpu"}
    with caplog.at_level(logging.WARNING):
        newer = read(json.dumps({**changed, "added_in_v9": 1}))
    assert newer.device == "cpu" and "added_in_v9" in caplog.text
    assert read(json.dumps(changed)) == (SegmentChoices(device="cpu") if cls is SegmentChoices
                                         else TrainSettings(device="cpu"))  # old file: the rest default
    assert read("{broken") == default and read('"a string"') == default
