"""Label agreement between an imported nnU-Net v2 model and nnU-Net's own predictor, default plan.

Unlike bench_segment_engines.py (which reconfigures nnU-Net to linear resampling to compare speed),
the plan here keeps nnU-Net's defaults: images resampled with a cubic spline (order 3, order_z 0
across anisotropic slices), probabilities linearly. The model is a small MedNeXt with the
"banded" weights of bench_segment_engines (labels follow the anatomy with real margins), written
as an nnU-Net v2 results folder and brought in with `mednextv2 models import`; nnU-Net predicts
with the same weights and the same plans.json. Both run on the CPU, step 0.5, no mirroring.

    NNUNET_VENV/bin/python Testing/benchmarks/bench_nnunet_agreement.py   (venv: see bench_segment_engines.py)

Cases: the lung CT (0.57 x 0.57 x 5 mm -> 1.5 x 1.5 x 5 mm, anisotropic) and the brain MR
(0.78 x 0.78 x 6.5 mm -> 1.2 x 1.2 x 6.5 mm, z-score). Results: docs/benchmarks.md.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_segment_engines import CT_NORM, DATA, banded, nnunet_plans  # noqa: E402

CASES = {  # the image, its channel name, the plan's target spacing
    "lung": (DATA / "ct-lung" / "lung1_image.nrrd", "CT", (5.0, 1.5, 1.5)),
    "brain": (DATA / "mr-brain-lesion" / "brain1_image.nrrd", "T1", (6.5, 1.2, 1.2)),
}
DEFAULT_DATA = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}  # nnU-Net's plan defaults
DEFAULT_PROBABILITIES = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}


def results_folder(root: Path, case: str, modality: str, target, shape_zyx) -> Path:
    import torch

    from mednextv2.bundle import Bundle
    from mednextv2.network import MedNeXt, MedNeXtConfig
    from bench_network import randomised
    from segment_fixtures import bundle_spec

    config = MedNeXtConfig(in_channels=1, n_channels=4, n_classes=4, exp_r=2, kernel_size=3, block_counts=[1] * 9,
                           grn=True, deep_supervision=False)
    model = MedNeXt(config)
    randomised(model, seed=0)
    if modality == "CT":
        banded(model, CT_NORM)
    else:  # z-scored MR: bands over -2..2 standard deviations
        banded(model, {"clip": [-2.0, 2.0], "mean": 0.0, "std": 1.0})
    # nnunet_plans writes CT statistics; an MR plan then switches to z-scoring, which ignores them
    bundle = Bundle.create(bundle_spec(config, patch=(32, 128, 128), target_spacing=target, normalization=[CT_NORM]),
                           [model.state_dict()])
    plans, dataset = nnunet_plans(bundle, shape_zyx)
    conf = plans["configurations"]["3d_fullres"]
    if modality != "CT":
        conf["normalization_schemes"] = ["ZScoreNormalization"]
        dataset["channel_names"] = {"0": modality}
    conf["resampling_fn_data_kwargs"] = dict(DEFAULT_DATA)
    conf["resampling_fn_seg_kwargs"] = dict(DEFAULT_PROBABILITIES, is_seg=True)
    conf["resampling_fn_probabilities_kwargs"] = dict(DEFAULT_PROBABILITIES)
    folder = root / case / "nnUNetTrainer_MedNeXt__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    torch.save({"network_weights": model.state_dict(), "trainer_name": "nnUNetTrainer_MedNeXt",
                "inference_allowed_mirroring_axes": (0, 1, 2)}, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def predict_nnunet(folder: Path, image_path: Path) -> np.ndarray:
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from mednextv2.network import from_official_state_dict

    plans = json.loads((folder / "plans.json").read_text())
    dataset = json.loads((folder / "dataset.json").read_text())
    state = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=True)["network_weights"]
    network = from_official_state_dict(state, deep_supervision=False).eval()
    image, props = SimpleITKIO().read_images([str(image_path)])
    manager = PlansManager(plans)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    predictor.manual_initialization(network, manager, manager.get_configuration("3d_fullres"), [network.state_dict()],
                                    dataset, "nnUNetTrainer", None)
    return predictor.predict_single_npy_array(image, props, None, None, False)


def main() -> None:
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(1)
    from mednextv2.inference.pipeline import segment
    from mednextv2.store.importer import import_model

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MEDNEXTV2_HOME"] = str(Path(tmp) / "home")
        for case in sys.argv[1:] or CASES:
            image_path, modality, target = CASES[case]
            image = sitk.ReadImage(str(image_path))
            folder = results_folder(Path(tmp), case, modality, target, sitk.GetArrayFromImage(image).shape)
            model_dir = import_model(folder, model_id=f"agree-{case}")
            start = time.perf_counter()
            ours = sitk.GetArrayFromImage(segment(image, str(model_dir), device="cpu", tta=False))
            t_ours = time.perf_counter() - start
            start = time.perf_counter()
            theirs = predict_nnunet(folder, image_path)
            t_nnunet = time.perf_counter() - start
            agree = float((ours == theirs).mean())
            counts = np.bincount(theirs.ravel().astype(np.int64), minlength=4) / theirs.size
            results[case] = {"agreement": agree, "voxels": int(theirs.size), "label_fractions": counts.round(4).tolist(),
                             "seconds_ours": round(t_ours, 1), "seconds_nnunet": round(t_nnunet, 1),
                             "load": os.getloadavg()[0]}
            print(case, json.dumps(results[case]), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
