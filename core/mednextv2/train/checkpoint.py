"""Atomic training checkpoints that can only hold tensors and plain data.

Written with torch.save to a temporary file in the same folder, flushed to disk, then renamed
over the previous one; a failure at any point (a full disk) leaves the previous checkpoint as it
was. Read back with `torch.load(weights_only=True)`: nothing is ever unpickled.
"""
from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any, Dict

import torch

from mednextv2.atomic import atomic_path
from mednextv2.errors import InputError, ResourceError

log = logging.getLogger(__name__)

LATEST = "checkpoint_latest.pt"
BEST = "checkpoint_best.pt"


def save_atomic(state: Dict[str, Any], path: Path) -> None:
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "xb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, ResourceError) as e:
        cause = e.__cause__ if isinstance(e, ResourceError) else e
        hint = " (disk full)" if getattr(cause, "errno", None) in (errno.ENOSPC, errno.EDQUOT) else ""
        raise ResourceError(f"cannot write checkpoint {path}{hint}: {getattr(cause, 'strerror', None) or cause}; "
                            "the previous checkpoint is unchanged") from e


def load(path: Path) -> Dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise InputError(f"no checkpoint to resume from at {path}; start without --resume") from e
    except Exception as e:  # corrupt or foreign file: unpickling refused or truncated data
        raise InputError(f"checkpoint {path} cannot be read safely ({e}); start without --resume") from e
