"""Atomic training checkpoints that can only hold tensors and plain data.

Written with torch.save to a temporary file in the same folder, flushed to disk, then renamed
over the previous one; a failure at any point (a full disk) leaves the previous checkpoint as it
was. Read back with `torch.load(weights_only=True)`: nothing is ever unpickled.
"""
from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Dict

import torch

from mednextv2.errors import InputError, ResourceError

log = logging.getLogger(__name__)

LATEST = "checkpoint_latest.pt"
BEST = "checkpoint_best.pt"


def save_atomic(state: Dict[str, Any], path: Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        hint = " (disk full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise ResourceError(f"cannot write checkpoint {path}{hint}: {e.strerror or e}; "
                            "the previous checkpoint is unchanged") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> Dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise InputError(f"no checkpoint to resume from at {path}; start without --resume") from e
    except Exception as e:  # corrupt or foreign file: unpickling refused or truncated data
        raise InputError(f"checkpoint {path} cannot be read safely ({e}); start without --resume") from e
