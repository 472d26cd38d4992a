"""Show uncertainty, Next unsure region and the statistics table, on Slicer's real core.

The map is a real NRRD written by SimpleITK on a real scan's grid (a crop of the shared brain MR,
whose file has a flipped axis, and an oblique, anisotropic, axis-permuted copy of it under a parent
transform) and read by Slicer's own Volumes logic; expected points come from SimpleITK's geometry,
not from the code under test. Only slicer.app / mrmlScene / module bases are stand-ins.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import slicer_stubs
from repo_folders import SEGMENT_DIR
from segment_fixtures import rotation
from MedNeXtV2SegmentLib.command import build_segment_command
from MedNeXtV2SegmentLib.parameters import SegmentChoices
from MedNeXtV2SegmentLib.paths import make_run_paths
from MedNeXtV2SegmentLib.statistics import StatisticsError, fill_table, read_statistics, table_text
from MedNeXtV2SegmentLib.unsure_regions import DEFAULT_THRESHOLD, UnsureRegionTour, find_regions

# (k, j, i) boxes of the map (value 0.9), largest first, odd sides (a centre voxel); and one at 0.45.
# They fit both grids' arrays: (8, 48, 40) and, axes permuted, (48, 40, 8).
BOXES = [((1, 4), (5, 10), (1, 6)), ((5, 8), (20, 23), (3, 6)), ((0, 1), (30, 33), (6, 7))]
FAINT = ((5, 8), (32, 37), (0, 3))


def scan_grids(data_dir: Path):
    """The brain MR crop (flipped y in the file) and an oblique anisotropic permuted copy."""
    mr = sitk.ReadImage(str(data_dir / "mr-brain-lesion" / "brain1_image.nrrd"))
    mr = sitk.RegionOfInterest(mr, [40, 48, 8], [108, 104, 8])
    oblique = sitk.PermuteAxes(mr, [2, 0, 1])
    oblique.SetSpacing((3.5, 0.8, 0.6))
    oblique.SetDirection(tuple((rotation(20, -35, 50) @ np.array(oblique.GetDirection()).reshape(3, 3)).ravel()))
    oblique.SetOrigin((12.5, -40.0, 7.25))
    return {"MR": mr, "Oblique MR": oblique}


def map_on(grid: sitk.Image) -> sitk.Image:
    """A map on `grid`: 0.2 background (confident), the boxes at 0.9, FAINT at 0.45."""
    values = np.full(grid.GetSize()[::-1], 0.2, dtype=np.float32)
    for box in BOXES:
        values[tuple(slice(*b) for b in box)] = 0.9
    values[tuple(slice(*b) for b in FAINT)] = 0.45
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(grid)
    return image


def expected_ras(image: sitk.Image, box) -> np.ndarray:
    """The box's centre voxel in RAS, by SimpleITK's own geometry (LPS, flipped)."""
    k, j, i = ((lo + hi - 1) // 2 for lo, hi in box)
    lps = image.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
    return np.array([-lps[0], -lps[1], lps[2]])


@pytest.fixture()
def scene(tmp_path):
    slicer = slicer_stubs.install(str(tmp_path / "slicer-temp"))
    try:
        for name in ("Red", "Yellow", "Green"):
            sliceNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode")
            sliceNode.SetLayoutName(name)
            getattr(sliceNode, {"Red": "SetOrientationToAxial", "Yellow": "SetOrientationToSagittal",
                                "Green": "SetOrientationToCoronal"}[name])()
            composite = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
            composite.SetLayoutName(name)
        yield slicer
    finally:
        slicer_stubs.uninstall()


def load_case(slicer, tmp_path: Path, name: str, grid: sitk.Image, transform=None):
    """The scan as a volume, a result segmentation in a study, and the map written to a run folder."""
    from MedNeXtV2SegmentLib.logic import MedNeXtV2SegmentLogic

    scanPath = tmp_path / f"{name.replace(' ', '_')}.nrrd"
    sitk.WriteImage(grid, str(scanPath))
    volume = slicer_stubs.load_volume(scanPath, name)
    if transform is not None:
        volume.SetAndObserveTransformNodeID(transform.GetID())
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    study = shNode.CreateStudyItem(shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Patient"), "Study")
    shNode.SetItemParent(shNode.GetItemByDataNode(volume), study)
    result = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} - model")
    shNode.SetItemParent(shNode.GetItemByDataNode(result), study)
    paths = make_run_paths(1, temp_root=tmp_path / "runs")
    image = map_on(grid)
    sitk.WriteImage(image, str(paths.uncertainty))
    logic = MedNeXtV2SegmentLogic(engine=object())  # no engine run: the map is loaded as after one
    node = logic.loadUncertainty(paths.uncertainty, paths.work_dir, volume, result)
    return logic, volume, result, node, paths, image


# -- the command ----------------------------------------------------------------------------------
def test_command_asks_for_the_map_only_with_the_option_and_always_for_statistics(tmp_path):
    paths = make_run_paths(1, temp_root=tmp_path)
    plain = build_segment_command("py", paths.inputs, paths.output, SegmentChoices(model="m"),
                                  uncertainty=paths.uncertainty, statistics=paths.statistics)
    assert "--uncertainty" not in plain
    assert plain[plain.index("--statistics") + 1] == str(paths.statistics)
    shown = build_segment_command("py", paths.inputs, paths.output, SegmentChoices(model="m", uncertainty=True),
                                  uncertainty=paths.uncertainty, statistics=paths.statistics)
    assert shown[shown.index("--uncertainty") + 1] == str(paths.uncertainty) == str(paths.work_dir / "uncertainty.nrrd")
    assert shown[-2:] == ["--progress", "json"]
    from mednextv2.cli import build_parser  # the engine's own parser takes both

    args = build_parser().parse_args(shown[3:])
    assert (args.uncertainty, args.statistics) == (str(paths.uncertainty), str(paths.statistics))
    assert build_parser().parse_args(plain[3:]).uncertainty is None
    with pytest.raises(ValueError, match="uncertainty"):
        build_segment_command("py", paths.inputs, paths.output, SegmentChoices(model="m", uncertainty=True))


def test_run_folder_removal_takes_the_map_statistics_and_their_temporaries(tmp_path):
    paths = make_run_paths(1, temp_root=tmp_path)
    for p in (*paths.inputs, paths.output, paths.uncertainty, paths.statistics,
              paths.work_dir / ".uncertainty.0123456789ab.tmp.nrrd", paths.work_dir / ".statistics.0123456789ab.tmp.json"):
        p.write_bytes(b"x")
    paths.remove()
    assert not paths.work_dir.exists()


def test_show_uncertainty_is_remembered_across_restarts(tmp_path):
    from PySide6 import QtCore
    from MedNeXtV2SegmentLib.preferences import Preferences

    first = QtCore.QSettings(str(tmp_path / "Slicer.ini"), QtCore.QSettings.IniFormat)
    Preferences(first).save(SegmentChoices(model="tiny-ct", uncertainty=True))
    first.sync()
    del first
    again = Preferences(QtCore.QSettings(str(tmp_path / "Slicer.ini"), QtCore.QSettings.IniFormat)).load()
    assert again.uncertainty is True and again.model == "tiny-ct"
    assert SegmentChoices().uncertainty is False  # off unless asked: the map costs memory and a file
    assert SegmentChoices.from_json(SegmentChoices(model="m", uncertainty=True).to_json()).uncertainty is True


# -- loading the map ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["MR", "Oblique MR"])
def test_map_loads_on_the_scans_grid_under_the_result_and_over_the_scan(scene, tmp_path, data_dir, name):
    from MedNeXtV2SegmentLib.logic import UNCERTAINTY_COLOR_NODE_ID, UNCERTAINTY_OPACITY

    slicer = scene
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Registration")
    logic, volume, result, node, paths, image = load_case(slicer, tmp_path, name, scan_grids(data_dir)[name], transform)
    np.testing.assert_allclose(slicer_stubs.ijk_to_ras(node), slicer_stubs.ijk_to_ras(volume), atol=1e-5)
    assert node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    # Slicer may store the slices in the other order (a flipped axis in the file): compare in world space.
    read = slicer_stubs.PullVolumeFromSlicer(node)
    onRead = sitk.Resample(image, read, sitk.Transform(), sitk.sitkNearestNeighbor, -1.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(onRead))
    assert node.GetTransformNodeID() == transform.GetID()
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    assert shNode.GetItemParent(shNode.GetItemByDataNode(node)) == shNode.GetItemByDataNode(result)
    display = node.GetDisplayNode()
    assert display.GetColorNodeID() == UNCERTAINTY_COLOR_NODE_ID
    assert slicer.mrmlScene.GetNodeByID(UNCERTAINTY_COLOR_NODE_ID) is not None  # built in: no colour file needed
    assert not display.GetAutoWindowLevel() and (display.GetWindow(), display.GetLevel()) == (1.0, 0.5)
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == DEFAULT_THRESHOLD
    for i in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        assert composite.GetForegroundVolumeID() == node.GetID()
        assert composite.GetForegroundOpacity() == UNCERTAINTY_OPACITY
    assert node.GetStorageNode() is None  # the run folder goes: Save must not write back into it
    assert node.GetName() == f"{name} - model uncertainty"
    paths.remove()
    assert not paths.work_dir.exists()
    assert slicer.util.arrayFromVolume(node).max() == pytest.approx(0.9)  # in memory, not in the deleted file


def test_a_missing_map_is_a_clear_error(scene, tmp_path):
    from MedNeXtV2SegmentLib.logic import EngineError, MedNeXtV2SegmentLogic

    paths = make_run_paths(1, temp_root=tmp_path)
    with pytest.raises(EngineError, match="uncertainty.nrrd"):
        MedNeXtV2SegmentLogic(engine=object()).loadUncertainty(paths.uncertainty, paths.work_dir, None, None)


# -- Next unsure region ---------------------------------------------------------------------------
def slice_centres(slicer):
    centres = []
    for i in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        matrix = slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLSliceNode").GetSliceToRAS()
        centres.append([matrix.GetElement(r, 3) for r in range(3)])
    return np.array(centres)


@pytest.mark.parametrize("name", ["MR", "Oblique MR"])
def test_next_region_centres_the_views_largest_first_in_world_coordinates(scene, tmp_path, data_dir, name):
    slicer = scene
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Registration")
    toParent = np.array([[0.0, -1.0, 0.0, 10.0], [1.0, 0.0, 0.0, -5.0], [0.0, 0.0, 1.0, 2.5], [0, 0, 0, 1.0]])
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(toParent))
    logic, volume, result, node, paths, image = load_case(slicer, tmp_path, name, scan_grids(data_dir)[name], transform)
    tour = logic.unsureRegionTour(node)
    assert [r.voxels for r in tour.regions] == [75, 27, 3]
    for box in BOXES:
        region = tour.next()
        world = logic.jumpToRegion(node, region)
        expected = (toParent @ np.append(expected_ras(image, box), 1.0))[:3]
        np.testing.assert_allclose(world, expected, atol=1e-3)
        np.testing.assert_allclose(slice_centres(slicer), np.tile(world, (3, 1)), atol=1e-6)
        i, j, k = region.target_ijk
        assert slicer.util.arrayFromVolume(node)[k, j, i] > DEFAULT_THRESHOLD  # the views cross the region
    assert tour.next() is None and tour.remaining() == 0
    tour.set_threshold(0.4)  # the faint region appears; the three visited stay visited
    assert len(tour.regions) == 4 and tour.remaining() == 1
    assert tour.next().voxels == 45


def test_exact_centroids_and_order_on_an_anisotropic_flipped_grid():
    """Known answers without Slicer: two regions on a grid with a flipped axis and 0.5 x 1 x 4 mm voxels."""
    values = np.zeros((6, 10, 12), dtype=np.float32)
    values[1:3, 2:4, 2:6] = 0.8  # 16 voxels, centroid (i, j, k) = (3.5, 2.5, 1.5)
    values[4, 7, 9:11] = 0.7  # 2 voxels, centroid (9.5, 7, 4)
    values[0, 0, 0] = 0.5  # not above the threshold
    ijk_to_ras = np.array([[-0.5, 0, 0, 100.0], [0, 1.0, 0, -20.0], [0, 0, 4.0, 7.0], [0, 0, 0, 1]])
    regions, _ = find_regions(values, ijk_to_ras, 0.5)
    assert [r.voxels for r in regions] == [16, 2]
    assert regions[0].target_ijk == (4, 2, 2)  # rounded (half to even) centroid
    assert regions[0].target_ras == (98.0, -18.0, 15.0)


def test_a_ring_is_visited_on_itself_not_at_its_empty_centre():
    values = np.zeros((3, 21, 21), dtype=np.float32)
    jj, ii = np.mgrid[:21, :21]
    values[1][np.abs(np.hypot(jj - 10, ii - 10) - 8) < 1.0] = 0.9
    tour = UnsureRegionTour(values, np.eye(4))
    assert len(tour.regions) == 1 and values[1, 10, 10] == 0
    region = tour.next()
    i, j, k = region.target_ijk
    assert values[k, j, i] == pytest.approx(0.9) and region.target_ras == (float(i), float(j), float(k))


def test_a_map_without_unsure_voxels_has_no_region():
    tour = UnsureRegionTour(np.full((4, 5, 6), 0.1, dtype=np.float32), np.eye(4))
    assert tour.regions == [] and tour.next() is None and tour.remaining() == 0


# -- the statistics table -------------------------------------------------------------------------
def statistics_file(path: Path, rows) -> Path:
    path.write_text(json.dumps({"format": "mednextv2-statistics", "version": 1, "rows": rows}), encoding="utf-8")
    return path


ROWS = [
    {"case": "input", "segment": "lesion", "value": 1, "voxels": 1234, "volume_ml": 4.5678, "intensity_mean": 101.25,
     "intensity_std": 12.04, "intensity_min": 40.0, "intensity_max": 180.0, "mean_confidence": 0.91234},
    {"case": "input", "segment": "tissue", "value": 2, "voxels": 0, "volume_ml": None, "intensity_mean": None,
     "intensity_std": None, "intensity_min": None, "intensity_max": None, "mean_confidence": None},
]


def test_table_and_copy_text(tmp_path):
    from qt_ui_helpers import QtWidgets, load_ui

    rows = read_statistics(statistics_file(tmp_path / "statistics.json", ROWS))
    table = load_ui(SEGMENT_DIR / "Resources" / "UI" / "MedNeXtV2Segment.ui").findChild(
        QtWidgets.QTableWidget, "statisticsTable")
    fill_table(table, rows, QtWidgets.QTableWidgetItem)
    cells = [[table.item(r, c).text() for c in range(table.columnCount())] for r in range(table.rowCount())]
    assert [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())] == [
        "Segment", "Voxels", "Volume (mL)", "Mean intensity", "Std intensity", "Mean confidence"]
    assert cells == [["lesion", "1234", "4.57", "101.2", "12.0", "0.912"], ["tissue", "0", "", "", "", ""]]
    slider = table.window().findChild(QtWidgets.QWidget, "unsureThresholdSlider")
    assert slider.value() == DEFAULT_THRESHOLD and not slider.property("tracking")  # relabel on release only
    text = table_text(rows)
    assert text == ("Segment\tVoxels\tVolume (mL)\tMean intensity\tStd intensity\tMean confidence\n"
                    "lesion\t1234\t4.57\t101.2\t12.0\t0.912\ntissue\t0\t\t\t\t\n")
    fill_table(table, rows[:1], QtWidgets.QTableWidgetItem)  # a second run replaces the rows
    assert table.rowCount() == 1


def test_copied_names_never_run_as_spreadsheet_formulas(tmp_path):
    """A bundle's segment name is pasted as text: no formula, no extra cell or line."""
    rows = read_statistics(statistics_file(tmp_path / "statistics.json", [
        dict(ROWS[0], segment='=HYPERLINK("http://x")'), dict(ROWS[0], segment="@sum\tA1\nB"),
        dict(ROWS[0], segment="-1+2"), dict(ROWS[0], segment="left lung")]))
    lines = table_text(rows).splitlines()
    assert [line.split("\t")[0] for line in lines[1:]] == ["'=HYPERLINK(\"http://x\")", "'@sum A1 B", "'-1+2", "left lung"]
    assert len(lines) == 5 and all(len(line.split("\t")) == 6 for line in lines)


