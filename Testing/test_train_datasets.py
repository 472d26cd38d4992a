"""Dataset discovery (nnU-Net folder, pair folder, JSON and CSV lists) and validation messages,
on the real breast MR case (45x120x21, small enough to copy many times)."""
from __future__ import annotations

import json

import pytest
import SimpleITK as sitk

from mednextv2.errors import InputError
from mednextv2.train.checks import validate_dataset
from mednextv2.train.datasets import discover_dataset
from segment_fixtures import write_image


@pytest.fixture(scope="module")
def breast(data_dir):
    image = sitk.ReadImage(str(data_dir / "mr-breast" / "breast1_image.nrrd"))
    label = sitk.ReadImage(str(data_dir / "mr-breast" / "breast1_label.nrrd"))
    return image, label


def test_nnunet_folder_with_names_and_channels(tmp_path, breast):
    image, label = breast
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for name in ("case_a", "case_b"):
        write_image(image, tmp_path / "imagesTr" / f"{name}_0000.nii.gz")
        write_image(label, tmp_path / "labelsTr" / f"{name}.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "lesion": 1}, "file_ending": ".nii.gz"}))
    checked = validate_dataset(discover_dataset(tmp_path))
    assert [c.name for c in checked.dataset.cases] == ["case_a", "case_b"]
    assert checked.labels == {1: "lesion"}
    assert checked.dataset.channels == ("MRI",)
    assert checked.n_channels == 1


def test_pair_folder_json_and_csv_lists_find_the_same_cases(tmp_path, breast):
    image, label = breast
    for name in ("p1", "p2"):
        write_image(image, tmp_path / f"{name}_image.nrrd")
        write_image(label, tmp_path / f"{name}_label.nrrd")
    folder = discover_dataset(tmp_path)
    assert [(c.name, c.images[0].name, c.label.name) for c in folder.cases] == [
        ("p1", "p1_image.nrrd", "p1_label.nrrd"), ("p2", "p2_image.nrrd", "p2_label.nrrd")]
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps({"labels": {"1": "lesion"}, "cases": [
        {"image": "p1_image.nrrd", "label": "p1_label.nrrd"}, {"name": "second", "image": "p2_image.nrrd", "label": "p2_label.nrrd"}]}))
    from_json = validate_dataset(discover_dataset(listing))
    assert [c.name for c in from_json.dataset.cases] == ["p1_image", "second"]
    assert from_json.labels == {1: "lesion"}
    csv_list = tmp_path / "list.csv"
    csv_list.write_text("image,label\np1_image.nrrd,p1_label.nrrd\np2_image.nrrd,p2_label.nrrd\n")
    from_csv = discover_dataset(csv_list)
    assert [c.label for c in from_csv.cases] == [tmp_path / "p1_label.nrrd", tmp_path / "p2_label.nrrd"]
    assert validate_dataset(from_csv).labels == {1: "label 1"}


