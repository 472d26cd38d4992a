"""nnU-Net import: GRN normaliser option, checkpoint floods, fold names, per-fold mirror axes
and hostile results folders. Results folders as in test_import_nnunet.py."""
from __future__ import annotations

import json
import struct
import time
import zlib

import pytest
import torch
from test_import_nnunet import (_assert_nothing_installed, checkpoint, official, plans_json,  # noqa: F401
                                write_results)

from mednextv2.bundle import load_bundle
from mednextv2.cli import main
from mednextv2.errors import InputError
from mednextv2.inference.pipeline import Segmenter
from mednextv2.inference.sliding_window import mirror_combinations
from mednextv2.network.layers import MedNeXtBlock
from mednextv2.store.importer import ImportOptions, import_model

pytestmark = pytest.mark.usefixtures("home")


def _text(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _stored_zip(files) -> bytes:
    """A zip64 archive of stored entries, written directly (zipfile spends ~50 us per entry)."""
    local, central, offset = [], [], 0
    for name, data in files:
        n, crc = name.encode(), zlib.crc32(data)
        head = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0x21, crc, len(data), len(data), len(n), 0) + n
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 20, 0, 0, 0, 0x21, crc, len(data), len(data),
                                   len(n), 0, 0, 0, 0, 0, offset) + n)
        local.append(head + data)
        offset += len(head) + len(data)
    directory, count = b"".join(central), len(central)
    end64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, len(directory), offset)
    locator = struct.pack("<IIQI", 0x07064B50, 0, offset + len(directory), 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return b"".join(local) + directory + end64 + locator + end


def write_flood_checkpoint(path, n: int) -> None:
    """A checkpoint in torch.save's zip layout with `n` empty float tensors under network_weights,
    byte for byte what torch.save writes for them (torch.save itself needs ~40 s for 200k).
    torch.load(weights_only=True) reads it: checked for n=1000 in test_flood_file_is_a_real_checkpoint."""
    tensor = (b"ctorch._utils\n_rebuild_tensor_v2\n((" + _text("storage") + b"ctorch\nFloatStorage\n%s" + _text("cpu")
              + b"K\x00tQK\x00K\x00\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtR")
    body = b"".join(_text(f"junk.{i}.weight") + tensor.replace(b"%s", _text(str(i))) for i in range(n))
    pickled = b"\x80\x02}(" + _text("network_weights") + b"}(" + body + b"uu."
    files = [("flood/data.pkl", pickled), ("flood/byteorder", b"little")]
    files += [(f"flood/data/{i}", b"") for i in range(n)] + [("flood/version", b"3\n")]
    path.write_bytes(_stored_zip(files))


def test_flood_file_is_a_real_checkpoint(tmp_path):
    write_flood_checkpoint(tmp_path / "f.pth", 1000)
    weights = torch.load(tmp_path / "f.pth", weights_only=True)["network_weights"]
    assert len(weights) == 1000 and weights["junk.7.weight"].shape == (0,)


def test_checkpoint_key_flood_is_refused_in_seconds(tmp_path, official, home):
    folder = write_results(tmp_path, {0: official["weights"]})
    write_flood_checkpoint(folder / "fold_0" / "checkpoint_final.pth", 200_000)
    start = time.monotonic()
    with pytest.raises(InputError, match=r"fold_0/checkpoint_final.pth holds 200003 records, more than the 20000"):
        import_model(folder)
    assert time.monotonic() - start < 30  # before the fix: minutes and GBs inside torch.load
    _assert_nothing_installed(home)


def test_checkpoint_with_foreign_names_is_refused_before_building(tmp_path, official, home):
    folder = write_results(tmp_path, {0: official["weights"]})
    flooded = {**official["weights"], **{f"extra.{i}.weight": torch.empty(0) for i in range(3000)}}
    torch.save(checkpoint(flooded, 0), folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(InputError, match=r"not a MedNeXt .*unexpected entry 'extra\.0\.weight'"):
        import_model(folder)
    _assert_nothing_installed(home)


def test_fold_is_a_name_never_a_path(tmp_path, official, home, capsys):
    folder = write_results(tmp_path, {0: official["weights"], 1: official["perturbed"]})
    outside = tmp_path / "other" / "fold_0"
    outside.mkdir(parents=True)
    torch.save(checkpoint(official["weights"], 0), outside / "checkpoint_final.pth")
    for fold in ("0/../../other/fold_0", "../fold_0", str(outside)):
        with pytest.raises(InputError, match=r"no fold named .*fold_\* folders: \['fold_0', 'fold_1'\]"):
            import_model(folder, options=ImportOptions(folds=[fold]))
        assert main(["models", "--progress", "none", "import", str(folder), "--fold", fold]) == 2
    _assert_nothing_installed(home)
    assert main(["models", "--progress", "none", "import", str(folder), "--fold", "fold_1", "--fold", "0"]) == 0
    capsys.readouterr()
    assert load_bundle(home / "models" / "dataset501-liver").weights == ("fold_1.safetensors", "fold_0.safetensors")


def test_each_fold_keeps_its_own_mirror_axes(tmp_path, official, home):
    # transpose_forward (2, 0, 1): the network's axis a is our axis (2, 0, 1)[a]
    folder = write_results(tmp_path, {0: official["weights"], 1: official["perturbed"]}, plans=plans_json(transpose=(2, 0, 1)))
    first = checkpoint(official["weights"], 0)
    first["inference_allowed_mirroring_axes"] = (0, 1)  # network axes 0, 1 = our x, z
    torch.save(first, folder / "fold_0" / "checkpoint_final.pth")
    last = checkpoint(official["perturbed"], 1)
    last["inference_allowed_mirroring_axes"] = (0, 1, 2)
    last["trainer_name"] = "OtherTrainer"
    torch.save(last, folder / "fold_1" / "checkpoint_final.pth")
    path = import_model(folder)
    spec = load_bundle(path).spec
    imported = spec.provenance.imported_from
    assert imported["mirror_axes"] == {"fold_0": [0, 2], "fold_1": [0, 1, 2]}
    # each fold mirrors on its own axes at inference (as nnU-Net predicts); TTA refers to their union
    assert spec.inference.fold_mirror_axes == ((0, 2), (0, 1, 2))
    assert spec.inference.mirror_axes == (0, 1, 2)
    assert Segmenter(path, device="cpu").predictor.mirrors == [
        mirror_combinations((0, 2)), mirror_combinations((0, 1, 2))]
    assert imported["trainer"] == "OtherTrainer, nnUNetTrainer_MedNeXtV2_L_k3_GRN"


def test_grn_norm_option_reaches_the_bundle_and_network(tmp_path, official, home, capsys):
    folder = write_results(tmp_path, {0: official["weights"]})
    assert main(["models", "--progress", "none", "import", str(folder), "--grn-norm", "sum", "--id", "summed"]) == 0
    assert main(["models", "--progress", "none", "import", str(folder), "--id", "meaned"]) == 0
    capsys.readouterr()
    summed, meaned = load_bundle(home / "models" / "summed"), load_bundle(home / "models" / "meaned")
    assert summed.network.grn_norm == "sum" and meaned.network.grn_norm == "mean"
    blocks = [m for m in summed.build_models("cpu")[0].modules() if isinstance(m, MedNeXtBlock)]
    assert blocks and all(b.grn_norm == "sum" for b in blocks)
    x = official["input"]
    with torch.no_grad():  # the same weights, read with the other normaliser, are another function
        assert (summed.build_models("cpu")[0](x) - meaned.build_models("cpu")[0](x)).abs().max() > 1e-2
    with pytest.raises(InputError, match="--grn-norm must be one of mean, sum"):
        import_model(folder, model_id="bad", options=ImportOptions(grn_norm="max"))
    assert json.loads((home / "models" / "summed" / "model.json").read_text())["network"]["grn_norm"] == "sum"


def test_v2_import_records_the_plans_resampling_orders(tmp_path, official, home):
    from mednextv2.bundle import ResampleOrder, Resampling

    folder = write_results(tmp_path, {0: official["weights"]})
    spec = load_bundle(import_model(folder)).spec
    # plans_json: data order 3 / order_z 0, probabilities order 1 / order_z 0 (nnU-Net's defaults)
    assert spec.preprocessing.resampling == Resampling(ResampleOrder(3, 0, None), ResampleOrder(1, 0, None))
    plans = plans_json()
    plans["configurations"]["3d_fullres"]["resampling_fn_data_kwargs"]["order"] = 5
    other = write_results(tmp_path / "other", {0: official["weights"]}, plans=plans)
    with pytest.raises(InputError, match=r"spline order 5 \(order_z 0\); mednextv2 reproduces order 1 or 3 with order_z 0"):
        import_model(other, model_id="order5")
