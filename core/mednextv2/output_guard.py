"""The engine never deletes or overwrites a file it did not create (docs/promise.md).

Checks run before any work starts, so a refused command leaves everything as it was.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from mednextv2.errors import InputError

PathLike = Union[str, "os.PathLike[str]"]


def resolved(path: PathLike, what: str = "") -> Path:
    """`path` absolute, links followed; InputError for a symbolic link loop (Path.resolve raises
    RuntimeError for one on Python 3.9-3.12 and returns the looping path on 3.13)."""
    path = Path(path)
    problem = None
    try:
        os.stat(path)
    except OSError as e:
        problem = e if e.errno == errno.ELOOP else None
    try:
        if problem is None:
            return path.resolve()
    except RuntimeError as e:
        problem = e
    raise InputError(f"{what + ' ' if what else ''}{path} is a symbolic link loop (the link leads back to itself); "
                     "give the real file or folder") from problem


def same_path(a: PathLike, b: PathLike) -> bool:
    """True when `a` and `b` name the same file or folder: one resolved path, or one inode
    (a hard link or a bind mount resolves to a different string)."""
    a, b = Path(a), Path(b)
    if resolved(a) == resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # either one does not exist yet: only the resolved paths can tell
        return False


def input_files(inputs: Iterable[PathLike]) -> List[Path]:
    """The files a command reads: each input file, and every file directly in an input folder
    (a DICOM series is the files of its folder)."""
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += [p for p in sorted(path.iterdir()) if p.is_file()]
        else:
            files.append(path)
    return files


def _inode(path: Path) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def first_clash(outputs: Sequence[PathLike], inputs: Sequence[PathLike]) -> Optional[Tuple[Path, Path]]:
    """(output, input) for the first output that would be written over an input, else None.
    Same test as `same_path`, with each input looked at once (a batch folder has many)."""
    sources = input_files(inputs) + [Path(i) for i in inputs if Path(i).is_dir()]
    by_path = {resolved(p): p for p in sources}
    by_inode = {_inode(p): p for p in sources}
    by_inode.pop(None, None)
    for out in map(Path, outputs):
        hit = by_path.get(resolved(out, "output")) or by_inode.get(_inode(out))
        if hit is not None:
            return out, hit
    return None


def refuse_writing_over_inputs(outputs: Sequence[PathLike], inputs: Sequence[PathLike]) -> None:
    """InputError when any output would replace an input (its file or its DICOM folder)."""
    clash = first_clash(outputs, inputs)
    if clash is not None:
        out, path = clash
        raise InputError(f"output {out} is the input {path}: writing it would destroy the input; "
                         "choose another output name or folder")


def refuse_same_outputs(outputs: Sequence[Tuple[str, PathLike]]) -> None:
    """InputError when two outputs (named by their option, e.g. "-o", "--uncertainty") are one file."""
    seen = {}
    for what, path in outputs:
        key = resolved(path, what)
        if key in seen:
            raise InputError(f"{seen[key][0]} {seen[key][1]} and {what} {path} are the same file; "
                             "give each output its own name")
        seen[key] = (what, path)
