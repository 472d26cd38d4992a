"""Start a network from a base model: every matching weight copied, head rows mapped by label name."""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import torch
from torch import nn

from mednextv2.errors import InputError
from mednextv2.train.planning import LabelSpec

log = logging.getLogger(__name__)


def _is_head(key: str) -> bool:
    return key.startswith("out_") and ".conv_out." in key


def _class_axis(base: torch.Tensor, target: torch.Tensor, base_classes: int, classes: int) -> int:
    for axis in range(base.dim()):
        if base.shape[axis] == base_classes and target.shape[axis] == classes and all(
                b == t for i, (b, t) in enumerate(zip(base.shape, target.shape)) if i != axis):
            return axis
    raise InputError(f"cannot map head weights of shape {tuple(base.shape)} onto {tuple(target.shape)}")


def init_from_base(model: nn.Module, base_state: Mapping[str, torch.Tensor], labels: Sequence[LabelSpec],
                   base_classes: int) -> None:
    """Copy `base_state` into `model`; head row i+1 comes from base row labels[i].base_row (or stays new)."""
    own = model.state_dict()
    classes = len(labels) + 1
    rows = [0] + [spec.base_row for spec in labels]
    copied, missing = 0, []
    with torch.no_grad():
        for key, target in own.items():
            source = base_state.get(key)
            if source is None:
                missing.append(key)
                continue
            if _is_head(key):
                axis = _class_axis(source, target, base_classes, classes)
                for new_row, base_row in enumerate(rows):
                    if base_row is not None:
                        target.select(axis, new_row).copy_(source.select(axis, base_row))
            elif tuple(source.shape) == tuple(target.shape):
                target.copy_(source)
            else:
                raise InputError(f"base weight {key} has shape {tuple(source.shape)}, the network needs {tuple(target.shape)}")
            copied += 1
    model.load_state_dict(own)
    # Deep-supervision heads absent from a base saved without them start fresh; everything else must match.
    real_missing = [k for k in missing if not k.startswith(("out_1.", "out_2.", "out_3.", "out_4."))]
    if real_missing:
        raise InputError(f"base model lacks {len(real_missing)} weight(s) the network needs, e.g. {real_missing[:3]}")
    log.info("initialised %d tensors from the base model (%d new deep-supervision head tensors)", copied, len(missing))
