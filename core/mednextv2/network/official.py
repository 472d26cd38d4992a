"""Official MedNeXt checkpoints: read the configuration off the tensor shapes, load, and UpKern."""
from __future__ import annotations

import re
from typing import Callable, Dict, List, Mapping, Sequence

import torch
import torch.nn.functional as F

from .config import N_STAGES, MedNeXtConfig
from .model import STAGES, MedNeXt

_PREFIXES = ("module.", "_orig_mod.")
_IGNORED = ("dummy_tensor",)  # the official class's checkpointing workaround; carries no weights
# Every name a MedNeXt parameter can have (blocks hold conv1..3, norm, res_conv, grn_gamma/beta).
_KEY = re.compile(r"(stem|out_[0-4]\.conv_out|(?:(?:enc_block_[0-3]|bottleneck|dec_block_[0-3])\.\d{1,4}|(?:down|up)_[0-3])"
                  r"(?:\.(?:conv[123]|norm|res_conv))?)\.(?:weight|bias|grn_gamma|grn_beta)\Z")
MAX_KEYS = 20_000  # a v2-width2 network has ~600 tensors; block counts in the thousands are not a MedNeXt


def named_tensors(obj, what: str, wrappers: Sequence[str] = ()) -> Mapping[str, torch.Tensor]:
    """`obj`, or the mapping under its first of `wrappers` keys, checked to be a non-empty state
    dict of at most MAX_KEYS named tensors; ValueError "not WHAT: ..." otherwise. Every reader of a
    foreign checkpoint (official, MONAI, AMAES) checks its file's shape here."""
    if isinstance(obj, Mapping):
        for key in wrappers:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        held = f" (or a checkpoint dict holding one under {', '.join(repr(w) for w in wrappers)})" if wrappers else ""
        raise ValueError(f"not {what}: expected a state dict of named tensors{held}, got {type(obj).__name__}")
    if len(obj) > MAX_KEYS:
        raise ValueError(f"not {what}: {len(obj)} entries, more than the {MAX_KEYS} any MedNeXt has")
    for key, value in obj.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise ValueError(f"not {what}: entry {str(key)[:80]!r} is not a named tensor")
    return obj


def strip_prefixes(key: str, prefixes: Sequence[str] = _PREFIXES) -> str:
    """`key` without any of the wrapper prefixes (DataParallel's `module.`, torch.compile's `_orig_mod.`), repeated."""
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def _tensor_dict(obj) -> Dict[str, torch.Tensor]:
    """The state dict inside a raw state dict or an nnU-Net v1 / v2 checkpoint dict, prefixes removed."""
    obj = named_tensors(obj, "a MedNeXt checkpoint", ("network_weights", "state_dict"))
    out = {}
    for key, value in obj.items():
        key = strip_prefixes(key)
        if key in _IGNORED:
            continue
        if not _KEY.match(key):
            raise ValueError(f"not a MedNeXt checkpoint: unexpected entry {key[:80]!r}")
        out[key] = value
    return out


def _require(sd: Mapping[str, torch.Tensor], key: str, ndim: int) -> torch.Tensor:
    if key not in sd:
        raise ValueError(f"not a MedNeXt checkpoint: key {key!r} is missing")
    if sd[key].dim() != ndim:
        raise ValueError(f"not a MedNeXt checkpoint: {key!r} has shape {tuple(sd[key].shape)}, expected {ndim} dimensions")
    return sd[key]


