"""MedNeXtV2Train with the real engine: a dataset written by the wizard's exporter, trained by
`python -m mednextv2 train` through the wizard's own command, runner and progress parsing, and
the bundle read back as the Finish page reads it. A few iterations on a real MR scan, CPU."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


from MedNeXtV2SegmentLib.command import build_models_command, engine_environment  # noqa: E402
from MedNeXtV2SegmentLib.engine_client import EngineClient  # noqa: E402
from engine_model_list import list_models  # noqa: E402
from MedNeXtV2SegmentLib.process import EngineProcess  # noqa: E402
from MedNeXtV2TrainLib.dataset_layout import DatasetWriter  # noqa: E402
from MedNeXtV2TrainLib.label_table import NEW, LabelChoice, dataset_labels, union_of_segments, value_by_segment  # noqa: E402
from MedNeXtV2TrainLib.resume_state import TrainState, load_state  # noqa: E402
from MedNeXtV2TrainLib.settings import TrainSettings  # noqa: E402
from MedNeXtV2TrainLib.trained_model import read_trained_model  # noqa: E402
from MedNeXtV2TrainLib.training_run import TrainingRun  # noqa: E402


def _cases(data_dir: Path):
    """Three cases from the real breast MR: as is, mirrored left-right, and with a brighter scanner."""
    image = sitk.ReadImage(str(data_dir / "mr-breast" / "breast1_image.nrrd"))
    label = sitk.ReadImage(str(data_dir / "mr-breast" / "breast1_label.nrrd"))
    out = []
    for name, transform in (("orig", lambda a: a), ("mirrored", lambda a: a[:, :, ::-1].copy()), ("bright", None)):
        img_a, lbl_a = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)
        if transform is None:
            img_a = (img_a * 1.3 + 20).astype(img_a.dtype)
        else:
            img_a, lbl_a = transform(img_a), transform(lbl_a)
        new_img, new_lbl = sitk.GetImageFromArray(img_a), sitk.GetImageFromArray(lbl_a)
        new_img.CopyInformation(image)
        new_lbl.CopyInformation(image)
        out.append((name, new_img, new_lbl))
    return out


@pytest.mark.slow  # ~35 s of CPU: torch start-up, preprocessing, 4 steps, one validation
def test_wizard_trains_registers_and_lists_a_real_model(data_dir, tmp_path):
    union = union_of_segments([[("Lesion", (255, 0, 0))]] * 3)
    labels = dataset_labels(union, [LabelChoice("Lesion", NEW, "lesion")], [])
    job = tmp_path / "lesion-job"
    with DatasetWriter(job / "dataset", labels, "MR") as writer:
        for name, image, label in _cases(data_dir):
            writer.add_case(name, image, label, ["Lesion"], value_by_segment(labels))
        writer.finish()
    settings = TrainSettings(model_name="Breast lesion test", architecture="v2-tiny", modality="MR", minutes=None,
                             epochs=2, iterations=2, patch_size=(16, 32, 32), device="cpu", val_fraction=0.34, seed=1)
    state = TrainState(dataset=str(job / "dataset"), output_bundle=str(job / job.name), settings=settings)
    env = engine_environment(dict(__import__("os").environ, MEDNEXTV2_HOME=str(tmp_path / "home")))
    run = TrainingRun(job, state, EngineClient(python=sys.executable, baseEnv=env))
    start = time.monotonic()
    run.start()
    seen = []
    status = run.wait(timeout=240, on_update=lambda r: seen.extend(r.updates))
    elapsed = time.monotonic() - start
    assert status == "finished", run.outcome() + "\n" + "\n".join(run.log)
    assert {u.epoch for u in seen if u.loss is not None} >= {1, 2}, "loss reported in both epochs"
    assert all(np.isfinite(u.loss) for u in seen if u.loss is not None)
    assert run.curves.loss_series().points
    assert load_state(job).status == "finished" and load_state(job).epochs_done == 2
    trained = read_trained_model(Path(state.output_bundle))
    assert trained.labels == ("lesion",) and trained.id == "lesion-job" and trained.title == "Breast lesion test"
    raw = json.loads((Path(state.output_bundle) / "model.json").read_text(encoding="utf-8"))["provenance"]["metrics"]
    assert len(raw["validation_cases"]) == 1, "val fraction 0.34 of 3 cases holds one out"
    assert trained.dice == {k: v for k, v in raw["dice"].items() if isinstance(v, float)}
    print(f"2 epochs x 2 iterations, v2-tiny 16x32x32, CPU: {elapsed:.1f} s")

    # Finish page: register (what MedNeXtV2SegmentLogic.startModelAction("import", ...) runs), then the
    # Segment panel's model list shows the new model, with its local path and label.
    register = EngineProcess(build_models_command(sys.executable, "import", str(trained.path)), env=env).start()
    assert register.wait(timeout=120) == 0, "\n".join(register.stderr_tail)
    listed = {m.id: m for m in list_models(sys.executable, env)}
    assert trained.id in listed
    assert listed[trained.id].labels == ("lesion",) and listed[trained.id].downloaded and listed[trained.id].path
