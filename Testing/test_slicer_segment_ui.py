"""The Segment panel's .ui loads with real Qt, has every widget the code uses, and renders.

Run this file as a script to refresh docs/images/segment_panel.png.
"""
from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from repo_folders import REPO, SEGMENT_DIR
from qt_ui_helpers import QtGui, QtWidgets, load_ui, load_warnings, render_png, ui_names_used, widget_names

UI = SEGMENT_DIR / "Resources" / "UI" / "MedNeXtV2Segment.ui"
SOURCES = sorted([SEGMENT_DIR / "MedNeXtV2Segment.py", *(SEGMENT_DIR / "MedNeXtV2SegmentLib").glob("*.py")])
DEVICES = ["Auto (GPU if available)", "NVIDIA GPU (CUDA)", "Apple GPU (MPS)", "CPU"]  # widget.DEVICE_LABELS, in the engine's order


def real_preview(work: Path) -> dict:
    """What the panel shows for a bundle that really exists: the self-test's tiny bundle
    (MedNeXtV2SegmentLib/tinybundle.py), imported and listed by the real engine CLI, described by
    the panel's own functions, on a machine without a CUDA GPU, after a run with Show uncertainty
    on a crop of the shared lung CT (the panel's own command; its statistics and map as the panel
    reads them)."""
    import os
    import sys

    import SimpleITK as sitk

    import real_data
    from MedNeXtV2SegmentLib.command import build_models_command, build_segment_command, engine_environment
    from engine_model_list import list_models
    from MedNeXtV2SegmentLib.models import describe_model, time_hint
    from MedNeXtV2SegmentLib.parameters import SegmentChoices
    from MedNeXtV2SegmentLib.process import EngineProcess
    from MedNeXtV2SegmentLib.progress import format_duration
    from MedNeXtV2SegmentLib.statistics import header, read_statistics
    from MedNeXtV2SegmentLib.tinybundle import make_tiny_bundle
    from MedNeXtV2SegmentLib.unsure_regions import DEFAULT_THRESHOLD, UnsureRegionTour, summary

    env = engine_environment({"PATH": os.environ.get("PATH", ""), "MEDNEXTV2_HOME": str(work / "home")})
    bundle = make_tiny_bundle(work / "bundle")
    imported = EngineProcess(build_models_command(sys.executable, "import", str(bundle)), env=env).start()
    assert imported.wait(timeout=180) == 0, "\n".join(imported.stderr_tail)
    choice = next(c for c in list_models(sys.executable, env) if c.id == "selftest-tiny")
    ct = sitk.ReadImage(str(real_data.data_dir() / "ct-lung" / "lung1_image.nrrd"))
    sitk.WriteImage(sitk.RegionOfInterest(ct, [96, 96, 16], [200, 200, 24]), str(work / "input_0000.nrrd"))
    paths = {name: work / name for name in ("result.seg.nrrd", "uncertainty.nrrd", "statistics.json")}
    command = build_segment_command(sys.executable, [work / "input_0000.nrrd"], paths["result.seg.nrrd"],
                                    SegmentChoices(model=choice.id, device="cpu", tta=False, uncertainty=True),
                                    uncertainty=paths["uncertainty.nrrd"], statistics=paths["statistics.json"])
    segmented = EngineProcess(command, env=env).start()
    assert segmented.wait(timeout=300) == 0, "\n".join(segmented.stderr_tail)
    rows = read_statistics(paths["statistics.json"])
    uncertainty = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["uncertainty.nrrd"])))
    tour = UnsureRegionTour(uncertainty, np.eye(4), DEFAULT_THRESHOLD)
    done = (f"Done in {format_duration(segmented.elapsed_s)}: {len(rows)} segments in "
            f"'lung1_image - {choice.title}'.")
    return {
        "inputVolumeSelector": "lung1_image",
        "modelSelector": [describe_model(choice)],
        "modelInfoLabel": f"{choice.title}. Structures: {', '.join(choice.labels)}.",
        "deviceSelector": DEVICES,
        "deviceHintLabel": time_hint(choice, "auto", True, cuda=False),
        "structuresList": list(choice.labels),
        "ttaCheckBox": False,  # as the run was made
        "showUncertaintyCheckBox": True,
        "progressBar": (100, done),
        "statusLabel": done,
        "statisticsTable": (header(), [row.cells() for row in rows]),
        "copyStatisticsButton": bool(rows),  # as showResultDetails leaves it
        "improveModelButton": True,  # updateButtons: a result to improve exists
        "unsureRegionLabel": summary(len(tour.regions), tour.remaining(), tour.threshold),
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


def test_improve_button_waits_for_a_result():
    """"Improve this model" acts on the last result: off until a run has made one (widget.updateButtons)."""
    button = load_ui(UI).findChild(QtWidgets.QPushButton, "improveModelButton")
    assert button is not None and not button.isEnabled()
    assert button.text() == "Improve this model..." and "correct" in button.toolTip()


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


def render_segment_panel(out_png: Path, preview: dict) -> Path:
    return render_png(load_ui(UI), out_png, preview)


@pytest.fixture(scope="module")
def preview(tmp_path_factory):
    return real_preview(tmp_path_factory.mktemp("preview"))


def test_preview_shows_a_real_bundle(preview):
    assert preview["modelSelector"] == ["Self-test tiny model - CT - downloaded"] or (
        preview["modelSelector"][0].startswith("Self-test tiny model - CT - ")
        and preview["modelSelector"][0].endswith(" - downloaded"))
    assert preview["structuresList"] == ["lesion", "tissue"]
    assert preview["deviceHintLabel"].startswith("No CUDA GPU found")
    # The tiny model labels every voxel 'tissue' with certainty: the table and the region line say so.
    header, rows = preview["statisticsTable"]
    assert header[:3] == ["Segment", "Voxels", "Volume (mL)"]
    assert [row[:2] for row in rows] == [["lesion", "0"], ["tissue", str(96 * 96 * 16)]]
    assert float(rows[1][-1]) > 0.99 and preview["unsureRegionLabel"].startswith("0 unsure region(s) above 0.50")


def test_panel_renders_to_a_non_blank_png(tmp_path, preview):
    out = render_segment_panel(tmp_path / "segment_panel.png", preview)
    image = QtGui.QImage(str(out))
    assert image.width() >= 400 and image.height() >= 400
    colors = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colors) > 20, "the render looks blank"


