"""AMAES pretrained encoders as a fine-tune base: the import is Yucca's encoder function, every
encoder key is mapped, the reconstruction head is left out (and said so), and every other file is
refused with an InputError naming it, without running anything a pickle asks for.

Fixtures: Testing/fixtures/amaes-mednext, built by its make_fixture.py with Yucca's own
`MedNeXt_encoder` (yucca 2.3.7, see provenance.json) and saved as AMAES saves.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from mednextv2.errors import InputError
from mednextv2.network import MedNeXt, MedNeXtConfig
from mednextv2.store.amaes import AmaesEncoder, describe, is_checkpoint_file, load_encoder, read_amaes
from segment_fixtures import one_torch_thread  # noqa: F401

FIXTURES = Path(__file__).parent / "fixtures" / "amaes-mednext"
CONFIGS = {"amaes_small": ((2, 1, 1, 1, 2), (2, 3, 4, 4, 4), False), "amaes_small_grn": ((1, 1, 1, 1, 1), (2, 2, 3, 3, 3), True)}


def _raw(name: str = "amaes_small.pth") -> dict:
    return torch.load(FIXTURES / name, weights_only=True)


def _encoder_features(model: MedNeXt, x: torch.Tensor):
    """The five stage outputs of our network's encoder, as Yucca's encoder returns them."""
    out = []
    h = model.stem(x)
    for level in range(4):
        h = getattr(model, f"enc_block_{level}")(h)
        out.append(h)
        h = getattr(model, f"down_{level}")(h)
    return out + [model.bottleneck(h)]


@pytest.mark.parametrize("stem", CONFIGS)
def test_imported_encoder_computes_yuccas_encoder(stem, one_torch_thread):  # noqa: F811
    """Yucca's float64 stage outputs for a fixed input, from our float32 network after the import.
    A wrong key, a transposed kernel or a GRN where Yucca has none is off by O(1)."""
    encoder = read_amaes(FIXTURES / f"{stem}.pth")
    counts, ratios, grn = CONFIGS[stem]
    assert (encoder.block_counts, encoder.exp_r, encoder.grn) == (counts, ratios, grn)
    assert (encoder.in_channels, encoder.n_channels, encoder.kernel_size) == (1, 2, 3)
    model = MedNeXt(encoder.network_config(n_classes=3)).eval()
    load_encoder(model, encoder)
    reference = torch.load(FIXTURES / "features.pt", weights_only=True)
    with torch.no_grad():
        ours = _encoder_features(model, reference["input"].float())
    assert len(ours) == len(reference[stem]) == 5
    for mine, theirs in zip(ours, reference[stem]):
        assert mine.shape == theirs.shape
        error = float((mine.double() - theirs).abs().max())
        assert error <= 2e-5 * float(theirs.abs().max()) + 1e-6, (stem, tuple(theirs.shape), error)
    # The fresh decoder is a working network around it: a full forward on the same input.
    with torch.no_grad():
        assert torch.isfinite(model(reference["input"].float())[0]).all()


def test_every_encoder_key_is_mapped_and_the_rec_head_is_ignored_and_logged(caplog):
    raw = _raw()
    encoder_keys = {k[len("model.encoder."):] for k in raw if k.startswith("model.encoder.")}
    rec_head = [k for k in raw if k.startswith("model.rec_head.")]
    assert encoder_keys and rec_head and len(encoder_keys) + len(rec_head) == len(raw)
    with caplog.at_level(logging.INFO, logger="mednextv2.store.amaes"):
        encoder = read_amaes(FIXTURES / "amaes_small.pth")
    assert set(encoder.state) == encoder_keys and encoder.ignored == len(rec_head)
    assert f"{len(rec_head)} tensors of the pretraining's reconstruction head are not used" in caplog.text
    model = MedNeXt(encoder.network_config(n_classes=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mednextv2.store.amaes"):
        load_encoder(model, encoder)
    after = model.state_dict()
    for key in encoder_keys:
        assert torch.equal(after[key], raw["model.encoder." + key]), key
    decoder = [k for k in after if k not in encoder_keys]
    assert decoder and all(torch.equal(after[k], before[k]) for k in decoder)  # fresh, untouched
    assert all(k.startswith(("up_", "dec_block_", "out_")) for k in decoder)
    assert f"initialised the {len(encoder_keys)} encoder tensors from amaes_small.pth" in caplog.text


def test_lightning_checkpoint_and_compiled_prefixes_read_the_same(tmp_path):
    plain = read_amaes(FIXTURES / "amaes_small.pth")
    compiled = read_amaes(FIXTURES / "amaes_small_lightning_compiled.ckpt")
    leading = tmp_path / "leading.pth"
    torch.save({"_orig_mod." + k: v for k, v in _raw().items()}, leading)
    for other in (compiled, read_amaes(leading)):
        assert set(other.state) == set(plain.state)
        assert all(torch.equal(other.state[k], plain.state[k]) for k in plain.state)


def test_decoder_mirrors_the_encoder_as_amaes_medium_and_large_do():
    """AMAES's mednext_m3 / mednext_l3 are the official MedNeXt-M / -L at kernel 3: the mirrored
    decoder is theirs."""
    for name, preset in (("MedNeXt-M", "v1-M"), ("MedNeXt-L", "v1-L")):
        official = MedNeXtConfig.preset(preset, n_classes=4)
        encoder = AmaesEncoder("x.pth", {}, 1, 32, 3, tuple(official.block_counts[:5]), tuple(official.exp_r[:5]),
                               False, 0)
        assert encoder.variant == name
        assert encoder.network_config(n_classes=4).replace(deep_supervision=official.deep_supervision) == official


def test_checkpoint_files_are_told_from_bundles_and_ids(tmp_path):
    assert is_checkpoint_file("mednext_m3_lw_dec_fullaug.pth") and is_checkpoint_file("x/y.CKPT")
    assert not is_checkpoint_file("my-model") and not is_checkpoint_file("bundle.zip")
    (tmp_path / "odd.pth").mkdir()
    assert not is_checkpoint_file(str(tmp_path / "odd.pth"))  # a folder is a bundle, whatever its name


def test_provenance_names_the_file_never_its_path():
    info = describe(read_amaes(FIXTURES / "amaes_small.pth"), "ab" * 32)
    assert info == {"format": "amaes", "file": "amaes_small.pth", "encoder": "MedNeXt", "block_counts": [2, 1, 1, 1, 2],
                    "exp_r": [2, 3, 4, 4, 4], "sha256": "ab" * 32}


# ---------------------------------------------------------------- refusals
def _saved(tmp_path, obj, name="bad.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _refused(path: Path, *patterns: str) -> str:
    with pytest.raises(InputError) as info:
        read_amaes(path)
    text = str(info.value)
    assert str(path) in text, text
    for pattern in patterns:
        assert re.search(pattern, text), (pattern, text)
    return text


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:  # torch.save of an object whose unpickling runs a command
        torch.save({"model.encoder.stem.weight": torch.zeros(1), "x": _Hostile(marker)}, f)
    _refused(path, r"cannot be read with torch.load\(weights_only=True\)", "posix.system|os.system",
             "Refusing to unpickle it", "Only weights-only checkpoints are read")
    assert "will likely succeed" not in _refused(path)  # torch's advice to load it unsafely is not passed on
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps(_Hostile(marker)))
    _refused(legacy)
    assert not marker.exists()


def test_files_that_are_not_amaes_encoders_are_refused(tmp_path):
    _refused(tmp_path / "missing.pth", "no such file")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    _refused(text, r"cannot be read with torch.load\(weights_only=True\)|not a readable PyTorch checkpoint")
    _refused(_saved(tmp_path, [torch.zeros(1)]), "expected a state dict")
    # A whole-network MedNeXt state dict (official names, no AMAES prefix): no encoder to take.
    official = MedNeXt(MedNeXtConfig.preset("v2-tiny")).state_dict()
    _refused(_saved(tmp_path, dict(official)), r"holds no model\.encoder\.\* weights", "folder or .zip")
    raw = _raw()
    _refused(_saved(tmp_path, dict(raw, **{"model.decoder.up_3.conv1.weight": torch.zeros(1)})),
             "no part of a MedNeXt encoder", r"model\.decoder\.up_3")
    _refused(_saved(tmp_path, dict(raw, **{"model.encoder.dec_block_0.0.conv1.weight": torch.zeros(1)})),
             "no part of a MedNeXt encoder")
    _refused(_saved(tmp_path, dict(raw, **{"model.encoder.stem.weight": "tensor"})), "is not a named tensor")
    # Mismatched shapes: a down block that does not double the channels, a stage with a gap.
    wrong = dict(raw, **{"model.encoder.down_1.conv3.weight": torch.zeros(5, 16, 1, 1, 1)})
    _refused(_saved(tmp_path, wrong), "wrong shapes", r"down_1\.conv3\.weight")
    gap = {k.replace("enc_block_0.1.", "enc_block_0.2."): v for k, v in raw.items()}
    _refused(_saved(tmp_path, gap), r"stage 'enc_block_0' has block indices \[0, 2\]")
    missing = {k: v for k, v in raw.items() if not k.startswith("model.encoder.down_2.")}
    _refused(_saved(tmp_path, missing), r"missing \['down_2\.")
