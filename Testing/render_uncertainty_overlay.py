"""Render docs/images/uncertainty_slicer_overlay.png and print the statistics table, from a real run.

    mednextv2 demo -o DEMO                                       # trains the demo's real model
    python Testing/render_uncertainty_overlay.py DEMO [OUT_PNG]   # default docs/images/uncertainty_slicer_overlay.png

Runs the Segment panel's own command (`build_segment_command`, Show uncertainty on) with the demo's
model on the demo's held-out anterior brain MR, loads the map into Slicer's real core (slicer-core)
with the panel's logic (`loadUncertainty`: Iron colour table, window [0, 1], threshold), finds the
largest unsure region as "Next unsure region" does, and draws the axial slice through it: the map
over the scan as the slice view blends it (foreground opacity 0.5, voxels at or below the
threshold transparent), beside where the model is really wrong (prediction != the template's
tissue map). Prints the statistics as the panel's Copy gives them and as a Markdown table.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from repo_folders import REPO, import_like_slicer  # noqa: E402

import_like_slicer()
import slicer_stubs  # noqa: E402
from MedNeXtV2SegmentLib.command import build_segment_command, engine_environment  # noqa: E402
from MedNeXtV2SegmentLib.parameters import SegmentChoices  # noqa: E402
from MedNeXtV2SegmentLib.paths import make_run_paths  # noqa: E402
from MedNeXtV2SegmentLib.statistics import header, read_statistics, table_text  # noqa: E402


def iron_colours(slicer) -> np.ndarray:
    """The RGB entries of Slicer's built-in Iron table, read from the real colour node."""
    from MedNeXtV2SegmentLib.logic import UNCERTAINTY_COLOR_NODE_ID

    table = slicer.mrmlScene.GetNodeByID(UNCERTAINTY_COLOR_NODE_ID).GetLookupTable()
    return np.array([table.GetTableValue(i)[:3] for i in range(table.GetNumberOfTableValues())])


def main(demo: Path, out_png: Path) -> None:
    image_path, label_path = demo / "data" / "anterior_image.nii.gz", demo / "data" / "anterior_label.nii.gz"
    work = Path(tempfile.mkdtemp(prefix="uncertainty-render-"))
    slicer = slicer_stubs.install(str(work / "slicer-temp"))
    from MedNeXtV2SegmentLib.logic import UNCERTAINTY_OPACITY, MedNeXtV2SegmentLogic

    paths = make_run_paths(1, temp_root=work)
    command = build_segment_command(sys.executable, [image_path.resolve()], paths.output,
                                    SegmentChoices(model=str((demo / "brain-tissue-model").resolve()), device="cpu",
                                                   tta=False, uncertainty=True),
                                    threads=1, uncertainty=paths.uncertainty, statistics=paths.statistics)
    subprocess.run(command, check=True, env=engine_environment(), stdout=subprocess.DEVNULL)
    volume = slicer_stubs.load_volume(image_path, "anterior_image")
    result = slicer.util.loadSegmentation(str(paths.output), {"name": "anterior_image - demo model"})
    logic = MedNeXtV2SegmentLogic(engine=object())
    node = logic.loadUncertainty(paths.uncertainty, paths.work_dir, volume, result)
    tour = logic.unsureRegionTour(node)
    region = tour.next()
    threshold = tour.threshold
    print(f"{len(tour.regions)} unsure regions above {threshold}; largest {region.voxels} voxels at RAS {region.target_ras}")
    rows = read_statistics(paths.statistics)
    print(table_text(rows))
    print("| " + " | ".join(header()) + " |\n|" + "---|" * len(header()))
    for row in rows:
        print("| " + " | ".join(row.cells()) + " |")

    # Everything on the input file's (k, j, i) grid: the map as Slicer holds it, pulled back to it.
    image = sitk.ReadImage(str(image_path))
    uncertainty = sitk.GetArrayFromImage(sitk.Resample(slicer_stubs.PullVolumeFromSlicer(node), image,
                                                       sitk.Transform(), sitk.sitkNearestNeighbor))
    scan = sitk.GetArrayFromImage(image).astype(np.float32)
    wrong = sitk.GetArrayFromImage(sitk.ReadImage(str(paths.output))) != sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
    i, j, k = image.TransformPhysicalPointToIndex((-region.target_ras[0], -region.target_ras[1], region.target_ras[2]))
    lo, hi = np.percentile(scan, (1, 99))
    grey = np.repeat(np.clip((scan[k] - lo) / max(hi - lo, 1e-6), 0, 1)[..., None], 3, axis=2)
    table = iron_colours(slicer)  # window [0, 1] spreads the map over the whole table
    colours = table[np.clip((uncertainty[k] * (len(table) - 1)).round().astype(int), 0, len(table) - 1)]
    shown = (uncertainty[k] > threshold)[..., None]
    overlay = np.where(shown, (1 - UNCERTAINTY_OPACITY) * grey + UNCERTAINTY_OPACITY * colours, grey)
    errors = np.where(wrong[k][..., None], 0.5 * grey + 0.5 * np.array([0.0, 0.8, 1.0]), grey)
    if image.GetDirection()[4] < 0:  # j runs towards anterior: flip the rows, so anterior is up as in Slicer
        overlay, errors, j = overlay[::-1], errors[::-1], overlay.shape[0] - 1 - j
    share = float((wrong & (uncertainty > threshold)).sum() / max(1, (uncertainty > threshold).sum()))
    print(f"wrong voxels among those above the threshold: {share:.1%}; in the whole scan: {wrong.mean():.1%}")
    slicer_stubs.uninstall()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].imshow(overlay, interpolation="nearest")
    axes[0].plot([i], [j], marker="+", color="lime", markersize=16, mew=2)
    axes[0].set_title(f"uncertainty > {threshold:g} over the scan\n(+: the largest unsure region, {region.voxels} voxels)",
                      fontsize=10)
    axes[1].imshow(errors, interpolation="nearest")
    axes[1].set_title("where the model is wrong\n(prediction != reference tissue map)", fontsize=10)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"model trained by `mednextv2 demo`, on its held-out anterior brain MR (axial slice {k})",
                 fontsize=10)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    print(out_png)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "docs" / "images" / "uncertainty_slicer_overlay.png")