def config_from_state_dict(obj) -> MedNeXtConfig:
    """Every constructor argument, read off the shapes and key names of a checkpoint."""
    sd = _tensor_dict(obj)
    stem = _require(sd, "stem.weight", 5)
    n_channels, in_channels = int(stem.shape[0]), int(stem.shape[1])
    n_classes = int(_require(sd, "out_0.conv_out.weight", 5).shape[1])
    kernel = int(_require(sd, "enc_block_0.0.conv1.weight", 5).shape[-1])
    block_counts, exp_r = [], []
    for stage in STAGES:
        indices = {int(m.group(1)) for k in sd for m in [re.match(rf"{stage}\.(\d+)\.", k)] if m}
        if not indices or indices != set(range(len(indices))):
            raise ValueError(f"not a MedNeXt checkpoint: stage {stage!r} has block indices {sorted(indices)}")
        block_counts.append(len(indices))
        conv2 = _require(sd, f"{stage}.0.conv2.weight", 5)
        exp_r.append(int(conv2.shape[0]) // int(conv2.shape[1]))
    down = []
    for level in range(4):
        conv2 = _require(sd, f"down_{level}.conv2.weight", 5)
        down.append(int(conv2.shape[0]) // int(conv2.shape[1]))
    heads = [f"out_{level}.conv_out.weight" in sd for level in range(1, 5)]
    if any(heads) and not all(heads):
        raise ValueError("not a MedNeXt checkpoint: deep-supervision heads out_1..out_4 are only partly present")
    assert len(block_counts) == N_STAGES
    return MedNeXtConfig(in_channels=in_channels, n_channels=n_channels, n_classes=n_classes, exp_r=exp_r,
                         kernel_size=kernel, block_counts=block_counts,
                         grn="enc_block_0.0.grn_gamma" in sd, deep_supervision=all(heads), down_exp_r=down,
                         # Resampling blocks without res_conv: a network without residual connections.
                         residual="down_0.res_conv.weight" in sd)


def state_dict_problems(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor],
                        name: Callable[[str], str] = str) -> str:
    """What keeps `given` from loading where `expected` is (missing keys, extra keys, other shapes), ""
    when nothing does; `name` shows a key as the file's owner knows it."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(expected) & set(given) if tuple(expected[k].shape) != tuple(given[k].shape))

    def listed(keys: List[str]) -> str:
        return "[" + ", ".join(name(k) for k in keys[:5]) + (" ..." if len(keys) > 5 else "") + "]"

    parts = [f"{what} {listed(keys)}" for what, keys in (("missing keys", missing), ("unexpected keys", unexpected))
             if keys]
    if wrong:
        parts.append("wrong shapes " + ", ".join(f"{name(k)}: {tuple(given[k].shape)} vs expected "
                                                 f"{tuple(expected[k].shape)}" for k in wrong[:3]))
    return "; ".join(parts)


def _load_exact(model: MedNeXt, sd: Mapping[str, torch.Tensor]) -> None:
    problems = state_dict_problems(model.state_dict(), sd)
    if problems:
        raise ValueError(f"not a MedNeXt checkpoint of the configuration read off its shapes: {problems}")
    model.load_state_dict(sd, strict=True)


def from_official_state_dict(obj, deep_supervision=None) -> MedNeXt:
    """Build and load a MedNeXt from an official state dict or nnU-Net v1/v2 checkpoint dict.

    `deep_supervision` overrides what the checkpoint had; heads it lacks are newly initialised.
    """
    sd = _tensor_dict(obj)
    config = config_from_state_dict(sd)
    model = MedNeXt(config)
    _load_exact(model, {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in sd.items()})
    if deep_supervision is not None:
        model.set_deep_supervision(deep_supervision)
    return model


def official_state_dict(model: MedNeXt) -> Dict[str, torch.Tensor]:
    """The state dict as the official class writes it, `dummy_tensor` included."""
    sd = dict(model.state_dict())
    sd["dummy_tensor"] = torch.ones(1)
    return sd


def upkern(source_state_dict, target_model: MedNeXt) -> MedNeXt:
    """UpKern (MedNeXt v1): initialise a larger-kernel network from smaller-kernel weights.

    Conv weights whose spatial shape differs are resized trilinearly (align_corners=False, as
    the official rule does); everything of equal shape is copied. Returns `target_model`.
    """
    source = _tensor_dict(source_state_dict)
    target = target_model.state_dict()
    new = {}
    for key, value in target.items():
        if key not in source:
            raise ValueError(f"UpKern: source checkpoint lacks {key!r}; source and target must differ only in kernel size")
        src = source[key].to(dtype=value.dtype)
        if src.shape == value.shape:
            new[key] = src
        elif src.dim() == 5 and src.shape[:2] == value.shape[:2]:
            new[key] = F.interpolate(src, size=tuple(value.shape[2:]), mode="trilinear")
        else:
            raise ValueError(f"UpKern: {key!r} has shape {tuple(src.shape)} in the source, {tuple(value.shape)} in the target")
    target_model.load_state_dict(new, strict=True)
    return target_model
