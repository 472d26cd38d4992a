"""Exchange-file paths for one run, and names for results."""
from __future__ import annotations

import pytest

from MedNeXtV2SegmentLib.paths import PathError, make_run_paths, output_segmentation_name


def test_each_run_gets_its_own_ascii_folder(tmp_path):
    a = make_run_paths(2, temp_root=tmp_path)
    b = make_run_paths(1, temp_root=tmp_path)
    assert a.work_dir != b.work_dir and a.work_dir.parent == tmp_path and a.work_dir.is_dir()
    assert [p.name for p in a.inputs] == ["input_0000.nrrd", "input_0001.nrrd"]
    assert a.output.name == "segmentation.seg.nrrd" and a.output.parent == a.work_dir
    assert all(str(p).isascii() for p in (*a.inputs, a.output)) or not str(tmp_path).isascii()
    (a.work_dir / "input_0000.nrrd").write_text("x")
    a.remove()
    assert not a.work_dir.exists() and b.work_dir.exists()


def test_temp_root_is_created_and_channels_checked(tmp_path):
    paths = make_run_paths(1, temp_root=tmp_path / "new" / "root")
    assert paths.work_dir.is_dir()
    with pytest.raises(PathError, match="at least one"):
        make_run_paths(0, temp_root=tmp_path)


def test_long_windows_paths_fail_early_with_a_fix(tmp_path):
    deep = tmp_path / ("x" * 180)
    with pytest.raises(PathError, match="too long for Windows"):
        make_run_paths(1, temp_root=deep, is_windows=True)
    assert list(deep.iterdir()) == []  # nothing left behind
    assert make_run_paths(1, temp_root=deep, is_windows=False).work_dir.is_dir()


def test_output_names():
    assert output_segmentation_name("CT chest", "Lung tumour (CT)") == "CT chest - Lung tumour (CT)"
    assert output_segmentation_name("  ", "") == "Volume segmentation"


def test_removing_a_run_deletes_only_what_the_run_created(tmp_path):
    """The modules' own temporary folders: a file someone else put there stays."""
    paths = make_run_paths(2, temp_root=tmp_path)
    for p in (*paths.inputs, paths.output, paths.work_dir / ".segmentation.1a2b3c.tmp.seg.nrrd"):
        p.write_bytes(b"ours")
    paths.remove()
    assert not paths.work_dir.exists()

    paths = make_run_paths(1, temp_root=tmp_path)
    paths.inputs[0].write_bytes(b"ours")
    foreign = paths.work_dir / "notes.txt"
    foreign.write_text("the user's", encoding="utf-8")
    paths.remove()
    assert not paths.inputs[0].exists()
    assert foreign.read_text(encoding="utf-8") == "the user's"
    assert paths.output not in paths.inputs

