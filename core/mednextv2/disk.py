"""Free disk space, checked before large writes, and byte counts as people read them."""
from __future__ import annotations

import shutil
from pathlib import Path

from mednextv2.errors import ResourceError


def free_bytes(folder: Path) -> int:
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def require_free_space(folder: Path, needed: int, what: str, advice: str = "Free some space.") -> None:
    free = free_bytes(folder)
    if free < needed:
        raise ResourceError(f"not enough disk space for {what}: needs {format_size(needed)}, "
                            f"{format_size(free)} free in {folder}. {advice}")


def format_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
