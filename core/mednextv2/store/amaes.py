"""AMAES's pretrained MedNeXt encoders (Munk et al. 2024) as a base for fine-tuning.

AMAES pretrained MedNeXt-M and -L encoders as masked autoencoders on brain MRI and published
them as `torch.save`d state dicts of their Lightning module (docs/models.md says where). The
module's `model` is a Yucca-style MedNeXt: `model.encoder.*` holds stem, enc_block_0..3,
down_0..3 and bottleneck under the official MedNeXt names, so the encoder maps onto ours by
dropping the prefix; `model.rec_head.*` is the light-weight reconstruction decoder of the
pretraining, of no use for segmentation, and is ignored. The segmentation decoder is not in the
file: it starts fresh, mirroring the encoder as the official MedNeXt-M/L (and AMAES's own
fine-tuning) do. The file is read with `torch.load(weights_only=True)`: no code in it runs.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch

from mednextv2.errors import InputError
from mednextv2.network import MedNeXt, MedNeXtConfig
from mednextv2.network.official import _KEY, named_tensors

log = logging.getLogger(__name__)

SUFFIXES = (".pth", ".pt", ".ckpt")  # what `train --base` reads as a checkpoint file, not a bundle
ENCODER = "model.encoder."
# The other heads of AMAES's MedNeXt: reconstruction (the one their files hold), contrastive,
# rotation, prediction. None of them is part of the encoder.
PRETRAINING_HEADS = ("model.rec_head.", "model.con_head.", "model.rot_head.", "model.pred_head.")
ENCODER_STAGES = ("enc_block_0", "enc_block_1", "enc_block_2", "enc_block_3", "bottleneck")
_COMPILED = "_orig_mod."  # torch.compile's wrapper, inside the Lightning module's `model`
_IGNORED = ("dummy_tensor",)  # Yucca's checkpointing workaround; carries no weights
# AMAES's two published encoders (their mednext_m3 / mednext_l3): block counts, expansion ratios
VARIANTS = {"MedNeXt-M": ((3, 4, 4, 4, 4), (2, 3, 4, 4, 4)), "MedNeXt-L": ((3, 4, 8, 8, 8), (3, 4, 8, 8, 8))}


@dataclass(frozen=True)
class AmaesEncoder:
    """The encoder of an AMAES checkpoint, under our names, with what its shapes say."""

    file_name: str
    state: Dict[str, torch.Tensor]  # official MedNeXt names (stem.*, enc_block_*, down_*, bottleneck.*)
    in_channels: int
    n_channels: int
    kernel_size: int
    block_counts: Tuple[int, ...]  # enc_block_0..3, bottleneck
    exp_r: Tuple[int, ...]
    grn: bool
    ignored: int  # pretraining-head tensors left out

    @property
    def variant(self) -> str:
        for name, (counts, ratios) in VARIANTS.items():
            if self.block_counts == counts and self.exp_r == ratios and self.n_channels == 32:
                return name
        return "MedNeXt"

    def network_config(self, n_classes: int, deep_supervision: bool = True) -> MedNeXtConfig:
        """The whole network: this encoder, and a decoder that mirrors it stage by stage."""
        mirror = lambda values: list(values) + [values[3], values[2], values[1], values[0]]  # noqa: E731
        return MedNeXtConfig(in_channels=self.in_channels, n_channels=self.n_channels, n_classes=n_classes,
                             exp_r=mirror(self.exp_r), kernel_size=self.kernel_size,
                             block_counts=mirror(self.block_counts), grn=self.grn, deep_supervision=deep_supervision)


def is_checkpoint_file(ref: str) -> bool:
    """Whether `train --base REF` names a checkpoint file (.pth/.pt/.ckpt) rather than a bundle or id."""
    path = Path(ref).expanduser()
    return path.suffix.lower() in SUFFIXES and not path.is_dir()


def _load(path: Path):
    from mednextv2.store.checkpoints import load_checkpoint

    if not path.is_file():
        raise InputError(f"--base {path}: no such file")
    try:
        return load_checkpoint(path, advice="Only weights-only checkpoints are read, such as AMAES's published "
                                            "encoder files; get the file from the Zenodo record again.")
    except InputError as e:
        raise InputError(f"--base {e}") from e


def _flat_state(obj, path: Path) -> Dict[str, torch.Tensor]:
    """The flat state dict, from itself or a Lightning checkpoint's `state_dict`; `_orig_mod.` removed."""
    try:
        obj = named_tensors(obj, "an AMAES checkpoint", ("state_dict",))
    except ValueError as e:
        raise InputError(f"--base {path}: {e}") from e
    out = {}
    for key, value in obj.items():
        name = key[len(_COMPILED):] if key.startswith(_COMPILED) else key
        out[name.replace("." + _COMPILED, ".")] = value
    return out


def _encoder_state(flat: Mapping[str, torch.Tensor], path: Path) -> Tuple[Dict[str, torch.Tensor], int]:
    encoder, ignored, unknown = {}, 0, []
    for key, value in flat.items():
        if key.startswith(ENCODER):
            name = key[len(ENCODER):]
            if name in _IGNORED:
                continue
            if not _KEY.match(name) or not name.startswith(("stem.",) + tuple(s + "." for s in ENCODER_STAGES)
                                                             + tuple(f"down_{i}." for i in range(4))):
                unknown.append(key)
            encoder[name] = value
        elif key.startswith(PRETRAINING_HEADS):
            ignored += 1
        else:
            unknown.append(key)
    if not encoder:
        sample = ", ".join(list(flat)[:3])
        raise InputError(f"--base {path}: not an AMAES MedNeXt checkpoint: it holds no {ENCODER}* weights "
                         f"(its first entries: {sample[:200]}). A model bundle is given as its folder or .zip")
    if unknown:
        raise InputError(f"--base {path}: not an AMAES MedNeXt checkpoint: {len(unknown)} entry(ies) that are no "
                         f"part of a MedNeXt encoder or AMAES's pretraining heads, e.g. {unknown[:3]}")
    return encoder, ignored