@pytest.mark.parametrize("content, problem", [
    ("{broken", "JSON"), (json.dumps({"format": "other", "version": 1, "rows": []}), "mednextv2-statistics"),
    (json.dumps({"format": "mednextv2-statistics", "version": 1, "rows": [{"segment": "a", "voxels": "many"}]}),
     "voxels"),
])
def test_an_unreadable_statistics_file_names_itself(tmp_path, content, problem):
    path = tmp_path / "statistics.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(StatisticsError, match=problem) as raised:
        read_statistics(path)
    assert str(path) in str(raised.value)


# -- through the real engine ----------------------------------------------------------------------
def test_segment_with_show_uncertainty_through_the_engine_loads_map_and_numbers(scene, tmp_path, data_dir):
    """The logic's own command to `python -m mednextv2` (this tree's engine) on an oblique, anisotropic
    CT crop; the map and the statistics it writes are loaded, and the run folder is gone after."""
    import time

    from segment_fixtures import save_bundle, threshold_bundle
    from test_slicer_segment_mrml import write_scans
    from MedNeXtV2SegmentLib.logic import MedNeXtV2SegmentLogic, UNCERTAINTY_COLOR_NODE_ID

    slicer = scene
    bundle = save_bundle(threshold_bundle((120.0, 200.0)), tmp_path, "threshold-model")
    volume = slicer_stubs.load_volume(write_scans(data_dir, tmp_path)["Oblique CT"], "Oblique CT")
    logic = MedNeXtV2SegmentLogic()
    run = logic.start(volume, SegmentChoices(model=str(bundle), device="cpu", tta=False, uncertainty=True))
    assert "--uncertainty" in run.process.args and "--statistics" in run.process.args
    deadline = time.monotonic() + 300
    while not logic.poll(run):
        assert time.monotonic() < deadline, "\n".join(run.process.stderr_tail)
        time.sleep(0.05)
    result = logic.finish(run)
    node = run.uncertaintyNode
    assert node is not None and node.GetDisplayNode().GetColorNodeID() == UNCERTAINTY_COLOR_NODE_ID
    np.testing.assert_allclose(slicer_stubs.ijk_to_ras(node), slicer_stubs.ijk_to_ras(volume), atol=1e-5)
    values = slicer.util.arrayFromVolume(node)
    assert values.shape == slicer.util.arrayFromVolume(volume).shape
    assert 0.0 <= values.min() and values.max() <= 1.0 and values.max() > values.min()
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    assert shNode.GetItemParent(shNode.GetItemByDataNode(node)) == shNode.GetItemByDataNode(result)
    segmentation = result.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert run.statisticsProblem == "" and [row.segment for row in run.statistics] == names == ["structure1", "structure2"]
    for row, name in zip(run.statistics, names):
        voxels = int(slicer_stubs.export_segment(result, segmentation.GetSegmentIdBySegmentName(name), volume).sum())
        assert row.voxels == voxels > 0
        assert row.volume_ml == pytest.approx(voxels * np.prod(volume.GetSpacing()) / 1000.0)
        assert 0.0 <= row.mean_confidence <= 1.0
    assert not run.paths.work_dir.exists() and node.GetStorageNode() is None
    tour = logic.unsureRegionTour(node)
    assert all(a.voxels >= b.voxels for a, b in zip(tour.regions, tour.regions[1:]))


