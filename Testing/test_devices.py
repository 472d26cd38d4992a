"""Device choice (mednextv2.devices): what `auto` picks on each kind of machine, what an explicit
device that is not there says, and the autocast precision each device gets.

The machine's accelerators are simulated by patching torch's availability checks, so every
branch runs on a CPU-only CI machine too; the last test checks the real machine."""
from __future__ import annotations

import pytest
import torch

from mednextv2.devices import autocast_dtype, resolve_device
from mednextv2.errors import InputError


@pytest.fixture
def machine(monkeypatch):
    """machine(cuda=..., mps=..., bf16=...) makes torch report those accelerators."""
    def set_machine(cuda: bool = False, mps: bool = False, bf16: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    return set_machine


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (True, False, "cuda"),
                                                  (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(machine, cuda, mps, expected):
    machine(cuda=cuda, mps=mps)
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device(None) == torch.device(expected)  # no choice means auto
    assert resolve_device("AUTO") == torch.device(expected)


def test_explicit_devices(machine):
    machine(cuda=True, mps=True)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # the index is kept
    assert resolve_device("mps") == torch.device("mps")
    assert resolve_device("CPU") == torch.device("cpu")
    given = torch.device("cuda", 0)
    assert resolve_device(given) is given


def test_missing_or_unknown_device_is_an_input_error(machine):
    machine(cuda=False, mps=False)
    with pytest.raises(InputError, match="'cuda' requested but CUDA is not available.*--device cpu or auto"):
        resolve_device("cuda")
    with pytest.raises(InputError, match="'mps' requested but Apple Metal is not available"):
        resolve_device("mps")
    with pytest.raises(InputError, match="unknown device 'tpu'; expected auto, cuda, mps or cpu"):
        resolve_device("tpu")
    assert resolve_device("cpu") == torch.device("cpu")  # the CPU is always there


@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_autocast_on_cuda_only(machine, bf16, expected):
    machine(cuda=True, bf16=bf16)
    assert autocast_dtype(torch.device("cuda")) == expected
    assert autocast_dtype(torch.device("cpu")) is None  # bf16 autocast measured slower on the CPU
    assert autocast_dtype(torch.device("mps")) is None


def test_this_machine():
    # Unpatched: on this machine `auto` is the device the engine will really use, and it works.
    device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else
                           "mps" if torch.backends.mps.is_available() else "cpu")
    assert (torch.ones(2, device=device) * 2).sum().item() == 4.0