def test_docs_picture_is_the_panel_as_rendered_now(tmp_path, preview):
    """The README's picture is this panel with the real bundle, not just any file: same size as a
    fresh render and (nearly) the same pixels. Fails after a .ui or preview change until the
    picture is rendered again."""
    docs = QtGui.QImage(str(REPO / "docs" / "images" / "segment_panel.png"))
    fresh = QtGui.QImage(str(render_segment_panel(tmp_path / "now.png", preview)))
    hint = "run `python Testing/test_slicer_segment_ui.py` to render docs/images/segment_panel.png again"
    assert not docs.isNull(), hint
    assert (docs.width(), docs.height()) == (fresh.width(), fresh.height()), hint
    samples = [(x, y) for x in range(0, fresh.width(), 3) for y in range(0, fresh.height(), 3)]
    differ = sum(docs.pixel(x, y) != fresh.pixel(x, y) for x, y in samples) / len(samples)
    assert differ < 0.02, f"{differ:.1%} of the pixels differ: {hint}"


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        print(render_segment_panel(REPO / "docs" / "images" / "segment_panel.png", real_preview(Path(work))))


def test_the_panel_has_words_for_each_device_the_engine_takes():
    from mednextv2.inference.options import DEVICES as ENGINE_DEVICES

    widget = SEGMENT_DIR / "MedNeXtV2SegmentLib" / "widget.py"
    labels = next(ast.literal_eval(node.value) for node in ast.parse(widget.read_text(encoding="utf-8")).body
                  if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DEVICE_LABELS")
    assert list(labels) == list(ENGINE_DEVICES)
    assert [labels[d] for d in ENGINE_DEVICES] == DEVICES