def _stage_shape(state: Mapping[str, torch.Tensor], path: Path, stage: str) -> Tuple[int, int]:
    indices = {int(m.group(1)) for k in state for m in [re.match(rf"{stage}\.(\d+)\.", k)] if m}
    if not indices or indices != set(range(len(indices))):
        raise InputError(f"--base {path}: not an AMAES MedNeXt checkpoint: encoder stage {stage!r} has block "
                         f"indices {sorted(indices)[:10]}, expected 0..n-1")
    conv2 = _tensor(state, path, f"{stage}.0.conv2.weight", 5)
    return len(indices), int(conv2.shape[0]) // max(1, int(conv2.shape[1]))


def _tensor(state: Mapping[str, torch.Tensor], path: Path, key: str, ndim: int) -> torch.Tensor:
    if key not in state:
        raise InputError(f"--base {path}: not an AMAES MedNeXt checkpoint: {ENCODER}{key} is missing")
    if state[key].dim() != ndim:
        raise InputError(f"--base {path}: not an AMAES MedNeXt checkpoint: {ENCODER}{key} has shape "
                         f"{tuple(state[key].shape)}, expected {ndim} dimensions")
    return state[key]


def read_amaes(path: Path) -> AmaesEncoder:
    """The encoder of an AMAES checkpoint file; InputError naming the file and the problem otherwise."""
    path = Path(path).expanduser()
    state, ignored = _encoder_state(_flat_state(_load(path), path), path)
    stem = _tensor(state, path, "stem.weight", 5)
    kernel = int(_tensor(state, path, "enc_block_0.0.conv1.weight", 5).shape[-1])
    shapes = [_stage_shape(state, path, stage) for stage in ENCODER_STAGES]
    encoder = AmaesEncoder(path.name, {k: v.detach().to(torch.float32) if v.is_floating_point() else v
                                       for k, v in state.items()},
                           in_channels=int(stem.shape[1]), n_channels=int(stem.shape[0]), kernel_size=kernel,
                           block_counts=tuple(n for n, _ in shapes), exp_r=tuple(r for _, r in shapes),
                           grn="enc_block_0.0.grn_gamma" in state, ignored=ignored)
    try:
        config = encoder.network_config(n_classes=2)
    except ValueError as e:
        raise InputError(f"--base {path}: not an AMAES MedNeXt checkpoint: its shapes give no MedNeXt ({e})") from e
    with torch.device("meta"):  # shapes only: no memory for an L network's weights
        shapes = MedNeXt(config).state_dict()
    _check_shapes(encoder, shapes, path)
    log.info("%s: AMAES %s encoder (%d channels, kernel %d, blocks %s, expansion %s, GRN %s); %d tensors of the "
             "pretraining's reconstruction head are not used", path.name, encoder.variant, encoder.n_channels, kernel,
             list(encoder.block_counts), list(encoder.exp_r), "yes" if encoder.grn else "no", ignored)
    return encoder


def _encoder_key(key: str) -> bool:
    return key.startswith(("stem.", "down_") + tuple(s + "." for s in ENCODER_STAGES))


def _grn_free_down(key: str) -> bool:
    """AMAES's down blocks have no GRN where ours have one; zero GRN parameters are the identity."""
    return bool(re.match(r"down_[1-3]\.grn_(gamma|beta)\Z", key))


def _check_shapes(encoder: AmaesEncoder, own: Mapping[str, torch.Tensor], path: Path) -> None:
    wanted = {k: v for k, v in own.items() if _encoder_key(k)}
    missing = sorted(k for k in wanted if k not in encoder.state and not (encoder.grn and _grn_free_down(k)))
    unexpected = sorted(k for k in encoder.state if k not in wanted)
    wrong = sorted(k for k in encoder.state if k in wanted and tuple(encoder.state[k].shape) != tuple(wanted[k].shape))
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
                 "wrong shapes " + ", ".join(f"{k}: {tuple(encoder.state[k].shape)} where the encoder its stem and "
                                             f"stages describe has {tuple(wanted[k].shape)}" for k in wrong[:3])
                 if wrong else ""]
        raise InputError(f"--base {path}: not a MedNeXt encoder this network can hold: "
                         + "; ".join(p for p in parts if p))


def load_encoder(model: MedNeXt, encoder: AmaesEncoder) -> None:
    """Copy the encoder into `model`; the decoder and the heads keep their fresh initialisation."""
    own = model.state_dict()
    _check_shapes(encoder, own, Path(encoder.file_name))
    with torch.no_grad():
        for key, value in encoder.state.items():
            own[key].copy_(value)
        for key in own:
            if _encoder_key(key) and key not in encoder.state:  # a GRN AMAES's down blocks lack
                own[key].zero_()
    model.load_state_dict(own)
    fresh = sum(1 for k in own if not _encoder_key(k))
    log.info("initialised the %d encoder tensors from %s; the decoder and heads (%d tensors) start fresh",
             len(encoder.state), encoder.file_name, fresh)


def describe(encoder: AmaesEncoder, sha256: Optional[str] = None) -> dict:
    """What the bundle's provenance records of the base: never a path."""
    out = {"format": "amaes", "file": encoder.file_name, "encoder": encoder.variant,
           "block_counts": list(encoder.block_counts), "exp_r": list(encoder.exp_r)}
    if sha256:
        out["sha256"] = sha256
    return out