def test_every_problem_is_reported_at_once_with_its_case(tmp_path, breast):
    image, label = breast
    good = tmp_path / "good"
    good.mkdir()
    # case "shifted": label moved by 3 voxels; "floaty": non-integer label; "unknown": value 7 not in labels;
    # "resized": label on another grid size; "orphan": image without label.
    write_image(image, tmp_path / "shifted_image.nrrd")
    moved = sitk.Image(label)
    moved.SetOrigin(tuple(o + 3 * s for o, s in zip(label.GetOrigin(), label.GetSpacing())))
    write_image(moved, tmp_path / "shifted_label.nrrd")
    write_image(image, tmp_path / "floaty_image.nrrd")
    floaty = sitk.Cast(label, sitk.sitkFloat32) * 0.5
    write_image(floaty, tmp_path / "floaty_label.nrrd")
    write_image(image, tmp_path / "unknown_image.nrrd")
    write_image(sitk.Cast(label, sitk.sitkUInt8) * 7, tmp_path / "unknown_label.nrrd")
    write_image(image, tmp_path / "resized_image.nrrd")
    write_image(label[:, :, :10], tmp_path / "resized_label.nrrd")
    listing = tmp_path / "list.json"
    cases = [{"name": n, "image": f"{n}_image.nrrd", "label": f"{n}_label.nrrd"}
             for n in ("shifted", "floaty", "unknown", "resized")]
    cases.append({"name": "missing", "image": "shifted_image.nrrd", "label": "nowhere_label.nrrd"})
    listing.write_text(json.dumps({"labels": {"1": "lesion"}, "cases": cases}))
    with pytest.raises(InputError) as info:
        validate_dataset(discover_dataset(listing))
    message = str(info.value)
    assert "5 case(s)" in message
    assert "case shifted: label shifted_label.nrrd origin is" in message
    assert "case floaty: label floaty_label.nrrd holds non-integer values" in message
    assert "case unknown: label unknown_label.nrrd has values [7] not in the dataset's labels [1]" in message
    assert "case resized: label resized_label.nrrd size (45, 120, 10) differs from the image's (45, 120, 21)" in message
    assert "case missing: file" in message and "nowhere_label.nrrd does not exist" in message


def test_pair_folder_names_orphans_and_channel_counts(tmp_path, breast):
    image, label = breast
    write_image(image, tmp_path / "a_image.nrrd")
    write_image(image, tmp_path / "b_image.nrrd")
    write_image(label, tmp_path / "a_label.nrrd")
    with pytest.raises(InputError, match=r"case b: image b_image.nrrd has no label file"):
        discover_dataset(tmp_path)
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps([
        {"name": "one", "image": ["a_image.nrrd"], "label": "a_label.nrrd"},
        {"name": "two", "image": ["a_image.nrrd", "b_image.nrrd"], "label": "a_label.nrrd"},
        {"name": "three", "image": ["b_image.nrrd"], "label": "a_label.nrrd"}]))
    with pytest.raises(InputError, match=r"case two: 2 image channel\(s\), expected 1"):
        validate_dataset(discover_dataset(listing))


def test_empty_labels_and_bad_lists_are_refused(tmp_path, breast):
    image, label = breast
    write_image(image, tmp_path / "e_image.nrrd")
    write_image(sitk.Image(label) * 0, tmp_path / "e_label.nrrd")
    with pytest.raises(InputError, match="every label map is empty"):
        validate_dataset(discover_dataset(tmp_path))
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("img,seg\nx,y\n")
    with pytest.raises(InputError, match="header must have 'image'"):
        discover_dataset(bad_csv)
    with pytest.raises(InputError, match="does not exist"):
        discover_dataset(tmp_path / "nothing-here")


def test_header_float_noise_is_within_tolerance(tmp_path, breast):
    image, label = breast
    noisy = sitk.Image(label)
    noisy.SetOrigin(tuple(o + 1e-4 for o in label.GetOrigin()))
    noisy.SetSpacing(tuple(s * (1 + 1e-5) for s in label.GetSpacing()))
    write_image(image, tmp_path / "n_image.nii.gz")
    write_image(noisy, tmp_path / "n_label.nii.gz")  # NIfTI stores float32 geometry: more noise still
    checked = validate_dataset(discover_dataset(tmp_path))
    assert [c.name for c in checked.dataset.cases] == ["n"] and checked.labels == {1: "label 1"}


def test_slicer_seg_nrrd_labels_bring_their_segment_names(tmp_path, breast):
    from mednextv2.bundle import Label
    from mednextv2.inference.export import write_seg_nrrd

    image, label = breast
    write_image(image, tmp_path / "s1_image.nrrd")
    write_seg_nrrd(sitk.Cast(label, sitk.sitkUInt8), [Label(1, "breast lesion", (255, 0, 0))], tmp_path / "s1.seg.nrrd")
    checked = validate_dataset(discover_dataset(tmp_path))
    assert checked.dataset.cases[0].label.name == "s1.seg.nrrd"
    assert checked.labels == {1: "breast lesion"}