# -- the panel's handlers --------------------------------------------------------------------------
def test_panel_walks_the_regions_moves_the_threshold_and_copies_the_table(scene, tmp_path, data_dir, monkeypatch):
    """SegmentPanel's own methods after a run, on the real map node and slice nodes: the table, the
    Next unsure region clicks to the end, a threshold change (overlay and regions), Copy. Qt is
    PySide6's (a real QTableWidget from the .ui, the real clipboard); the label, buttons and slider are
    plain stand-ins with the attributes PythonQt exposes."""
    import sys
    import types

    from qt_ui_helpers import QtWidgets, application, load_ui
    from MedNeXtV2SegmentLib.logic import EngineRun

    slicer = scene
    application()
    fake_qt = types.ModuleType("qt")
    fake_qt.QTableWidgetItem, fake_qt.QApplication = QtWidgets.QTableWidgetItem, QtWidgets.QApplication
    monkeypatch.setitem(sys.modules, "qt", fake_qt)
    sys.modules.pop("MedNeXtV2SegmentLib.widget", None)
    try:
        from MedNeXtV2SegmentLib.widget import SegmentPanel
    finally:
        sys.modules.pop("MedNeXtV2SegmentLib.widget", None)
    logic, volume, result, node, paths, image = load_case(slicer, tmp_path, "Oblique MR", scan_grids(data_dir)["Oblique MR"])
    ui = types.SimpleNamespace(
        statisticsTable=load_ui(SEGMENT_DIR / "Resources" / "UI" / "MedNeXtV2Segment.ui").findChild(
            QtWidgets.QTableWidget, "statisticsTable"),
        copyStatisticsButton=types.SimpleNamespace(enabled=False), statisticsHintLabel=types.SimpleNamespace(text=""),
        nextUnsureRegionButton=types.SimpleNamespace(enabled=False), unsureRegionLabel=types.SimpleNamespace(text=""),
        unsureThresholdSlider=types.SimpleNamespace(value=DEFAULT_THRESHOLD), statusLabel=types.SimpleNamespace(text=""))
    panel = SegmentPanel.__new__(SegmentPanel)
    panel.ui, panel.logic, panel.statistics, panel.uncertaintyNode, panel.unsureTour = ui, logic, [], None, None
    SegmentPanel.showUnsureRegions(panel)
    assert not ui.nextUnsureRegionButton.enabled and "Show uncertainty" in ui.unsureRegionLabel.text

    rows = read_statistics(statistics_file(tmp_path / "statistics.json", ROWS))
    run = EngineRun(process=None, kind="segment", paths=paths, volumeNode=volume, uncertaintyNode=node, statistics=rows)
    SegmentPanel.showResultDetails(panel, run)
    assert ui.statisticsTable.rowCount() == 2 and ui.statisticsTable.item(0, 0).text() == "lesion"
    assert ui.copyStatisticsButton.enabled and ui.nextUnsureRegionButton.enabled
    assert ui.unsureRegionLabel.text == "3 unsure region(s) above 0.50, 3 not visited yet."
    for box, left in zip(BOXES, (2, 1, 0)):
        SegmentPanel.onNextUnsureRegion(panel)
        expected = expected_ras(image, box)
        np.testing.assert_allclose(slice_centres(slicer), np.tile(expected, (3, 1)), atol=1e-3)
        assert ui.unsureRegionLabel.text.endswith(f"{left} of 3 left.")
    SegmentPanel.onNextUnsureRegion(panel)
    assert ui.unsureRegionLabel.text.startswith("No unsure region left above 0.50")
    np.testing.assert_allclose(slice_centres(slicer), np.tile(expected_ras(image, BOXES[-1]), (3, 1)), atol=1e-3)

    SegmentPanel.onUnsureThresholdChanged(panel, 0.4)
    assert node.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.4)
    assert ui.unsureRegionLabel.text == "4 unsure region(s) above 0.40, 1 not visited yet."
    SegmentPanel.onNextUnsureRegion(panel)
    np.testing.assert_allclose(slice_centres(slicer), np.tile(expected_ras(image, FAINT), (3, 1)), atol=1e-3)

    SegmentPanel.onCopyStatistics(panel)
    assert QtWidgets.QApplication.clipboard().text() == table_text(rows)
    assert ui.statusLabel.text == "Copied 2 row(s) as tab-separated text."

    slicer.mrmlScene.RemoveNode(node)  # the user deleted the map: the button goes off, nothing breaks
    SegmentPanel.onNextUnsureRegion(panel)
    assert not ui.nextUnsureRegionButton.enabled
