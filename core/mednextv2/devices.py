"""Which torch device to run on, and which autocast precision it gets.

One home for the device choice, shared by segmenting (sliding_window.py) and training (train/),
so that `--device auto` means the same machine for both.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from mednextv2.errors import InputError


def resolve_device(name: Union[str, torch.device] = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU; an explicit device that is not there is an InputError."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} requested but CUDA is not available "
                             "(no NVIDIA GPU, or torch built without CUDA); use --device cpu or auto")
        return torch.device(name)
    if name == "mps":
        if not mps_ok:
            raise InputError("device 'mps' requested but Apple Metal is not available; use --device cpu or auto")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device {name!r}; expected auto, cuda, mps or cpu")


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """bf16 on CUDA where supported, else fp16; none on CPU (bf16 measured slower there) and MPS."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
