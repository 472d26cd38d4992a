"""Output files: .seg.nrrd read back by slicerio, labelmap + label table, atomic writes."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import slicerio.segmentation

from mednextv2.atomic import atomic_path
from mednextv2.bundle import Label
from mednextv2.errors import InputError
from mednextv2.inference.export import (label_table_path, output_kind, terminology_string, write_labelmap, write_result,
                                        write_seg_nrrd)
from segment_fixtures import make_image, rotation

LABELS = [
    Label(1, "liver", (221, 130, 101), {"category": ["SCT", "123037004", "Anatomical Structure"],
                                        "type": ["SCT", "10200004", "Liver"]}),
    Label(2, "tumor", (255, 0, 0), None),
    Label(3, "spleen", (157, 108, 162), None),  # absent from the volume: still listed, empty extent
]


def _labelmap():
    arr = np.zeros((6, 7, 8), np.uint8)
    arr[1:4, 2:5, 3:7] = 1
    arr[4, 5, 6] = 2
    return make_image(arr, spacing=(0.7, 0.8, 2.5), origin=(-3.0, 10.5, 7.25), direction=rotation(10, 20, -30))


def test_seg_nrrd_reads_back_with_slicerio(tmp_path):
    image = _labelmap()
    path = write_seg_nrrd(image, LABELS, tmp_path / "out.seg.nrrd")
    seg = slicerio.read_segmentation(str(path))
    segments = seg["segments"]
    assert [s["name"] for s in segments] == ["liver", "tumor", "spleen"]
    assert [s["labelValue"] for s in segments] == [1, 2, 3]
    np.testing.assert_allclose(segments[1]["color"], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(segments[0]["color"], np.array([221, 130, 101]) / 255, atol=1e-6)
    term = segments[0]["terminology"]
    assert term["category"] == ["SCT", "123037004", "Anatomical Structure"] and term["type"] == ["SCT", "10200004", "Liver"]
    assert "terminology" not in segments[1]
    assert segments[0]["extent"] == [3, 6, 2, 4, 1, 3]  # i0 i1 j0 j1 k0 k1
    assert seg["masterRepresentation"] == "Binary labelmap"
    # voxels and IJK->LPS: identical to the input image's grid
    expected = np.eye(4)
    d = np.array(image.GetDirection()).reshape(3, 3)
    expected[:3, :3] = d * np.array(image.GetSpacing())
    expected[:3, 3] = image.GetOrigin()
    np.testing.assert_allclose(seg["ijkToLPS"], expected, atol=1e-12)
    assert np.array_equal(seg["voxels"], sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    # and SimpleITK reads the same grid and voxels
    back = sitk.ReadImage(str(path))
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-12)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-12)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.seg.nrrd"]
    # the usual permissions of a new file, not the 0600 of a private temporary
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_terminology_string_format():
    s = terminology_string(LABELS[0])
    assert s.split("~")[1:3] == ["SCT^123037004^Anatomical Structure", "SCT^10200004^Liver"]
    assert slicerio.segmentation.terminology_entry_from_string(s)["type"] == ["SCT", "10200004", "Liver"]
    assert terminology_string(LABELS[1]) is None


@pytest.mark.parametrize("name", ["case.nii.gz", "case.nrrd", "case.mha"])
def test_labelmap_with_label_table(tmp_path, name):
    image = _labelmap()
    write_labelmap(image, LABELS, tmp_path / name)
    back = sitk.ReadImage(str(tmp_path / name))
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-5)
    table = json.loads(label_table_path(tmp_path / name).read_text(encoding="utf-8"))
    assert [(e["value"], e["name"]) for e in table["labels"]] == [(0, "background"), (1, "liver"), (2, "tumor"), (3, "spleen")]
    assert table["labels"][1]["terminology"]["type"][2] == "Liver"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "case.labels.json"])


def test_output_kind():
    assert output_kind("a/b.seg.nrrd") == "seg" and output_kind("x.NII.GZ") == "labelmap"
    with pytest.raises(InputError, match="unknown file type"):
        output_kind("out.png")


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.seg.nrrd"
    target.write_text("previous result")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise Boom()
    assert target.read_text(encoding="utf-8") == "previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.seg.nrrd"]
    # a labelmap whose voxel type cannot be written: no image, no table, no temporary
    bad = sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 5)
    with pytest.raises(Exception):
        write_result(bad, LABELS, tmp_path / "bad.seg.nrrd")
    assert [p.name for p in tmp_path.iterdir()] == ["out.seg.nrrd"]
