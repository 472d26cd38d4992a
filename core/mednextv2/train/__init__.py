"""Fine-tuning and training: datasets, planning, cache, augmentation, loop, DDP, demo.

Entry point: `run_training(TrainOptions(...))`; the CLI is `mednextv2 train`.
Imports are lazy: the Slicer Train panel reads datasets through `mednextv2.train.datasets`
inside Slicer's own process, where torch may be missing or must not be loaded yet.
"""
from importlib import import_module

_EXPORTS = {"TrainOptions": "mednextv2.train.options", "TrainResult": "mednextv2.train.run",
            "run_training": "mednextv2.train.run"}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mednextv2.train' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
