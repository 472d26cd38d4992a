"""Read the pickles nnU-Net writes without running code hidden in them.

nnU-Net v1 stores its plans (`plans.pkl`, `*.model.pkl`) as pickles of dicts, lists, numpy
arrays and numpy scalars, and its checkpoints with `torch.save`, whose pickle adds numpy
scalars to tensors. A pickle can name any importable callable and call it while loading, so
only the names needed to rebuild those data types are allowed here; everything else is refused
before it is called, with the name in the message.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, List

from mednextv2.errors import InputError

MAX_PICKLE_BYTES = 64 << 20  # nnU-Net plans are kilobytes; a larger one is not a plan

_BUILTINS = {"set", "frozenset", "list", "dict", "tuple", "bytearray", "bytes", "complex", "slice", "range"}
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NAMES = {"_reconstruct", "scalar"}


def numpy_safe_globals() -> List[Any]:
    """The numpy objects a data-only pickle needs: array/dtype/scalar reconstruction, nothing else.

    Also what `torch.load(weights_only=True)` is allowed on top of tensors for nnU-Net checkpoints."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    allowed: List[Any] = [np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar,
                          (core.multiarray.scalar, "numpy.core.multiarray.scalar"),
                          (core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:  # numpy 2 pickles a dtype's class by name
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and n[0].isupper()]
    return allowed


class _DataOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, where: Path) -> None:
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        import numpy as np

        if module == "builtins" and name in _BUILTINS:
            return super().find_class(module, name)
        if (module, name) in (("collections", "OrderedDict"), ("_codecs", "encode")):  # encode: bytes in protocol 2
            return super().find_class(module, name)
        if module in _NUMPY_MODULES and name in _NUMPY_NAMES:
            core = getattr(np, "_core", None) or np.core
            return getattr(core.multiarray, name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "numpy.dtypes" and name.endswith("DType") and hasattr(getattr(np, "dtypes", None), name):
            return getattr(np.dtypes, name)
        raise InputError(f"{self.where} asks to load {module}.{name} while unpickling; only plain data (containers, "
                         "OrderedDict, numpy arrays and scalars) is allowed, because anything else could run code "
                         "hidden in the file. Refusing it.")

    def persistent_load(self, pid: Any) -> Any:
        raise InputError(f"{self.where} holds a persistent reference; it is not a plain-data pickle")


def load_data_pickle(path: Path) -> Any:
    """Unpickle `path`, allowing only plain data; InputError naming the file otherwise."""
    try:
        size = path.stat().st_size
        if size > MAX_PICKLE_BYTES:
            raise InputError(f"{path} is {size} bytes, more than any nnU-Net plan; refusing to read it")
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise InputError(f"{path} is missing") from e
    except OSError as e:
        raise InputError(f"cannot read {path}: {e}") from e
    try:
        return _DataOnlyUnpickler(io.BytesIO(data), path).load()
    except InputError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not a readable pickle (truncated or corrupt?): {e}") from e
