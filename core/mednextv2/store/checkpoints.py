"""Reading a PyTorch checkpoint without running code hidden in it.

`torch.load(weights_only=True)`, with numpy arrays, scalars and dtypes the only extra types allowed
(nnU-Net logs its Dice as numpy floats), after a look at the zip's directory that refuses more
tensors or a larger pickle than any MedNeXt checkpoint has."""
from __future__ import annotations

import zipfile
from pathlib import Path

from mednextv2.disk import format_size
from mednextv2.errors import InputError

# A MedNeXt-v2 width-2 checkpoint with deep supervision and its optimizer state holds ~2,000 tensors;
# a flood of 200k empty ones took torch.load minutes and GBs before anything could look at it.
MAX_CHECKPOINT_RECORDS = 20_000
MAX_CHECKPOINT_PICKLE_BYTES = 64 << 20


NNUNET_RESAVE = ("Re-save its 'network_weights' as a plain state dict or safetensors with a trusted nnU-Net "
                 "installation.")


def load_checkpoint(path: Path, advice: str = NNUNET_RESAVE):
    """torch.load with weights_only=True; numpy arrays, scalars and dtypes are the only extra types allowed.
    `advice` ends the message when the file asks for more."""
    import pickle

    import torch

    from mednextv2.store.safe_pickle import numpy_safe_globals

    allowed = numpy_safe_globals()
    _check_checkpoint_size(path)
    safe = getattr(torch.serialization, "safe_globals", None)
    try:
        if safe is not None:
            with safe(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # what the weights-only unpickler raises for anything beyond data
        lines = str(e).strip().splitlines()
        reason = next((line.strip().rstrip(".") for line in lines if "GLOBAL" in line or "Unsupported" in line),
                      lines[0] if lines else repr(e))
        raise InputError(f"{path} cannot be read with torch.load(weights_only=True): {reason}. Refusing to unpickle it, "
                         f"because that could run code hidden in the file. {advice}") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise InputError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else repr(e)}") from e


def _check_checkpoint_size(path: Path) -> None:
    """Refuse a checkpoint with more tensors or a larger pickle than any MedNeXt's, before unpickling it.

    torch.save writes a zip with one record per tensor storage plus `data.pkl`; counting the
    records reads only the zip's directory."""
    try:
        if not zipfile.is_zipfile(path):
            return  # the legacy (pre-1.6) format: torch.load's weights-only reader is the only check
        with zipfile.ZipFile(path) as zf:
            records = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InputError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from e
    if len(records) > MAX_CHECKPOINT_RECORDS:
        raise InputError(f"{path} holds {len(records)} records, more than the {MAX_CHECKPOINT_RECORDS} any MedNeXt "
                         "checkpoint needs: refusing to load it")
    pickled = sum(r.file_size for r in records if r.filename.endswith(".pkl"))
    if pickled > MAX_CHECKPOINT_PICKLE_BYTES:
        raise InputError(f"{path}: its pickled structure is {format_size(pickled)}, more than the "
                         f"{format_size(MAX_CHECKPOINT_PICKLE_BYTES)} any MedNeXt checkpoint needs: refusing to load it")
