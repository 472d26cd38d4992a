"""A network config and its weights files, checked against each other before anything large is
built or read.

model.json decides how large a network is built, and a weights file's header how many bytes are
read: a hostile or broken bundle (a 4096-channel config, a 20 GB sparse weights file) would fill
the memory before the mismatch showed. So the config is built on torch's `meta` device first
(shapes only, no memory), its size is checked, and each safetensors header is compared with
those shapes and with the file's length before a tensor is read.
"""
from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from mednextv2.errors import InputError, ResourceError
from mednextv2.schema import loads_strict

Shapes = Dict[str, Tuple[int, ...]]
# v2-width2, the largest preset, has 0.25 billion parameters; 4 billion is 16 GB per fold in float32.
MAX_PARAMETERS = 4_000_000_000
_MAX_HEADER_BYTES = 100 * 1024 ** 2  # a MedNeXt header (~700 tensors) is ~100 kB
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
# A .pt file is unpickled whole (weights_only): its size may hold float64 weights and some extras.
_PT_SLACK_BYTES = 64 * 1024 ** 2


def expected_shapes(config: Any) -> Shapes:
    """Every tensor of the network `config` builds (deep-supervision heads included), by name."""
    import torch

    from mednextv2.network import MedNeXt

    with torch.device("meta"):
        model = MedNeXt(config.replace(deep_supervision=True))
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _physical_memory() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not POSIX
        return None


def check_network_size(shapes: Shapes, folds: int, where: str) -> None:
    """Refuse a network too large to be a MedNeXt, or whose float32 weights exceed this machine's memory."""
    count = sum(math.prod(s) for s in shapes.values())
    if count > MAX_PARAMETERS:
        raise InputError(f"{where}: the network config describes {count / 1e9:.3g} billion parameters, more than the "
                         f"{MAX_PARAMETERS / 1e9:.0f} billion any MedNeXt has; check 'network' (n_channels, exp_r, "
                         "block_counts)")
    need, have = 4 * count * folds, _physical_memory()
    if have and need > have:
        raise ResourceError(f"{where}: the network's weights need {need / 1024 ** 3:.1f} GiB ({folds} fold(s) of "
                            f"{count / 1e6:.0f} million parameters), more than this machine's {have / 1024 ** 3:.1f} GiB")


def max_weights_bytes(shapes: Shapes) -> int:
    """The most bytes a weights file of this network can rightly take (float64, plus a .pt's extras)."""
    return 8 * sum(math.prod(s) for s in shapes.values()) + _PT_SLACK_BYTES


def check_weights_file(path: Path, shapes: Shapes, where: str) -> None:
    """Before reading `path`: its size is plausible for the network and, for safetensors, its
    header's tensors are the network's, with the network's shapes, and fill the file exactly."""
    if not path.name.endswith(".safetensors"):
        size = path.stat().st_size
        if size > max_weights_bytes(shapes):
            raise InputError(f"{where}: weights file {path.name} is {size} bytes, far more than the network config's "
                             f"{sum(math.prod(s) for s in shapes.values())} parameters need")
        return
    safetensors_shapes(path, where, shapes)


def safetensors_shapes(path: Path, where: str, shapes: Optional[Shapes] = None) -> Shapes:
    """The tensor shapes a safetensors file's header declares, read without a tensor: the header
    is well formed, describes exactly the file's length and, when `shapes` is given, names only
    the network's tensors with the network's shapes."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if length is None or length > min(_MAX_HEADER_BYTES, size - 8):
            raise InputError(f"{where}: weights file {path.name} is not a valid safetensors file (its header length "
                             "is missing or larger than the file)")
        header = loads_strict(f.read(length), f"{where}: weights file {path.name} header")
    found, end = check_header(header, shapes, where, path.name)
    if 8 + length + end != size:
        raise InputError(f"{where}: weights file {path.name} is {size} bytes, but its header describes "
                         f"{8 + length + end}: the file is damaged or not the weights it claims to be")
    return found


def check_header(header: Any, shapes: Optional[Shapes], where: str, name: str) -> Tuple[Shapes, int]:
    """A parsed safetensors header's tensors (name -> shape) and where their data ends; each entry
    well formed and, when `shapes` is given, one of the network's tensors with its shape. Used on
    a file before it is read and on a zip entry before its tensors are allocated."""
    if not isinstance(header, dict):
        raise InputError(f"{where}: weights file {name} is not a valid safetensors file (header is not an object)")
    found, end = {}, 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (start, stop) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
            itemsize = _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{where}: weights file {name} is not a valid safetensors file (tensor {key!r}: "
                             f"header entry {e})") from e
        if shapes is not None and key not in shapes:
            raise InputError(f"{where}: weights file {name} does not fit the network config: it holds tensor "
                             f"{key!r}, which the network has not")
        if shapes is not None and shape != shapes[key]:
            raise InputError(f"{where}: weights file {name} does not fit the network config: tensor {key!r} has "
                             f"shape {list(shape)}, the network needs {list(shapes[key])}")
        if not isinstance(start, int) or not isinstance(stop, int) or stop - start != itemsize * math.prod(shape):
            raise InputError(f"{where}: weights file {name}: tensor {key!r} has invalid data offsets")
        found[key], end = shape, max(end, stop)
    return found, end
